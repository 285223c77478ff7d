import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {type CopyHooks, type CopyResult, copy, referrersOf} from '../oci/copy.js'
import {type RegistryOptions, openRemote} from '../oci/remote/client.js'
import {CredentialStore} from '../oci/remote/credentials.js'
import {humanBytes, shortDigest} from '../ui/format.js'
import {ProgressLine} from '../ui/progress.js'

/** Flags shared by the commands that talk to a registry. */
export const registryFlags = {
  'plain-http': Flags.boolean({description: 'Use plain HTTP, not TLS (always on for localhost and 127.0.0.1).', default: false}),
  concurrency: Flags.integer({description: 'Blobs transferred at once.', default: 4, min: 1, max: 32}),
  'registry-config': Flags.string({description: 'Credentials file (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json).', env: 'OVM_REGISTRY_CONFIG'}),
}

export function registryOptions(flags: {'plain-http': boolean; 'registry-config'?: string}): RegistryOptions {
  const opts: RegistryOptions = {plainHttp: flags['plain-http']}
  if (flags['registry-config']) {
    const store = new CredentialStore(flags['registry-config'])
    opts.credentials = (h) => store.get(h)
  }
  return opts
}

export interface TransferResult extends CopyResult {
  source: string
  seconds: number
}

/** Copy hooks drawing one progress line for the whole transfer (bytes of all blobs in flight). */
export function transferProgress(label: string, quiet: boolean, log: (line: string) => void): {hooks: CopyHooks; finish(r: CopyResult, seconds: number): void} {
  const line = new ProgressLine(quiet)
  const done = new Map<string, number>()
  let total = 0
  let started = false
  const sum = (): number => [...done.values()].reduce((a, b) => a + b, 0)
  return {
    hooks: {
      onBlobStart(desc) {
        total += desc.size
        done.set(desc.digest, 0)
        if (!started) {
          started = true
          line.start(label, total)
        }
      },
      onBlobProgress(desc, n) {
        done.set(desc.digest, n)
        line.update(label, sum(), total)
      },
      onBlobDone(desc, outcome) {
        if (outcome === 'copied') done.set(desc.digest, desc.size)
        if (!quiet && outcome !== 'copied') log(`${shortDigest(desc.digest)}  ${humanBytes(desc.size).padStart(9)}  ${outcome === 'skipped' ? 'exists' : 'mounted'}`)
      },
    },
    finish(r, seconds) {
      const mbs = r.blobs.bytes / 1024 / 1024 / Math.max(seconds, 0.001)
      line.done(
        `${label}: ${r.blobs.copied} blobs copied (${humanBytes(r.blobs.bytes)}, ${mbs.toFixed(1)} MiB/s), ${r.blobs.skipped} present, ${r.blobs.mounted} mounted` +
          (r.referrers.length > 0 ? `, ${r.referrers.length} referrers` : ''),
      )
    },
  }
}

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
