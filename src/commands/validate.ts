import {readFile} from 'node:fs/promises'
import {dirname} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {assertManifest, parseJsonText} from '../artifact/validate.js'
import {checkContext} from '../build/context.js'
import {BaseCommand} from '../cli/base-command.js'
import {fileError} from '../errors/index.js'
import {type Problem, ovmfileError, parseOvmfile} from '../ovmfile/index.js'
import {parseBuildArgs} from './build.js'

export interface ValidateResult {
  file: string
  valid: true
  kind: 'ovms-manifest' | 'ovmfile'
  name?: string
  version?: string
  steps?: number
  warnings?: Problem[]
}

export default class Validate extends BaseCommand {
  static summary = 'Check an OVMS manifest or an Ovmfile, reporting every problem at once.'

  static description =
    'A JSON file is checked against schemas/manifest.v1.json (each problem with its JSON pointer); anything else is read as an Ovmfile ' +
    '(each problem with line:col, and COPY sources checked against the build context).'

  static examples = ['<%= config.bin %> validate manifest.json', '<%= config.bin %> validate Ovmfile', '<%= config.bin %> validate Ovmfile --context . --json']

  static args = {
    file: Args.string({description: 'OVMS manifest (JSON) or Ovmfile.', required: true}),
  }

  static flags = {
    context: Flags.string({description: 'Build context for an Ovmfile (default: its folder).'}),
    'build-arg': Flags.string({description: 'KEY=VALUE for an ARG; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
  }

  async run(): Promise<ValidateResult> {
    const {args, flags} = await this.parse(Validate)
    let text: string
    try {
      text = await readFile(args.file, 'utf8')
    } catch (err) {
      throw fileError(err, args.file)
    }
    if (text.trimStart().startsWith('{')) {
      const manifest = assertManifest(parseJsonText(text, args.file), args.file)
      if (!this.jsonEnabled()) this.log(`${args.file}: valid OVMS manifest (${manifest.name} ${manifest.version})`)
      return {file: args.file, valid: true, kind: 'ovms-manifest', name: manifest.name, version: manifest.version}
    }
    const parsed = parseOvmfile(text, args.file, {buildArgs: parseBuildArgs(flags['build-arg'])})
    const ctx = await checkContext(parsed.ovmfile, flags.context ?? dirname(args.file))
    const errors = [...parsed.errors, ...ctx.problems].sort((a, b) => a.line - b.line || a.col - b.col)
    for (const w of parsed.warnings) this.note(`${args.file}:${w.line}:${w.col}: warning: ${w.message} [${w.code}]`)
    if (errors.length > 0) throw ovmfileError(args.file, errors)
    if (!this.jsonEnabled()) this.log(`${args.file}: valid Ovmfile (${parsed.ovmfile.steps.length} steps)`)
    return {file: args.file, valid: true, kind: 'ovmfile', steps: parsed.ovmfile.steps.length, warnings: parsed.warnings}
  }
}
