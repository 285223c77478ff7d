import {createInterface} from 'node:readline/promises'

import {Args, Flags} from '@oclif/core'

import {type TemplateInfo, initTemplate, listTemplates} from '../build/templates.js'
import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {table} from '../ui/format.js'

export default class Init extends BaseCommand {
  static summary = 'Start a project from a template: an Ovmfile and what it needs.'

  static description = 'Without --template, asks which one on a terminal; in scripts, name it. Never overwrites files unless --force.'

  static examples = ['<%= config.bin %> init --list', '<%= config.bin %> init --template service my-service', '<%= config.bin %> init']

  static args = {
    dir: Args.string({description: 'Folder to write into (default: the current one).', default: '.'}),
  }

  static flags = {
    template: Flags.string({char: 't', description: 'Template name (see --list).'}),
    list: Flags.boolean({description: 'List the templates.'}),
    force: Flags.boolean({description: 'Overwrite files that exist.'}),
  }

  async run(): Promise<{templates: TemplateInfo[]} | {template: string; dir: string; files: string[]}> {
    const {args, flags} = await this.parse(Init)
    const templates = await listTemplates()
    if (flags.list) {
      if (!this.jsonEnabled()) this.log(table(['TEMPLATE', 'DESCRIPTION'], templates.map((t) => [t.name, t.description])))
      return {templates}
    }
    const name = flags.template ?? (await this.pick(templates))
    const r = await initTemplate(name, args.dir, {force: flags.force})
    if (!this.jsonEnabled()) {
      this.log(`wrote ${r.files.join(', ')} to ${r.dir}`)
      // A template that makes its own base disk (debian: debootstrap) needs that first.
      if (r.files.includes('make-rootfs.sh')) this.log(`first: cd ${r.dir} && sudo ./make-rootfs.sh rootfs.qcow2`)
      this.log(`next: ovm build --build-arg KERNEL_ROOT=/path/to/linux-image -t my/${name}:1 ${r.dir}`)
    }
    return r
  }

  /** A numbered picker on a terminal; scripts must name the template. */
  private async pick(templates: TemplateInfo[]): Promise<string> {
    if (!process.stdin.isTTY || this.jsonEnabled()) {
      throw new AbortError({
        code: 'TEMPLATE_REQUIRED',
        message: 'no --template given and no terminal to ask on',
        hint: `Pass --template NAME; one of: ${templates.map((t) => t.name).join(', ')}.`,
        exitCode: ExitCode.usage,
      })
    }
    templates.forEach((t, i) => process.stderr.write(`  ${i + 1}) ${t.name.padEnd(10)} ${t.description}\n`))
    const rl = createInterface({input: process.stdin, output: process.stderr})
    try {
      for (;;) {
        const answer = (await rl.question(`template [1-${templates.length}]: `)).trim()
        const byNumber = templates[Number(answer) - 1]
        const chosen = byNumber ?? templates.find((t) => t.name === answer)
        if (chosen) return chosen.name
        process.stderr.write(`  type a number from 1 to ${templates.length} or a name\n`)
      }
    } finally {
      rl.close()
    }
  }
}
