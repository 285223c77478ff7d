import {Args} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'

export default class Tag extends BaseCommand {
  static summary = 'Give an artifact in the local store another reference.'

  static examples = ['<%= config.bin %> tag example/busybox:1.0 example/busybox:latest']

  static args = {
    src: Args.string({description: 'Existing reference or digest.', required: true}),
    dst: Args.string({description: 'New reference (name:tag).', required: true}),
  }

  async run(): Promise<{source: string; reference: string; digest: string}> {
    const {args, flags} = await this.parse(Tag)
    const store = this.openStore(flags.store)
    const desc = await store.resolve(args.src)
    await store.tag(desc, args.dst)
    if (!this.jsonEnabled()) this.log(`${args.dst} -> ${desc.digest}`)
    return {source: args.src, reference: args.dst, digest: desc.digest}
  }
}
