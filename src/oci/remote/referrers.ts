import {ExitCode, OvmError} from '../../errors/index.js'
import {type Descriptor, type ImageIndex, type ImageManifest, MediaType, isManifestMediaType, jsonBytes} from '../descriptor.js'
import {digestHex, sha256} from '../digest.js'
import type {LayoutStore} from '../layout.js'
import type {RemoteRepository} from './client.js'
import {discard, header, readBody} from './http.js'

/**
 * OCI 1.1 referrers, after oras-go's registry/remote/referrers.go:
 * `GET /v2/<name>/referrers/<digest>` where the registry has it (a 200 with
 * an image index), else the tag schema: tag `sha256-<hex>` holds an index
 * of the referrers, which clients read and update themselves.
 */

export const ZERO_DIGEST = `sha256:${'0'.repeat(64)}`

/** The fallback tag for a subject: `<alg>-<hex>`, at most 128 characters. */
export function referrersTag(digest: string): string {
  return `sha256-${digestHex(digest)}`.slice(0, 128)
}

/** The descriptor of `manifest` as it appears in a referrers list. */
export function referrerDescriptor(desc: Descriptor, manifest: ImageManifest | ImageIndex): Descriptor {
  const out: Descriptor = {mediaType: desc.mediaType, digest: desc.digest, size: desc.size}
  const at = manifest.artifactType ?? ('config' in manifest ? manifest.config?.mediaType : undefined)
  if (at) out.artifactType = at
  if (manifest.annotations && Object.keys(manifest.annotations).length > 0) out.annotations = manifest.annotations
  return out
}

function filterType(list: Descriptor[], artifactType?: string): Descriptor[] {
  return artifactType ? list.filter((d) => d.artifactType === artifactType) : list
}

/** Ask the registry's referrers API. undefined: the registry has none (use the tag schema). */
export async function referrersFromApi(repo: RemoteRepository, digest: string, artifactType?: string): Promise<Descriptor[] | undefined> {
  let url: URL | undefined = repo.registry.url(`/v2/${repo.name}/referrers/${digest}`)
  if (artifactType) url.searchParams.set('artifactType', artifactType)
  const out: Descriptor[] = []
  const what = `list referrers of ${repo}@${digest}`
  for (let page = 0; url && page < 1000; page++) {
    const res = await repo.registry.send({method: 'GET', url, headers: {accept: MediaType.imageIndex}, scopes: repo.scopes('pull'), what, ref: `${repo}@${digest}`})
    const ct = (header(res, 'content-type') ?? '').split(';')[0]?.trim()
    if (res.status === 200 && ct === MediaType.imageIndex) {
      const idx = JSON.parse((await readBody(res, 4 * 1024 * 1024)).toString('utf8')) as ImageIndex
      const list = Array.isArray(idx.manifests) ? idx.manifests : []
      out.push(...(header(res, 'oci-filters-applied')?.split(',').map((s) => s.trim()).includes('artifactType') ? list : filterType(list, artifactType)))
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header(res, 'link') ?? '')
      url = link ? new URL(link[1] as string, url) : undefined
      continue
    }
    if (res.status === 404) {
      const body = (await readBody(res, 64 * 1024).catch(() => Buffer.alloc(0))).toString('utf8')
      // NAME_UNKNOWN: the repository does not exist, which says nothing about the API.
      if (body.includes('NAME_UNKNOWN')) return []
      return page === 0 ? undefined : out
    }
    if (res.status === 400 || res.status === 405 || (res.status === 200 && ct !== MediaType.imageIndex)) {
      discard(res)
      return page === 0 ? undefined : out
    }
    throw await repo.registry.errorFrom(res, what, `${repo}@${digest}`)
  }
  return out
}

/** Read the fallback index (tag `sha256-<hex>`): its descriptor and manifests, or undefined when absent. */
export async function readFallbackIndex(repo: RemoteRepository, digest: string): Promise<{desc: Descriptor; index: ImageIndex} | undefined> {
  let desc: Descriptor
  try {
    desc = await repo.resolve(referrersTag(digest))
  } catch (err) {
    if (err instanceof OvmError && err.exitCode === ExitCode.notFound) return undefined
    throw err
  }
  const bytes = await repo.fetchManifestBytes(desc)
  const index = JSON.parse(bytes.toString('utf8')) as ImageIndex
  if (!Array.isArray(index.manifests)) index.manifests = []
  return {desc, index}
}

/** The referrers of `digest` in `repo`, by the API where there is one, else by the tag schema. */
export async function listReferrers(repo: RemoteRepository, digest: string, artifactType?: string): Promise<Descriptor[]> {
  if (repo.referrersApi !== false) {
    const viaApi = await referrersFromApi(repo, digest, artifactType)
    if (viaApi !== undefined) {
      repo.referrersApi = true
      return viaApi
    }
    repo.referrersApi = false
  }
  const fb = await readFallbackIndex(repo, digest)
  return filterType(fb?.index.manifests ?? [], artifactType)
}

