import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {type TransferResult, registryFlags, registryOptions, transferProgress} from '../cli/registry.js'
import {copy, referrersOf} from '../oci/copy.js'
import {openRemote} from '../oci/remote/client.js'

export default class Push extends BaseCommand {
  static summary = 'Push an artifact from the local store to a registry.'

  static description =
    'Blobs the registry has are skipped; the others are uploaded (several at once), large ones in resumable chunks. ' +
    'The manifest is pushed after its blobs, then the tag. Referrers (signatures) stored locally go along unless --no-referrers.'

  static examples = [
    '<%= config.bin %> push localhost:5000/example/busybox:1.0',
    '<%= config.bin %> push registry.example.com/vm/busybox:1.0 --from example/busybox:1.0',
  ]

  static args = {
    ref: Args.string({description: 'Destination: registry/repository:tag.', required: true}),
  }

  static flags = {
    ...registryFlags,
    from: Flags.string({description: 'Local reference to push (default: the destination reference itself).'}),
    referrers: Flags.boolean({description: 'Push the artifact\'s referrers too.', default: true, allowNo: true}),
  }

  async run(): Promise<TransferResult> {
    const {args, flags} = await this.parse(Push)
    const store = this.openStore(flags.store)
    const source = flags.from ?? args.ref
    const dst = openRemote(args.ref, registryOptions(flags))
    const t0 = performance.now()
    const ui = transferProgress(`push ${args.ref}`, this.jsonEnabled(), (l) => this.note(l))
    const result = await copy(store, source, dst.repository, dst.part, ui.hooks, {
      concurrency: flags.concurrency,
      referrers: flags.referrers ? referrersOf : undefined,
    })
    const seconds = (performance.now() - t0) / 1000
    ui.finish(result, seconds)
    if (!this.jsonEnabled()) this.log(`${args.ref}@${result.descriptor.digest}`)
    return {...result, reference: args.ref, source, seconds}
  }
}
