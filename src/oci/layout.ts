import {createHash, randomBytes} from 'node:crypto'
import {createReadStream, createWriteStream} from 'node:fs'
import {
  appendFile,
  mkdir,
  open,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  unlink,
} from 'node:fs/promises'
import {homedir} from 'node:os'
import {join} from 'node:path'
import {Readable} from 'node:stream'
import {pipeline} from 'node:stream/promises'

import {AbortError, BugError, ExitCode, isErrno} from '../errors/index.js'
import {
  Annotation,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
  MediaType,
  isIndexMediaType,
  isManifestMediaType,
  jsonBytes,
} from './descriptor.js'
import {HashingStream, digestHex, isDigest, mismatch, sha256} from './digest.js'
import {pidAlive, withFileLock} from './lock.js'
import {parseReference, refName} from './reference.js'
import type {Content, TaggedDescriptor, Target} from './storage.js'

/** Largest manifest or index ovm reads into memory (the distribution spec's floor). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

/** Folders under cache/ whose entries are named by a blob digest (see disk/unpack, contract/ramsnap, build/kernel). */
const CACHE_KINDS = ['disks', 'ramsnap', 'kernels']

/** `$OVM_HOME`, else `$XDG_DATA_HOME/ovm`, else `~/.local/share/ovm`. */
export function defaultStoreRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.OVM_HOME) return env.OVM_HOME
  if (env.XDG_DATA_HOME) return join(env.XDG_DATA_HOME, 'ovm')
  return join(homedir(), '.local', 'share', 'ovm')
}

export interface VerifyReport {
  checked: number
  bytes: number
  bad: {digest: string; reason: string; quarantinedTo?: string}[]
  /** Blobs that a tagged artifact needs (manifest, config, layers) but the store lacks. */
  missing: {digest: string; reference?: string}[]
  staleIngest: number
}

export interface PruneReport {
  removed: {digest: string; size: number}[]
  bytes: number
  ingestRemoved: number
  /** Unpacked cache entries (cache/disks, cache/ramsnap, cache/kernels) whose blob is gone. */
  cacheRemoved: number
  kept: number
}

/**
 * The local store: an OCI image layout that skopeo and umoci read.
 *
 *   oci-layout, index.json, blobs/sha256/<hex>     (the layout)
 *   ingest/<pid>-<rand>                            (in-flight writes)
 *   leases/<pid>                                   (blobs written, not yet tagged)
 *   quarantine/sha256/<hex>                        (blobs that failed verification)
 *   index.json.lock                                (serialises index updates)
 *
 * A blob is written to ingest/, hashed while written, and renamed into
 * blobs/ only when digest and size match: a crash never leaves a bad blob.
 */
export class LayoutStore implements Target {
  readonly root: string
  private initialised = false
  private leaseFile?: string

  constructor(root: string = defaultStoreRoot()) {
    this.root = root
  }

  get indexPath(): string {
    return join(this.root, 'index.json')
  }

  blobPath(digest: string): string {
    return join(this.root, 'blobs', 'sha256', digestHex(digest))
  }

  /** Create the layout if needed. Reading never calls this: a missing store reads as empty. */
  async init(): Promise<void> {
    if (this.initialised) return
    for (const d of ['blobs/sha256', 'ingest', 'leases']) await mkdir(join(this.root, d), {recursive: true})
    const layoutFile = join(this.root, 'oci-layout')
    if (!(await pathExists(layoutFile))) await writeAtomic(layoutFile, jsonBytes({imageLayoutVersion: '1.0.0'}))
    if (!(await pathExists(this.indexPath))) {
      await withFileLock(`${this.indexPath}.lock`, async () => {
        if (!(await pathExists(this.indexPath))) await this.writeIndex({schemaVersion: 2, mediaType: MediaType.imageIndex, manifests: []})
      })
    }
    this.initialised = true
  }

  // ---- blobs -------------------------------------------------------------

  async exists(desc: Descriptor): Promise<boolean> {
    try {
      const st = await stat(this.blobPath(desc.digest))
      return st.isFile() && st.size === desc.size
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false
      throw err
    }
  }

