import {Flags} from '@oclif/core'

import type {CopyHooks, CopyResult} from '../oci/copy.js'
import type {RegistryOptions} from '../oci/remote/client.js'
import {CredentialStore} from '../oci/remote/credentials.js'
import {humanBytes, shortDigest} from '../ui/format.js'
import {BlobProgress} from '../ui/progress.js'

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

/** Copy hooks drawing a progress bar per blob (lines per 10% in CI, nothing under --json), and a summary line. */
export function transferProgress(label: string, quiet: boolean, log: (line: string) => void): {hooks: CopyHooks; finish(r: CopyResult, seconds: number): void} {
  const bars = new BlobProgress(quiet)
  const name = (d: {digest: string; size: number; annotations?: Record<string, string>}): string =>
    `${shortDigest(d.digest)} ${(d.annotations?.['org.opencontainers.image.title'] ?? '').padEnd(12)}`
  return {
    hooks: {
      onBlobStart(desc) {
        bars.start(desc.digest, name(desc), desc.size)
      },
      onBlobProgress(desc, n) {
        bars.update(desc.digest, n)
      },
      onBlobDone(desc, outcome) {
        if (outcome === 'copied') bars.finish(desc.digest, `${humanBytes(desc.size)} done`)
        else if (!quiet) log(`${name(desc)} ${humanBytes(desc.size).padStart(9)}  ${outcome === 'skipped' ? 'exists' : 'mounted'}`)
      },
    },
    finish(r, seconds) {
      if (quiet) return
      const mbs = r.blobs.bytes / 1024 / 1024 / Math.max(seconds, 0.001)
      log(
        `${label}: ${r.blobs.copied} blobs copied (${humanBytes(r.blobs.bytes)}, ${mbs.toFixed(1)} MiB/s), ${r.blobs.skipped} present, ${r.blobs.mounted} mounted` +
          (r.referrers.length > 0 ? `, ${r.referrers.length} referrers` : ''),
      )
    },
  }
}
