/**
 * Container image sources for `ovm convert` (rfc/convert.md §1):
 *
 * - `docker://[REGISTRY/]REPO[:TAG|@DIGEST]` (or a bare reference): our own
 *   registry client; Docker v2 and OCI manifests and indexes, choosing
 *   linux/amd64 in an index. Docker Hub names are expanded
 *   (`alpine` → `docker.io/library/alpine:latest`).
 * - `oci:PATH[:TAG]`: an OCI image layout folder (what `skopeo copy … oci:`
 *   and `umoci` write); without a tag, its only manifest.
 * - `docker-archive:PATH` or a path to a `.tar`: a `docker save` tarball
 *   (its manifest.json; the legacy and the OCI-layout forms both have one).
 *
 * Every blob is checked against its digest as it is read.
 */
import {createReadStream} from 'node:fs'
import {mkdtemp, readFile, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import type {Readable} from 'node:stream'

import {extract} from 'tar-stream'

import {AbortError, ExitCode, fileError, isErrno} from '../errors/index.js'
import {type Descriptor, isIndexMediaType} from '../oci/descriptor.js'
import {HashingStream, isDigest, sha256} from '../oci/digest.js'
import {parseReference} from '../oci/reference.js'
import {type RegistryOptions, openRemote} from '../oci/remote/client.js'
import type {FlattenLayer} from './flatten.js'
import {removeTree} from './flatten.js'

/** The parts of an OCI / Docker image config that convert reads. */
export interface ImageConfig {
  architecture?: string
  os?: string
  config?: {
    Env?: string[] | null
    WorkingDir?: string
    Entrypoint?: string[] | null
    Cmd?: string[] | null
    ExposedPorts?: Record<string, unknown> | null
    User?: string
    Labels?: Record<string, string> | null
  }
}

export interface ImageSource {
  /** What was opened, for messages and annotations: "docker.io/library/alpine:3.19". */
  name: string
  /** The digest of the image manifest chosen (for cache keys). */
  manifestDigest: string
  config: ImageConfig
  layers: FlattenLayer[]
  /** Removes temporary files (a docker-save tarball is unpacked to a temp folder). */
  close(): Promise<void>
}

export type SourceKind = 'docker' | 'oci' | 'docker-archive'

export interface ParsedSource {
  kind: SourceKind
  /** Registry reference, or a path. */
  target: string
  /** For oci: the tag (org.opencontainers.image.ref.name). */
  tag?: string
}

const LAYER_TYPES = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.diff.tar',
])

function bad(code: string, message: string, hint: string, ref?: string, exitCode: (typeof ExitCode)[keyof typeof ExitCode] = ExitCode.invalid): AbortError {
  return new AbortError({code, message, hint, exitCode, ...(ref ? {ref} : {})})
}

/** Docker's name rules: no registry means docker.io, and a one-part name there is under library/. */
export function normalizeDockerReference(ref: string): string {
  const r = parseReference(ref)
  const registry = r.registry ?? 'docker.io'
  const repo = registry === 'docker.io' && !r.repository.includes('/') ? `library/${r.repository}` : r.repository
  return `${registry}/${repo}${r.tag && !r.digest ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`
}

