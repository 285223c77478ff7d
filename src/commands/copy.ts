import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {copy, referrersOf} from '../oci/copy.js'
import {openRemote} from '../oci/remote/client.js'
import {type TransferResult, registryFlags, registryOptions, transferProgress} from '../cli/registry.js'

export default class Copy extends BaseCommand {
  static summary = 'Copy an artifact from one registry repository to another.'

  static description =
    'Blobs stream from source to destination without touching the local store. Within one registry, blobs are mounted across repositories instead of copied. ' +
    'Referrers (signatures) come along unless --no-referrers.'

  static examples = ['<%= config.bin %> copy localhost:5000/vm/busybox:1.0 registry.example.com/vm/busybox:1.0']

  static args = {
    src: Args.string({description: 'Source reference (registry/repository:tag or @sha256:…).', required: true}),
    dst: Args.string({description: 'Destination reference (registry/repository:tag).', required: true}),
  }

  static flags = {
    ...registryFlags,
    referrers: Flags.boolean({description: 'Copy the artifact\'s referrers too.', default: true, allowNo: true}),
    mount: Flags.boolean({description: 'Mount blobs across repositories of the same registry.', default: true, allowNo: true}),
  }

  async run(): Promise<TransferResult> {
    const {args, flags} = await this.parse(Copy)
    const opts = registryOptions(flags)
    const src = openRemote(args.src, opts)
    const dst = openRemote(args.dst, opts)
    const t0 = performance.now()
    const ui = transferProgress(`copy ${args.dst}`, this.jsonEnabled(), (l) => this.note(l))
    const result = await copy(src.repository, src.part, dst.repository, dst.part, ui.hooks, {
      concurrency: flags.concurrency,
      mount: flags.mount,
      referrers: flags.referrers ? referrersOf : undefined,
    })
    const seconds = (performance.now() - t0) / 1000
    ui.finish(result, seconds)
    if (!this.jsonEnabled()) this.log(`${args.dst}@${result.descriptor.digest}`)
    return {...result, reference: args.dst, source: args.src, seconds}
  }
}
