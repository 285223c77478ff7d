import {readFile} from 'node:fs/promises'
import {basename} from 'node:path'

import {Args} from '@oclif/core'

import {assertManifest, parseJsonText} from '../artifact/validate.js'
import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {BaseCommand} from '../cli/base-command.js'

export default class Validate extends BaseCommand {
  static summary = 'Check an OVMS manifest file against the schema, reporting every problem at once.'

  static examples = ['<%= config.bin %> validate manifest.json', '<%= config.bin %> validate manifest.json --json']

  static args = {
    file: Args.string({description: 'OVMS manifest (JSON).', required: true}),
  }

  async run(): Promise<{file: string; valid: true; kind: string; name: string; version: string}> {
    const {args} = await this.parse(Validate)
    let text: string
    try {
      text = await readFile(args.file, 'utf8')
    } catch (err) {
      throw fileError(err, args.file)
    }
    if (/^Ovmfile/i.test(basename(args.file)) && !text.trimStart().startsWith('{')) {
      throw new AbortError({
        code: 'OVMFILE_UNSUPPORTED',
        message: `${args.file}: Ovmfile validation is not available in this version of ovm`,
        hint: 'ovm validate checks OVMS manifest JSON files today; Ovmfile support comes with `ovm build`.',
        exitCode: ExitCode.invalid,
        ref: args.file,
      })
    }
    const manifest = assertManifest(parseJsonText(text, args.file), args.file)
    if (!this.jsonEnabled()) this.log(`${args.file}: valid OVMS manifest (${manifest.name} ${manifest.version})`)
    return {file: args.file, valid: true, kind: 'ovms-manifest', name: manifest.name, version: manifest.version}
  }
}
