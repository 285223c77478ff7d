import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {copy, referrersOf} from '../oci/copy.js'
import {openRemote} from '../oci/remote/client.js'
import {describeVerified, enforcePolicy, loadPolicy, policyPath} from '../sign/policy.js'
import {remoteSource} from '../sign/sign.js'
import {type TransferResult, registryFlags, registryOptions, transferProgress} from '../cli/registry.js'

export default class Pull extends BaseCommand {
  static summary = 'Pull an artifact from a registry into the local store.'

  static description =
    'Every blob is streamed into the store, verified by digest and size before it is renamed into place, and resumed with range requests after a dropped connection. ' +
    'Blobs the store has are skipped, so an interrupted pull continues where it stopped. Referrers (signatures) come along unless --no-referrers. ' +
    'A trust policy ($OVM_HOME/policy.json) is enforced first: a refused artifact (exit 10) leaves the store untouched.'

  static examples = ['<%= config.bin %> pull localhost:5000/example/busybox:1.0', '<%= config.bin %> pull registry.example.com/vm/busybox@sha256:… --json']

  static args = {
    ref: Args.string({description: 'Source: registry/repository:tag or registry/repository@sha256:….', required: true}),
  }

  static flags = {
    ...registryFlags,
    referrers: Flags.boolean({description: 'Pull the artifact\'s referrers too.', default: true, allowNo: true}),
  }

  async run(): Promise<TransferResult> {
    const {args, flags} = await this.parse(Pull)
    const store = this.openStore(flags.store)
    const src = openRemote(args.ref, registryOptions(flags))
    // The trust policy decides before a single blob enters the store.
    const policy = await enforcePolicy(remoteSource(src.repository, {checkBlobs: false}), args.ref, await loadPolicy(policyPath(store.root)))
    if (policy.verified) this.note(`policy ${policy.rule}: ${describeVerified(policy.verified)}`)
    await store.init()
    const t0 = performance.now()
    const ui = transferProgress(`pull ${args.ref}`, this.jsonEnabled(), (l) => this.note(l))
    const result = await copy(src.repository, src.part, store, args.ref, ui.hooks, {
      concurrency: flags.concurrency,
      referrers: flags.referrers ? referrersOf : undefined,
    })
    const seconds = (performance.now() - t0) / 1000
    ui.finish(result, seconds)
    if (!this.jsonEnabled()) this.log(`${args.ref}@${result.descriptor.digest}`)
    return {...result, reference: args.ref, source: args.ref, seconds}
  }
}