  async fetch(desc: Descriptor): Promise<Readable> {
    const path = this.blobPath(desc.digest)
    const st = await stat(path).catch((err: unknown) => {
      if (isErrno(err, 'ENOENT')) throw this.blobMissing(desc.digest)
      throw err
    })
    if (st.size !== desc.size) throw mismatch(`blob ${desc.digest}`, `size ${st.size}, expected ${desc.size}`)
    const src = createReadStream(path)
    const check = new HashingStream({digest: desc.digest, size: desc.size}, `blob ${desc.digest}`)
    src.on('error', (err) => check.destroy(err))
    return src.pipe(check)
  }

  /** The whole blob in memory, verified. Refuses blobs larger than `max`. */
  async fetchBytes(desc: Descriptor, max = MAX_MANIFEST_BYTES): Promise<Buffer> {
    if (desc.size > max) {
      throw new AbortError({
        code: 'BLOB_TOO_LARGE',
        message: `blob ${desc.digest} is ${desc.size} bytes, more than the ${max} bytes ovm reads into memory`,
        exitCode: ExitCode.invalid,
        ref: desc.digest,
      })
    }
    let bytes: Buffer
    try {
      bytes = await readFile(this.blobPath(desc.digest))
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw this.blobMissing(desc.digest)
      throw err
    }
    if (bytes.length !== desc.size) throw mismatch(`blob ${desc.digest}`, `size ${bytes.length}, expected ${desc.size}`)
    const got = sha256(bytes)
    if (got !== desc.digest) throw mismatch(`blob ${desc.digest}`, `digest ${got}`)
    return bytes
  }

  async push(expected: Descriptor, content: Content): Promise<void> {
    digestHex(expected.digest)
    if (await this.exists(expected)) {
      if (!(content instanceof Uint8Array)) content.resume()
      await this.addLease(expected.digest)
      return
    }
    await this.writeBlob(content, {digest: expected.digest, size: expected.size})
  }

  /** Push bytes of a known media type, returning their descriptor. */
  async pushBytes(mediaType: string, bytes: Uint8Array, annotations?: Record<string, string>): Promise<Descriptor> {
    const desc: Descriptor = {mediaType, digest: sha256(bytes), size: bytes.length}
    if (annotations && Object.keys(annotations).length > 0) desc.annotations = annotations
    await this.push(desc, bytes)
    return desc
  }

  /**
   * Store a stream whose digest is not known in advance: hashed while written
   * to ingest/, then renamed into place. `expectedSize`, when given, is checked.
   */
  async ingest(content: Content, expectedSize?: number): Promise<{digest: string; size: number}> {
    return this.writeBlob(content, expectedSize === undefined ? undefined : {size: expectedSize})
  }

  private async writeBlob(content: Content, expected?: {digest?: string; size?: number}): Promise<{digest: string; size: number}> {
    await this.init()
    const ingestPath = join(this.root, 'ingest', `${process.pid}-${randomBytes(6).toString('hex')}`)
    const hasher = new HashingStream(expected, expected?.digest ? `blob ${expected.digest}` : 'blob')
    const src = content instanceof Uint8Array ? Readable.from([Buffer.from(content)]) : content
    const out = createWriteStream(ingestPath, {flags: 'wx', mode: 0o444})
    try {
      await pipeline(src, hasher, out)
      const digest = hasher.digest as string
      await this.addLease(digest)
      const final = this.blobPath(digest)
      // Already stored and intact (blobs are named by their content): keep that copy and skip the
      // fsync. A damaged copy is replaced by the new one.
      const have = await stat(final).then(
        async (st) => st.size === hasher.size && (await fileSha256(final)) === digest,
        () => false,
      )
      if (have) {
        await unlink(ingestPath).catch(() => undefined)
        return {digest, size: hasher.size}
      }
      await fsyncPath(ingestPath)
      await rename(ingestPath, final)
      return {digest, size: hasher.size}
    } catch (err) {
      await unlink(ingestPath).catch(() => undefined)
      throw err
    }
  }

  async delete(desc: Descriptor): Promise<void> {
    try {
      await unlink(this.blobPath(desc.digest))
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw this.blobMissing(desc.digest)
      throw err
    }
  }

