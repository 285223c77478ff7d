import {createReadStream} from 'node:fs'
import {Readable, Transform, type TransformCallback} from 'node:stream'

import {AbortError, ExitCode} from '../errors/index.js'
import {type Descriptor, type ImageIndex, type ImageManifest, isIndexMediaType, isManifestMediaType} from './descriptor.js'
import {isDigest} from './digest.js'
import {LayoutStore, MAX_MANIFEST_BYTES} from './layout.js'
import {RemoteRepository, collect} from './remote/client.js'
import {listReferrers, localReferrers} from './remote/referrers.js'
import type {ReadOnlyStorage, Storage, TagResolver} from './storage.js'

/**
 * One copy of an artifact graph between any two stores (local layout or
 * remote repository), after oras-go's copy.go: resolve the source
 * reference; walk manifests and indexes; copy blobs with bounded
 * concurrency, skipping what the destination has and mounting across
 * repositories of the same registry; push each manifest after its
 * children; tag last.
 */

export type BlobOutcome = 'copied' | 'skipped' | 'mounted'

export interface CopyHooks {
  onBlobStart?(desc: Descriptor): void
  onBlobProgress?(desc: Descriptor, done: number, total: number): void
  onBlobDone?(desc: Descriptor, outcome: BlobOutcome): void
  onManifest?(desc: Descriptor, outcome: 'copied' | 'skipped'): void
}

export interface CopyOptions {
  /** Blobs in flight at once (default 4). */
  concurrency?: number
  /** Try cross-repository mounts (default true). */
  mount?: boolean
  /** Also copy the root's referrers (signatures, SBOMs), recursively. */
  referrers?: (source: ReadOnlyStorage, digest: string) => Promise<Descriptor[]>
}

export interface CopyResult {
  descriptor: Descriptor
  reference: string
  blobs: {copied: number; skipped: number; mounted: number; bytes: number}
  manifests: {copied: number; skipped: number}
  referrers: Descriptor[]
}

type Source = ReadOnlyStorage & TagResolver
type Destination = Storage & TagResolver

/** A small counting semaphore. */
export function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0
  const queue: (() => void)[] = []
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((r) => queue.push(r))
    active++
    try {
      return await fn()
    } finally {
      active--
      queue.shift()?.()
    }
  }
}

function progressStream(desc: Descriptor, hooks: CopyHooks): Transform {
  let done = 0
  let last = 0
  return new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      done += chunk.length
      const now = Date.now()
      if (now - last >= 100 || done === desc.size) {
        last = now
        hooks.onBlobProgress?.(desc, done, desc.size)
      }
      cb(null, chunk)
    },
  })
}

export function isManifestLike(desc: Descriptor): boolean {
  return isManifestMediaType(desc.mediaType) || isIndexMediaType(desc.mediaType)
}

async function readManifest(src: ReadOnlyStorage, desc: Descriptor): Promise<Buffer> {
  if (src instanceof LayoutStore) return src.fetchBytes(desc)
  if (src instanceof RemoteRepository) return src.fetchManifestBytes(desc)
  return collect(await src.fetch(desc), desc.size, MAX_MANIFEST_BYTES)
}

function children(bytes: Buffer, desc: Descriptor): Descriptor[] {
  let doc: ImageManifest | ImageIndex
  try {
    doc = JSON.parse(bytes.toString('utf8')) as ImageManifest | ImageIndex
  } catch (err) {
    throw new AbortError({
      code: 'MANIFEST_INVALID',
      message: `manifest ${desc.digest} is not valid JSON: ${(err as Error).message}`,
      hint: 'The source holds a damaged manifest; push it again from a good copy.',
      exitCode: ExitCode.invalid,
      ref: desc.digest,
    })
  }
  if ('manifests' in doc && Array.isArray(doc.manifests)) return doc.manifests
  const out: Descriptor[] = []
  if ('config' in doc && doc.config) out.push(doc.config)
  if ('layers' in doc && Array.isArray(doc.layers)) out.push(...doc.layers)
  return out
}

/** The source bytes of a blob, as cheaply as the pair of stores allows (the receiving side verifies). */
async function openBlob(src: ReadOnlyStorage, dst: Storage, desc: Descriptor): Promise<Readable> {
  // The registry checks the digest of what it receives; the local store hashes what it ingests.
  if (src instanceof LayoutStore && dst instanceof RemoteRepository) return createReadStream(src.blobPath(desc.digest))
  if (src instanceof RemoteRepository && dst instanceof LayoutStore) return Readable.from(src.blobChunks(desc))
  return src.fetch(desc)
}