/** Whether the registry has the referrers API (probed with the zero digest, as oras-go does). */
export async function probeReferrersApi(repo: RemoteRepository): Promise<boolean> {
  if (repo.referrersApi !== undefined) return repo.referrersApi
  const r = await referrersFromApi(repo, ZERO_DIGEST)
  repo.referrersApi = r !== undefined
  return repo.referrersApi
}

const locks = new Map<string, Promise<unknown>>()

/** Run `fn` after any other update of the same key in this process. */
function serialised<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(key) ?? Promise.resolve()
  const next = prev.catch(() => undefined).then(fn)
  locks.set(key, next)
  void next.finally(() => {
    if (locks.get(key) === next) locks.delete(key)
  }).catch(() => undefined)
  return next
}

export interface FallbackUpdate {
  /** The index now at the tag (undefined when the update emptied and removed it). */
  index?: Descriptor
  changed: boolean
}

/**
 * Add (or remove) a referrer in the subject's fallback index: read the index
 * at `sha256-<hex>`, change it, push the new index under the tag, then
 * delete the old one (unless `skipGc`; a registry that refuses deletes is fine).
 */
export async function updateFallbackIndex(
  repo: RemoteRepository,
  subject: string,
  referrer: Descriptor,
  op: 'add' | 'remove',
  opts: {skipGc?: boolean} = {},
): Promise<FallbackUpdate> {
  return serialised(`${repo} ${subject}`, async () => {
    const old = await readFallbackIndex(repo, subject)
    const manifests = old?.index.manifests ?? []
    const present = manifests.some((m) => m.digest === referrer.digest)
    if ((op === 'add' && present) || (op === 'remove' && !present)) return {index: old?.desc, changed: false}
    const next = op === 'add' ? [...manifests, referrer] : manifests.filter((m) => m.digest !== referrer.digest)
    const tag = referrersTag(subject)
    let newDesc: Descriptor | undefined
    if (next.length > 0 || op === 'add') {
      const index: ImageIndex = {schemaVersion: 2, mediaType: MediaType.imageIndex, manifests: next}
      const bytes = jsonBytes(index)
      newDesc = {mediaType: MediaType.imageIndex, digest: sha256(bytes), size: bytes.length}
      await repo.pushManifest(newDesc, bytes, tag)
    }
    if (old && !opts.skipGc && old.desc.digest !== newDesc?.digest) {
      await repo.delete(old.desc).catch((err: unknown) => {
        // Deletes disabled (405) or not allowed: the old index just lingers untagged.
        if (!(err instanceof OvmError)) throw err
      })
    }
    return {index: newDesc, changed: true}
  })
}

/**
 * After pushing a manifest: if it has a subject and the registry did not
 * index it (no `OCI-Subject`), record it in the fallback index.
 */
export async function indexSubjectIfNeeded(repo: RemoteRepository, desc: Descriptor, bytes: Buffer, subjectIndexed: boolean): Promise<boolean> {
  let doc: ImageManifest | ImageIndex
  try {
    doc = JSON.parse(bytes.toString('utf8')) as ImageManifest | ImageIndex
  } catch {
    return false
  }
  if (!doc.subject?.digest) return false
  if (subjectIndexed) {
    repo.referrersApi = true
    return false
  }
  if (repo.referrersApi === undefined) await probeReferrersApi(repo)
  if (repo.referrersApi) return false
  await updateFallbackIndex(repo, doc.subject.digest, referrerDescriptor(desc, doc), 'add')
  return true
}

/** Referrers of `digest` in the local store: manifests it holds whose subject is `digest`. */
export async function localReferrers(store: LayoutStore, digest: string, artifactType?: string): Promise<Descriptor[]> {
  const idx = await store.readIndex()
  const out: Descriptor[] = []
  const seen = new Set<string>()
  for (const m of idx.manifests) {
    if (seen.has(m.digest) || !isManifestMediaType(m.mediaType)) continue
    seen.add(m.digest)
    let doc: ImageManifest
    try {
      doc = JSON.parse((await store.fetchBytes(m)).toString('utf8')) as ImageManifest
    } catch {
      continue
    }
    if (doc.subject?.digest === digest) out.push(referrerDescriptor({mediaType: m.mediaType, digest: m.digest, size: m.size}, doc))
  }
  return filterType(out, artifactType)
}

export interface ReferrerNode {
  descriptor: Descriptor
  referrers: ReferrerNode[]
}

/** The referrers of `digest`, and theirs, to `depth` levels. */
export async function referrersTree(
  list: (digest: string) => Promise<Descriptor[]>,
  digest: string,
  opts: {artifactType?: string; depth?: number} = {},
): Promise<ReferrerNode[]> {
  const depth = opts.depth ?? 4
  const walk = async (d: string, level: number, seen: Set<string>): Promise<ReferrerNode[]> => {
    if (level >= depth) return []
    const direct = await list(d)
    const nodes: ReferrerNode[] = []
    for (const r of direct) {
      if (seen.has(r.digest)) continue
      const s = new Set(seen).add(r.digest)
      nodes.push({descriptor: r, referrers: await walk(r.digest, level + 1, s)})
    }
    return nodes
  }
  const top = await walk(digest, 0, new Set([digest]))
  return opts.artifactType ? top.filter((n) => n.descriptor.artifactType === opts.artifactType) : top
}