export function parseSource(spec: string): ParsedSource {
  if (spec.startsWith('docker://')) return {kind: 'docker', target: normalizeDockerReference(spec.slice('docker://'.length))}
  if (spec.startsWith('oci:')) {
    const rest = spec.slice(4)
    // oci:PATH[:TAG] — a tag has no '/'; the path may.
    const m = /^(.*?):([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$/.exec(rest)
    return m && m[1] ? {kind: 'oci', target: m[1], tag: m[2]} : {kind: 'oci', target: rest}
  }
  if (spec.startsWith('docker-archive:')) return {kind: 'docker-archive', target: spec.slice('docker-archive:'.length)}
  if (/\.tar$/.test(spec) || spec.startsWith('/') || spec.startsWith('./')) return {kind: 'docker-archive', target: spec}
  return {kind: 'docker', target: normalizeDockerReference(spec)}
}

interface ManifestDoc {
  mediaType?: string
  config?: Descriptor
  layers?: Descriptor[]
  manifests?: (Descriptor & {platform?: {os?: string; architecture?: string; variant?: string}})[]
}

function parseJson<T>(bytes: Buffer, what: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T
  } catch (err) {
    throw bad('IMAGE_BAD_JSON', `${what} is not valid JSON: ${(err as Error).message}`, 'The image is damaged; fetch it again.', what)
  }
}

/** From an index, the linux/amd64 image manifest; a clear error listing what is there otherwise. */
export function chooseAmd64(index: ManifestDoc, what: string): Descriptor {
  const ms = index.manifests ?? []
  const pick = ms.find((m) => m.platform?.os === 'linux' && m.platform?.architecture === 'amd64')
  if (pick) return pick
  const have = ms.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? `/${m.platform.variant}` : ''}` : m.mediaType)).join(', ')
  throw bad('IMAGE_NO_AMD64', `${what} has no linux/amd64 image (it has: ${have || 'nothing'})`, 'OVMS VMs are x86_64: pick an image built for linux/amd64.', what, ExitCode.notFound)
}

function checkManifest(doc: ManifestDoc, what: string): {config: Descriptor; layers: Descriptor[]} {
  if (!doc.config || !Array.isArray(doc.layers)) {
    throw bad('IMAGE_BAD_MANIFEST', `${what} is not an image manifest (no config or layers)`, 'Name a container image, not another kind of artifact.', what)
  }
  if (doc.config.mediaType && !/image\.config|container\.image\.v1/.test(doc.config.mediaType)) {
    throw bad(
      'IMAGE_NOT_CONTAINER',
      `${what} is not a container image (config type ${doc.config.mediaType})`,
      'ovm convert takes container images; an OVMS artifact runs as it is (`ovm run`).',
      what,
    )
  }
  for (const [i, l] of doc.layers.entries()) {
    if (!LAYER_TYPES.has(l.mediaType)) {
      throw bad('IMAGE_LAYER_TYPE', `${what}: layer ${i + 1} has media type ${l.mediaType}, which is not a container layer`, 'Use an image whose layers are tar, tar+gzip or Docker rootfs diffs.', what)
    }
    if (!isDigest(l.digest)) throw bad('IMAGE_BAD_MANIFEST', `${what}: layer ${i + 1} has no sha256 digest`, 'The image is damaged.', what)
  }
  return {config: doc.config, layers: doc.layers}
}

function verified(src: Readable, desc: {digest: string; size?: number}, label: string): Readable {
  const check = new HashingStream({digest: desc.digest, ...(desc.size !== undefined && desc.size >= 0 ? {size: desc.size} : {})}, label)
  src.on('error', (err) => check.destroy(err))
  return src.pipe(check)
}

const short = (d: string): string => d.slice(7, 19)

async function openRegistry(ref: string, opts: RegistryOptions): Promise<ImageSource> {
  const {repository, part} = openRemote(ref, opts)
  let desc = await repository.resolve(part)
  let doc = parseJson<ManifestDoc>(await repository.fetchManifestBytes(desc), `manifest of ${ref}`)
  if (isIndexMediaType(doc.mediaType ?? desc.mediaType) || Array.isArray(doc.manifests)) {
    desc = chooseAmd64(doc, ref)
    doc = parseJson<ManifestDoc>(await repository.fetchManifestBytes(desc), `manifest ${desc.digest} of ${ref}`)
  }
  const m = checkManifest(doc, ref)
  const configBytes = Buffer.concat(await (await repository.fetch(m.config)).toArray())
  return {
    name: ref,
    manifestDigest: desc.digest,
    config: parseJson<ImageConfig>(configBytes, `config of ${ref}`),
    layers: m.layers.map((l, i) => ({label: `layer ${i + 1} (${short(l.digest)})`, open: () => repository.fetch(l)})),
    close: async () => undefined,
  }
}

async function openBlob(dir: string, desc: {digest: string; size?: number}, label: string): Promise<Readable> {
  if (!isDigest(desc.digest)) throw bad('IMAGE_BAD_DIGEST', `${label}: ${desc.digest} is not a sha256 digest`, 'The image is damaged.', label)
  const path = join(dir, 'blobs', 'sha256', desc.digest.slice(7))
  try {
    await stat(path)
  } catch (err) {
    throw isErrno(err, 'ENOENT')
      ? bad('IMAGE_BLOB_MISSING', `${label}: blob ${desc.digest} is missing from ${dir}`, 'The layout is incomplete; copy the image again (skopeo copy … oci:DIR).', path, ExitCode.notFound)
      : fileError(err, path, 'image blob')
  }
  return verified(createReadStream(path), desc, `${label} (${desc.digest})`)
}

async function readAll(s: Readable): Promise<Buffer> {
  return Buffer.concat(await s.toArray())
}

async function openLayout(dir: string, tag: string | undefined): Promise<ImageSource> {
  const indexPath = join(dir, 'index.json')
  let indexBytes: Buffer
  try {
    indexBytes = await readFile(indexPath)
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw bad('IMAGE_NOT_FOUND', `${dir} is not an OCI image layout (no index.json)`, 'Give a folder written by `skopeo copy … oci:DIR` or umoci.', dir, ExitCode.notFound)
    }
    throw fileError(err, indexPath, 'OCI layout index')
  }
  const index = parseJson<ManifestDoc>(indexBytes, indexPath)
  const all = index.manifests ?? []
  let desc: Descriptor | undefined
  const refName = (d: Descriptor): string | undefined => d.annotations?.['org.opencontainers.image.ref.name']
  if (tag) {
    desc = all.find((d) => refName(d) === tag)
    if (!desc) {
      const tags = all.map(refName).filter(Boolean)
      throw bad('IMAGE_NOT_FOUND', `${dir} has no image tagged ${tag}`, tags.length ? `It has: ${tags.join(', ')}.` : 'It has no tagged images; leave the tag out.', `oci:${dir}:${tag}`, ExitCode.notFound)
    }
  } else if (all.length === 1) {
    desc = all[0]
  } else {
    const tags = all.map(refName).filter(Boolean)
    throw bad('IMAGE_AMBIGUOUS', `${dir} holds ${all.length} manifests; say which`, `Write oci:${dir}:TAG (tags: ${tags.join(', ') || 'none'}).`, dir, ExitCode.usage)
  }
  const what = `oci:${dir}${tag ? `:${tag}` : ''}`
  let doc = parseJson<ManifestDoc>(await readAll(await openBlob(dir, desc as Descriptor, what)), what)
  if (isIndexMediaType((desc as Descriptor).mediaType) || Array.isArray(doc.manifests)) {
    desc = chooseAmd64(doc, what)
    doc = parseJson<ManifestDoc>(await readAll(await openBlob(dir, desc, what)), what)
  }
  const m = checkManifest(doc, what)
  const config = parseJson<ImageConfig>(await readAll(await openBlob(dir, m.config, `${what} config`)), `${what} config`)
  return {
    name: what,
    manifestDigest: (desc as Descriptor).digest,
    config,
    layers: m.layers.map((l, i) => ({label: `layer ${i + 1} (${short(l.digest)})`, open: () => openBlob(dir, l, `${what} layer ${i + 1}`)})),
    close: async () => undefined,
  }
}

/** Unpack the regular files of a `docker save` tarball into a temp folder (names checked). */
async function unpackArchive(path: string, dir: string): Promise<void> {
  const ex = extract()
  const {createWriteStream} = await import('node:fs')
  const {mkdir} = await import('node:fs/promises')
  const {dirname} = await import('node:path')
  const {finished} = await import('node:stream/promises')
  const src = createReadStream(path)
  await new Promise<void>((resolveP, reject) => {
    ex.on('entry', (h, body, next) => {
      const name = h.name.replace(/^\.\//, '')
      if (h.type !== 'file' || name.split('/').includes('..') || name.startsWith('/')) {
        body.resume()
        next()
        return
      }
      const out = join(dir, name)
      mkdir(dirname(out), {recursive: true})
        .then(async () => {
          const ws = createWriteStream(out)
          for await (const c of body) if (!ws.write(c as Buffer)) await new Promise<void>((r) => ws.once('drain', () => r()))
          ws.end()
          await finished(ws)
        })
        .then(() => next(), (err: unknown) => next(err as Error))
    })
    ex.on('finish', () => resolveP())
    ex.on('error', reject)
    src.on('error', reject)
    src.pipe(ex as unknown as NodeJS.WritableStream)
  }).catch((err: unknown) => {
    if (isErrno(err)) throw fileError(err, path, 'docker save tarball')
    throw bad('IMAGE_ARCHIVE_BAD', `${path} is not a readable tar archive: ${(err as Error).message}`, 'Give a tarball written by `docker save IMAGE -o FILE.tar`.', path)
  })
}

async function openArchive(path: string): Promise<ImageSource> {
  await stat(path).catch((err: unknown) => {
    throw fileError(err, path, 'docker save tarball')
  })
  const dir = await mkdtemp(join(tmpdir(), 'ovm-archive-'))
  try {
    await unpackArchive(path, dir)
    let manifestBytes: Buffer
    try {
      manifestBytes = await readFile(join(dir, 'manifest.json'))
    } catch {
      throw bad('IMAGE_ARCHIVE_BAD', `${path} has no manifest.json, so it is not a \`docker save\` tarball`, 'Give a tarball written by `docker save IMAGE -o FILE.tar`, or an OCI layout folder as oci:DIR.', path)
    }
    const entries = parseJson<{Config?: string; Layers?: string[]; RepoTags?: string[] | null}[]>(manifestBytes, `${path}: manifest.json`)
    const e = entries[0]
    if (!e?.Config || !Array.isArray(e.Layers)) throw bad('IMAGE_ARCHIVE_BAD', `${path}: manifest.json names no Config and Layers`, 'Give a tarball written by `docker save`.', path)
    if (entries.length > 1) throw bad('IMAGE_AMBIGUOUS', `${path} holds ${entries.length} images`, 'Save one image per tarball (`docker save IMAGE -o FILE.tar`).', path, ExitCode.usage)
    const safe = (n: string): string => {
      if (n.startsWith('/') || n.split('/').includes('..')) throw bad('IMAGE_ARCHIVE_BAD', `${path}: manifest.json names ${n}, outside the tarball`, 'The tarball is damaged or hostile.', path)
      return join(dir, n)
    }
    const configPath = safe(e.Config)
    const configBytes = await readFile(configPath).catch((err: unknown) => {
      throw fileError(err, `${path}:${e.Config}`, 'image config')
    })
    // A legacy docker save names files by hash: the config is <hex>.json, layers <hex>/layer.tar; the OCI form blobs/sha256/<hex>.
    const digestOf = (n: string): string | undefined => {
      const m = /([a-f0-9]{64})(?:\.json|\/layer\.tar)?$/.exec(n)
      return m ? `sha256:${m[1]}` : undefined
    }
    const cd = digestOf(e.Config)
    if (cd && sha256(configBytes) !== cd) throw bad('IMAGE_DIGEST', `${path}: config ${e.Config} does not match its digest`, 'The tarball is damaged; save it again.', path, ExitCode.integrity)
    const layers = e.Layers.map((n, i): FlattenLayer => ({
      label: `layer ${i + 1} (${n})`,
      open: async () => {
        const p = safe(n)
        await stat(p).catch((err: unknown) => {
          throw fileError(err, `${path}:${n}`, 'image layer')
        })
        // Only the OCI form names layers by their digest; a legacy layer.tar's folder is a v1 id, not its digest.
        const d = /^blobs\/sha256\/[a-f0-9]{64}$/.test(n) ? digestOf(n) : undefined
        return d ? verified(createReadStream(p), {digest: d}, `${path}:${n}`) : createReadStream(p)
      },
    }))
    return {
      name: `docker-archive:${path}${e.RepoTags?.[0] ? ` (${e.RepoTags[0]})` : ''}`,
      manifestDigest: sha256(manifestBytes),
      config: parseJson<ImageConfig>(configBytes, `${path}:${e.Config}`),
      layers,
      close: () => removeTree(dir),
    }
  } catch (err) {
    await removeTree(dir)
    throw err
  }
}

/** Open an image from a registry, an OCI layout or a docker save tarball. */
export async function openImage(spec: string, opts: {registry?: RegistryOptions; cwd?: string} = {}): Promise<ImageSource> {
  const p = parseSource(spec)
  const src =
    p.kind === 'docker'
      ? await openRegistry(p.target, opts.registry ?? {})
      : p.kind === 'oci'
        ? await openLayout(resolve(opts.cwd ?? '.', p.target), p.tag)
        : await openArchive(resolve(opts.cwd ?? '.', p.target))
  const os = src.config.os
  const arch = src.config.architecture
  if ((os && os !== 'linux') || (arch && arch !== 'amd64')) {
    await src.close()
    throw bad('IMAGE_PLATFORM', `${src.name} is a ${os ?? '?'}/${arch ?? '?'} image; OVMS VMs run linux/amd64`, 'Pick the linux/amd64 variant of the image.', src.name)
  }
  return src
}