  /** Every blob digest in the store. */
  async blobs(): Promise<string[]> {
    const dir = join(this.root, 'blobs', 'sha256')
    const names = await readdir(dir).catch((err: unknown) => {
      if (isErrno(err, 'ENOENT')) return [] as string[]
      throw err
    })
    return names.filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => `sha256:${n}`)
  }

  // ---- leases: blobs this process wrote and has not tagged yet ------------

  private async addLease(digest: string): Promise<void> {
    if (!this.leaseFile) {
      await mkdir(join(this.root, 'leases'), {recursive: true})
      this.leaseFile = join(this.root, 'leases', String(process.pid))
    }
    await appendFile(this.leaseFile, `${digest}\n`)
  }

  /** Drop this process's lease (its blobs are referenced by the index now). */
  async releaseLease(): Promise<void> {
    if (this.leaseFile) await unlink(this.leaseFile).catch(() => undefined)
    this.leaseFile = undefined
  }

  private async leasedDigests(): Promise<Set<string>> {
    const dir = join(this.root, 'leases')
    const out = new Set<string>()
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const pid = Number.parseInt(name, 10)
      const path = join(dir, name)
      if (!pidAlive(pid)) {
        await unlink(path).catch(() => undefined)
        continue
      }
      for (const line of (await readFile(path, 'utf8').catch(() => '')).split('\n')) if (isDigest(line)) out.add(line)
    }
    return out
  }

  // ---- index and tags --------------------------------------------------

  async readIndex(): Promise<ImageIndex> {
    let text: string
    try {
      text = await readFile(this.indexPath, 'utf8')
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return {schemaVersion: 2, mediaType: MediaType.imageIndex, manifests: []}
      throw err
    }
    try {
      const idx = JSON.parse(text) as ImageIndex
      if (!Array.isArray(idx.manifests)) throw new Error('manifests is not an array')
      return idx
    } catch (err) {
      throw new AbortError({
        code: 'STORE_CORRUPT',
        message: `the store's index is not valid JSON: ${this.indexPath}: ${(err as Error).message}`,
        hint: 'Restore index.json from a backup, or move the store away and pull or pack again.',
        exitCode: ExitCode.integrity,
        ref: this.indexPath,
        cause: err,
      })
    }
  }

  private async writeIndex(idx: ImageIndex): Promise<void> {
    await writeAtomic(this.indexPath, Buffer.from(`${JSON.stringify(idx, null, 2)}\n`))
  }

  /** Read-modify-write index.json under the store lock. */
  async updateIndex<T>(fn: (idx: ImageIndex) => T | Promise<T>): Promise<T> {
    await this.init()
    return withFileLock(`${this.indexPath}.lock`, async () => {
      const idx = await this.readIndex()
      const result = await fn(idx)
      await this.writeIndex(idx)
      return result
    })
  }

  async tag(desc: Descriptor, reference: string): Promise<void> {
    const name = refName(parseReference(reference))
    if (name === undefined) {
      throw new AbortError({
        code: 'BAD_REFERENCE',
        message: `cannot tag with a digest reference: ${reference}`,
        hint: 'Give a tag, e.g. example/busybox:1.0.',
        exitCode: ExitCode.invalid,
        ref: reference,
      })
    }
    if (!(await this.exists(desc))) throw this.blobMissing(desc.digest)
    await this.updateIndex((idx) => {
      idx.manifests = idx.manifests.filter(
        (m) => m.annotations?.[Annotation.refName] !== name && !(m.digest === desc.digest && !m.annotations?.[Annotation.refName]),
      )
      const {annotations, ...rest} = desc
      idx.manifests.push({...rest, annotations: {...annotations, [Annotation.refName]: name}})
    })
    await this.releaseLease()
  }

  /** Add an untagged manifest (e.g. a referrer) to the index so it is kept. */
  async addUntagged(desc: Descriptor): Promise<void> {
    await this.updateIndex((idx) => {
      if (!idx.manifests.some((m) => m.digest === desc.digest)) idx.manifests.push(desc)
    })
    await this.releaseLease()
  }

  /** Remove a tag. Returns the descriptor it pointed at. Blobs stay until `prune`. */
  async untag(reference: string): Promise<Descriptor> {
    const parsed = parseReference(reference)
    const name = refName(parsed)
    return this.updateIndex((idx) => {
      const i = idx.manifests.findIndex((m) =>
        name !== undefined ? m.annotations?.[Annotation.refName] === name : m.digest === parsed.digest,
      )
      if (i < 0) throw this.refMissing(reference)
      const [removed] = idx.manifests.splice(i, 1)
      return removed as Descriptor
    })
  }

  async resolve(reference: string): Promise<Descriptor> {
    const idx = await this.readIndex()
    // A bare digest, or a name@digest
    const bare = isDigest(reference) ? reference : undefined
    const parsed = bare ? undefined : parseReference(reference)
    const digest = bare ?? parsed?.digest
    if (digest) {
      const hit = idx.manifests.find((m) => m.digest === digest)
      if (hit) return stripRefName(hit)
      // Not in the index but maybe present as a blob: sniff its media type.
      const st = await stat(this.blobPath(digest)).catch(() => undefined)
      if (st && st.size <= MAX_MANIFEST_BYTES) {
        const bytes = await readFile(this.blobPath(digest))
        const mediaType = sniffMediaType(bytes)
        if (mediaType) return {mediaType, digest, size: bytes.length}
      }
      throw this.refMissing(reference)
    }
    const name = refName(parsed!)
    const hit = idx.manifests.find((m) => m.annotations?.[Annotation.refName] === name)
    if (!hit) throw this.refMissing(reference, name)
    return stripRefName(hit)
  }

  async list(): Promise<TaggedDescriptor[]> {
    const idx = await this.readIndex()
    return idx.manifests
      .filter((m) => m.annotations?.[Annotation.refName])
      .map((m) => ({reference: m.annotations![Annotation.refName]!, descriptor: stripRefName(m)}))
      .sort((a, b) => a.reference.localeCompare(b.reference))
  }

  // ---- maintenance ----------------------------------------------------------

  /** Digests reachable from index.json (manifests, their configs, layers, subjects). */
  async reachable(): Promise<{live: Set<string>; missing: {digest: string; reference?: string}[]}> {
    const idx = await this.readIndex()
    const live = new Set<string>()
    const missing: {digest: string; reference?: string}[] = []
    const visit = async (desc: Descriptor, reference?: string): Promise<void> => {
      if (live.has(desc.digest)) return
      live.add(desc.digest)
      if (!isManifestMediaType(desc.mediaType) && !isIndexMediaType(desc.mediaType)) return
      let doc: ImageManifest | ImageIndex
      try {
        doc = JSON.parse((await this.fetchBytes(desc)).toString('utf8'))
      } catch (err) {
        if (err instanceof AbortError && err.code === 'BLOB_NOT_FOUND') missing.push({digest: desc.digest, reference})
        return
      }
      const leaves = [...('config' in doc && doc.config ? [doc.config] : []), ...('layers' in doc && Array.isArray(doc.layers) ? doc.layers : [])]
      for (const l of leaves) {
        if (live.has(l.digest)) continue
        live.add(l.digest)
        if (!(await pathExists(this.blobPath(l.digest)))) missing.push({digest: l.digest, reference})
      }
      if ('manifests' in doc && Array.isArray(doc.manifests)) for (const m of doc.manifests) await visit(m, reference)
      if (doc.subject) await visit(doc.subject, reference)
    }
    for (const m of idx.manifests) await visit(m, m.annotations?.[Annotation.refName])
    return {live, missing}
  }

  /** Re-hash every blob; move bad ones to quarantine/. */
  async verify(opts: {quarantine?: boolean} = {}): Promise<VerifyReport> {
    const report: VerifyReport = {checked: 0, bytes: 0, bad: [], missing: [], staleIngest: 0}
    for (const digest of await this.blobs()) {
      const path = this.blobPath(digest)
      const hasher = new HashingStream()
      await pipeline(createReadStream(path), hasher, async function* (src) {
        for await (const _ of src) {
          // drain
        }
      })
      report.checked++
      report.bytes += hasher.size
      if (hasher.digest !== digest) {
        const entry: VerifyReport['bad'][number] = {digest, reason: `content hashes to ${hasher.digest}`}
        if (opts.quarantine !== false) {
          const qdir = join(this.root, 'quarantine', 'sha256')
          await mkdir(qdir, {recursive: true})
          entry.quarantinedTo = join(qdir, digestHex(digest))
          await rename(path, entry.quarantinedTo)
        }
        report.bad.push(entry)
      }
    }
    report.missing = (await this.reachable()).missing
    report.staleIngest = (await this.staleIngest()).length
    return report
  }

  private async staleIngest(): Promise<string[]> {
    const dir = join(this.root, 'ingest')
    const names = await readdir(dir).catch(() => [] as string[])
    return names.filter((n) => !pidAlive(Number.parseInt(n, 10))).map((n) => join(dir, n))
  }

  /** Remove blobs nothing references (kept: leases of live ovm processes) and dead ingests. */
  async prune(opts: {dryRun?: boolean} = {}): Promise<PruneReport> {
    const report: PruneReport = {removed: [], bytes: 0, ingestRemoved: 0, cacheRemoved: 0, kept: 0}
    if (!(await pathExists(this.indexPath))) return report
    await withFileLock(`${this.indexPath}.lock`, async () => {
      const {live} = await this.reachable()
      for (const d of await this.leasedDigests()) live.add(d)
      for (const digest of await this.blobs()) {
        if (live.has(digest)) {
          report.kept++
          continue
        }
        const path = this.blobPath(digest)
        const st = await stat(path).catch(() => undefined)
        if (!st) continue
        if (!opts.dryRun) await unlink(path).catch(() => undefined)
        report.removed.push({digest, size: st.size})
        report.bytes += st.size
      }
      for (const path of await this.staleIngest()) {
        if (!opts.dryRun) await rm(path, {force: true})
        report.ingestRemoved++
      }
      // Unpacked copies (disk layers, RAM snapshots, kernel artifacts) are named by their blob's digest:
      // drop those whose blob is gone.
      const left = new Set((await this.blobs()).filter((d) => !report.removed.some((r) => r.digest === d)))
      for (const kind of CACHE_KINDS) {
        const dir = join(this.root, 'cache', kind)
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          const hex = /^[a-f0-9]{64}/.exec(name)?.[0]
          if (!hex || left.has(`sha256:${hex}`)) continue
          if (!opts.dryRun) await rm(join(dir, name), {recursive: true, force: true})
          report.cacheRemoved++
        }
      }
    })
    return report
  }

  // ---- errors -------------------------------------------------------------

  private blobMissing(digest: string): AbortError {
    return new AbortError({
      code: 'BLOB_NOT_FOUND',
      message: `blob ${digest} is not in the local store (${this.root})`,
      hint: 'Pull or pack the artifact again; `ovm store verify` checks the whole store.',
      exitCode: ExitCode.notFound,
      ref: digest,
    })
  }

  private refMissing(reference: string, name?: string): AbortError {
    return new AbortError({
      code: 'REF_NOT_FOUND',
      message: `no artifact ${name && name !== reference ? `${reference} (${name})` : reference} in the local store (${this.root})`,
      hint: 'Run `ovm ls` to see what the store holds, or `ovm pack`/`ovm pull` it first.',
      exitCode: ExitCode.notFound,
      ref: reference,
    })
  }
}