export async function copy(src: Source, srcRef: string, dst: Destination, dstRef: string, hooks: CopyHooks = {}, opts: CopyOptions = {}): Promise<CopyResult> {
  const root = await src.resolve(srcRef)
  const run = limiter(Math.max(1, opts.concurrency ?? 4))
  const result: CopyResult = {
    descriptor: root,
    reference: dstRef,
    blobs: {copied: 0, skipped: 0, mounted: 0, bytes: 0},
    manifests: {copied: 0, skipped: 0},
    referrers: [],
  }
  const started = new Map<string, Promise<void>>()
  const canMount =
    opts.mount !== false && src instanceof RemoteRepository && dst instanceof RemoteRepository && src.registry.base.origin === dst.registry.base.origin && src.name !== dst.name

  // The first failure: blobs still queued then are not started, and copy() settles every blob it started
  // before it rejects, so nothing writes to the destination after it returned.
  let failure: {error: unknown} | undefined
  const copyBlob = (desc: Descriptor): Promise<void> =>
    run(async () => {
      if (failure) throw failure.error
      try {
        await copyOneBlob(desc)
      } catch (err) {
        failure ??= {error: err}
        throw err
      }
    })

  const copyOneBlob = async (desc: Descriptor): Promise<void> => {
    if (await dst.exists(desc)) {
      result.blobs.skipped++
      hooks.onBlobDone?.(desc, 'skipped')
      return
    }
    if (canMount && (await (dst as RemoteRepository).mount(desc, (src as RemoteRepository).name))) {
      result.blobs.mounted++
      hooks.onBlobDone?.(desc, 'mounted')
      return
    }
    hooks.onBlobStart?.(desc)
    const stream = (await openBlob(src, dst, desc)).pipe(progressStream(desc, hooks))
    if (dst instanceof RemoteRepository) {
      const reopen = src instanceof LayoutStore ? () => createReadStream(src.blobPath(desc.digest)) : undefined
      await dst.upload(desc, stream, reopen)
    } else await dst.push(desc, stream)
    result.blobs.copied++
    result.blobs.bytes += desc.size
    hooks.onBlobDone?.(desc, 'copied')
  }

  const copyNode = (desc: Descriptor): Promise<void> => {
    let p = started.get(desc.digest)
    if (!p) {
      p = isManifestLike(desc) ? copyManifest(desc) : copyBlob(desc)
      started.set(desc.digest, p)
    }
    return p
  }

  const copyManifest = async (desc: Descriptor): Promise<void> => {
    if (await dst.exists(desc)) {
      result.manifests.skipped++
      hooks.onManifest?.(desc, 'skipped')
      return
    }
    const bytes = await readManifest(src, desc)
    const settled = await Promise.allSettled(children(bytes, desc).map(copyNode))
    const bad = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (bad) throw failure ? failure.error : bad.reason
    await dst.push(desc, bytes)
    result.manifests.copied++
    hooks.onManifest?.(desc, 'copied')
  }

  await copyNode(root)

  // Tag, or keep an untagged manifest in a local store.
  const dstIsDigest = isDigest(dstRef) || /@sha256:[a-f0-9]{64}$/.test(dstRef)
  if (!dstIsDigest) await dst.tag(root, dstRef)
  else if (dst instanceof LayoutStore) await dst.addUntagged(root)

  if (opts.referrers) {
    const list = opts.referrers
    const walk = async (digest: string, depth: number): Promise<void> => {
      if (depth > 4) return
      for (const r of await list(src, digest)) {
        if (result.referrers.some((x) => x.digest === r.digest)) continue
        await copyNode(r)
        if (dst instanceof LayoutStore) await dst.addUntagged(r)
        result.referrers.push(r)
        await walk(r.digest, depth + 1)
      }
    }
    await walk(root.digest, 0)
  }
  if (dst instanceof LayoutStore) await dst.releaseLease()
  return result
}

/** Referrers of a digest in whichever store `source` is (for CopyOptions.referrers). */
export async function referrersOf(source: ReadOnlyStorage, digest: string): Promise<Descriptor[]> {
  if (source instanceof LayoutStore) return localReferrers(source, digest)
  if (source instanceof RemoteRepository) return listReferrers(source, digest)
  return []
}