function stripRefName(d: Descriptor): Descriptor {
  if (!d.annotations?.[Annotation.refName]) return {...d}
  const {[Annotation.refName]: _drop, ...rest} = d.annotations
  const out: Descriptor = {...d}
  if (Object.keys(rest).length > 0) out.annotations = rest
  else delete out.annotations
  return out
}

function sniffMediaType(bytes: Buffer): string | undefined {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as {mediaType?: unknown; manifests?: unknown; config?: unknown}
    if (typeof doc.mediaType === 'string' && (isManifestMediaType(doc.mediaType) || isIndexMediaType(doc.mediaType))) return doc.mediaType
    if (Array.isArray(doc.manifests)) return MediaType.imageIndex
    if (doc.config) return MediaType.imageManifest
  } catch {
    // not JSON: not a manifest
  }
  return undefined
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false
    throw err
  }
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Write to a temporary name beside `path`, fsync, then rename over it. */
export async function writeAtomic(path: string, bytes: Uint8Array, mode = 0o644): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  const fh = await open(tmp, 'wx', mode)
  try {
    await fh.writeFile(bytes)
    await fh.sync()
  } catch (err) {
    await fh.close()
    await unlink(tmp).catch(() => undefined)
    throw err
  }
  await fh.close()
  try {
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw new BugError(`could not rename ${tmp} to ${path}`, err)
  }
}

async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return `sha256:${h.digest('hex')}`
}
