import {Readable} from 'node:stream'

import {AbortError, ExitCode, OvmError} from '../../errors/index.js'
import {type Descriptor, MediaType, isIndexMediaType, isManifestMediaType} from '../descriptor.js'
import {HashingStream, isDigest, mismatch, sha256} from '../digest.js'
import {type Reference, parseReference} from '../reference.js'
import type {Content, TaggedDescriptor, Target} from '../storage.js'
import {AuthClient, repositoryScope} from './auth.js'
import {CredentialStore, type CredentialFunc} from './credentials.js'
import {indexSubjectIfNeeded} from './referrers.js'
import {type HttpResponse, type Transport, defaultTransport, discard, header, readBody} from './http.js'
import {RetryBudget, type RetryPolicy, defaultRetryPolicy, isRetryableError, isRetryableStatus, parseRetryAfter} from './retry.js'

/**
 * A client for one registry over the OCI Distribution API v2, and for its
 * repositories as `Target`s: the same interfaces the local layout store
 * implements, so `copy()` moves artifacts between any two.
 *
 * Uploads: HEAD first (skip what the registry has); blobs up to
 * `monolithicMax` as POST + PUT; larger ones as chunked PATCHes
 * (`OCI-Chunk-Min-Length` honoured), each chunk kept in memory until the
 * registry has it so that after a dropped connection the client asks the
 * session for its `Range` and sends the rest. Downloads stream, verified by
 * digest and size, and resume with `Range` requests after a cut.
 */

/** Manifest media types the client sends to /manifests/ (everything else is a blob). */
export const MANIFEST_MEDIA_TYPES = [
  MediaType.imageManifest,
  MediaType.imageIndex,
  MediaType.dockerManifest,
  MediaType.dockerManifestList,
] as const

export function isManifestDescriptor(desc: Pick<Descriptor, 'mediaType'>): boolean {
  return isManifestMediaType(desc.mediaType) || isIndexMediaType(desc.mediaType)
}

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024

export interface RegistryOptions {
  /** Use http:// (otherwise only for localhost, 127.0.0.1 and ::1). */
  plainHttp?: boolean
  transport?: Transport
  credentials?: CredentialFunc
  retry?: RetryPolicy
  /** Largest blob uploaded in one PUT; larger ones go in chunks. */
  monolithicMax?: number
  /** Chunk size for PATCH uploads (raised to the registry's OCI-Chunk-Min-Length). */
  chunkSize?: number
  /** Share one auth client (token cache) between registries objects. */
  auth?: AuthClient
}

export interface RegistryStats {
  requests: number
  retries: number
  resumedUploads: number
  /** Uploads begun again from byte 0 after the registry lost the session. */
  restartedUploads: number
  resumedDownloads: number
  mounts: number
  byMethod: Record<string, number>
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '')
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h)
}

type Action = 'pull' | 'push' | 'delete'

interface SendOptions {
  method: string
  url: URL
  headers?: Record<string, string>
  body?: Uint8Array
  scopes: string[]
  /** What is being done, for error messages. */
  what: string
  ref?: string
  /** Follow redirects (GET/HEAD of blobs). */
  redirects?: boolean
  /** Return retryable statuses instead of retrying (the caller resumes). */
  noRetry?: boolean
}

export class Registry {
  readonly host: string
  readonly base: URL
  readonly auth: AuthClient
  readonly transport: Transport
  readonly retry: RetryPolicy
  readonly monolithicMax: number
  readonly chunkSize: number
  readonly stats: RegistryStats = {requests: 0, retries: 0, resumedUploads: 0, restartedUploads: 0, resumedDownloads: 0, mounts: 0, byMethod: {}}

  constructor(host: string, opts: RegistryOptions = {}) {
    this.host = host
    const plain = opts.plainHttp || isLoopbackHost(host)
    this.base = new URL(`${plain ? 'http' : 'https'}://${host === 'docker.io' ? 'registry-1.docker.io' : host}`)
    this.transport = opts.transport ?? defaultTransport
    const creds = opts.credentials ?? ((h: string) => new CredentialStore().get(h))
    this.auth = opts.auth ?? new AuthClient(this.transport, creds)
    this.retry = opts.retry ?? defaultRetryPolicy
    this.monolithicMax = opts.monolithicMax ?? 32 * 1024 * 1024
    this.chunkSize = opts.chunkSize ?? 32 * 1024 * 1024
  }

  repository(name: string): RemoteRepository {
    return new RemoteRepository(this, name)
  }

  url(path: string): URL {
    return new URL(path, this.base)
  }

  /** `GET /v2/`: checks that the registry speaks the API and that the credentials work. */
  async ping(): Promise<void> {
    const res = await this.send({method: 'GET', url: this.url('/v2/'), scopes: [], what: 'check the registry API'})
    if (res.status !== 200) throw await this.errorFrom(res, 'check the registry API', this.host)
    discard(res)
  }

  /** One request with auth (a 401 is answered once), redirects and retries. */
  async send(o: SendOptions): Promise<HttpResponse> {
    const budget = new RetryBudget(this.retry)
    let url = o.url
    let authRetried = false
    let redirects = 0
    let challenged: string | undefined
    for (;;) {
      if (!budget.next()) throw this.unreachable(o, new Error('retry budget spent'))
      const sameHost = url.host === this.base.host
      const headers: Record<string, string> = {...o.headers}
      if (sameHost) {
        const auth = challenged ?? (await this.auth.header(this.host, o.scopes))
        if (auth) headers.authorization = auth
      }
      let res: HttpResponse
      try {
        this.stats.requests++
        this.stats.byMethod[o.method] = (this.stats.byMethod[o.method] ?? 0) + 1
        res = await this.transport.request({method: o.method, url, headers, body: o.body})
      } catch (err) {
        if (isRetryableError(err) && !budget.exhausted && !o.noRetry) {
          this.stats.retries++
          await budget.wait()
          continue
        }
        throw this.unreachable(o, err)
      }
      if (res.status === 401 && sameHost && !authRetried) {
        discard(res)
        authRetried = true
        budget.attempts--
        challenged = await this.auth.onChallenge(this.host, header(res, 'www-authenticate'), o.scopes)
        continue
      }
      if (o.redirects && [301, 302, 303, 307, 308].includes(res.status) && header(res, 'location') && redirects < 5) {
        discard(res)
        url = new URL(header(res, 'location') as string, url)
        redirects++
        budget.attempts--
        continue
      }
      if (isRetryableStatus(res.status) && !o.noRetry && !budget.exhausted) {
        const after = parseRetryAfter(header(res, 'retry-after'))
        discard(res)
        this.stats.retries++
        await budget.wait(after)
        continue
      }
      return res
    }
  }

  unreachable(o: Pick<SendOptions, 'what' | 'ref' | 'url'>, err: unknown): OvmError {
    if (err instanceof OvmError) return err
    const e = err as NodeJS.ErrnoException
    return new AbortError({
      code: 'REGISTRY_UNREACHABLE',
      message: `cannot ${o.what} at ${this.host}: ${e.code ? `${e.code} ` : ''}${e.message}`,
      hint:
        this.base.protocol === 'https:' && /EPROTO|wrong version|SSL/i.test(`${e.code} ${e.message}`)
          ? `The registry may speak plain HTTP: add --plain-http if you trust the network.`
          : `Check that ${this.base.origin} is up and reachable; ovm retried with back-off before giving up.`,
      exitCode: ExitCode.network,
      ref: o.ref ?? this.host,
      cause: err,
    })
  }

  /** Turn a registry's error answer into an AbortError naming what failed. */
  async errorFrom(res: HttpResponse, what: string, ref: string): Promise<AbortError> {
    let detail = ''
    let code = ''
    try {
      const text = (await readBody(res, 64 * 1024)).toString('utf8')
      try {
        const doc = JSON.parse(text) as {errors?: {code?: string; message?: string; detail?: unknown}[]}
        const first = doc.errors?.[0]
        if (first) {
          code = first.code ?? ''
          detail = `${first.code ?? ''}${first.message ? `: ${first.message}` : ''}`
        }
      } catch {
        detail = text.trim().slice(0, 200)
      }
    } catch {
      // body unreadable: the status says enough
    }
    const msg = `cannot ${what} at ${this.host}: HTTP ${res.status}${detail ? ` (${detail})` : ''}`
    if (res.status === 401 || res.status === 403) {
      return new AbortError({
        code: 'REGISTRY_AUTH',
        message: msg,
        hint: `Run \`ovm login ${this.host}\` with an account that may ${what.startsWith('push') || what.startsWith('upload') ? 'push to' : 'read'} this repository.`,
        exitCode: ExitCode.auth,
        ref,
      })
    }
    if (res.status === 404) {
      return new AbortError({
        code: code === 'NAME_UNKNOWN' ? 'REPOSITORY_NOT_FOUND' : 'REF_NOT_FOUND',
        message: msg,
        hint: 'Check the repository, tag and digest; `ovm discover` and `skopeo list-tags` show what the registry holds.',
        exitCode: ExitCode.notFound,
        ref,
      })
    }
    if (code === 'DIGEST_INVALID' || code === 'SIZE_INVALID') {
      return new AbortError({
        code: 'DIGEST_MISMATCH',
        message: msg,
        hint: 'The uploaded bytes do not match their descriptor: run `ovm store verify` and push again.',
        exitCode: ExitCode.integrity,
        ref,
      })
    }
    if (res.status >= 400 && res.status < 500 && res.status !== 429 && res.status !== 408) {
      return new AbortError({
        code: 'REGISTRY_REFUSED',
        message: msg,
        hint: res.status === 405 ? 'The registry does not allow this operation (deletes may be disabled).' : 'The registry refused the request; the message above says why.',
        exitCode: res.status === 400 ? ExitCode.invalid : ExitCode.network,
        ref,
      })
    }
    return new AbortError({
      code: 'REGISTRY_ERROR',
      message: msg,
      hint: `The registry failed; ovm retried with back-off. Try again later.`,
      exitCode: ExitCode.network,
      ref,
    })
  }
}

const ACCEPT_MANIFESTS = MANIFEST_MEDIA_TYPES.join(', ')

export interface UploadSession {
  location: URL
  minChunk: number
}

/** One repository of a registry, as a Target. */
export class RemoteRepository implements Target {
  /** Manifest bytes this client pushed or fetched, by digest (so tag() does not fetch them back). */
  private readonly manifestCache = new Map<string, Buffer>()
  /** Whether the registry answers the referrers API; undefined until probed. */
  referrersApi?: boolean

  constructor(
    readonly registry: Registry,
    readonly name: string,
  ) {}

  get host(): string {
    return this.registry.host
  }

  toString(): string {
    return `${this.registry.host}/${this.name}`
  }

  scopes(...actions: Action[]): string[] {
    return [repositoryScope(this.name, actions.length === 0 ? ['pull'] : actions)]
  }

  private url(kind: 'blobs' | 'manifests' | 'tags' | 'referrers', rest: string): URL {
    return this.registry.url(`/v2/${this.name}/${kind}/${rest}`)
  }

  private ref(x: string): string {
    return isDigest(x) ? `${this}@${x}` : `${this}:${x}`
  }

  // ---- existence ----------------------------------------------------------

  async exists(desc: Descriptor): Promise<boolean> {
    const kind = isManifestDescriptor(desc) ? 'manifests' : 'blobs'
    const res = await this.registry.send({
      method: 'HEAD',
      url: this.url(kind, desc.digest),
      headers: kind === 'manifests' ? {accept: ACCEPT_MANIFESTS} : {},
      scopes: this.scopes('pull'),
      what: `check ${kind === 'manifests' ? 'manifest' : 'blob'} ${desc.digest}`,
      ref: this.ref(desc.digest),
      redirects: true,
    })
    discard(res)
    if (res.status === 200) return true
    if (res.status === 404) return false
    throw await this.registry.errorFrom(res, `check ${desc.digest}`, this.ref(desc.digest))
  }

  // ---- fetch ----------------------------------------------------------------

  async fetch(desc: Descriptor): Promise<Readable> {
    if (isManifestDescriptor(desc)) return Readable.from([await this.fetchManifestBytes(desc)])
    const check = new HashingStream({digest: desc.digest, size: desc.size}, `blob ${desc.digest} from ${this}`)
    const src = Readable.from(this.blobChunks(desc))
    src.on('error', (err) => check.destroy(err))
    return src.pipe(check)
  }

  /** The blob's bytes as they arrive, resuming with Range after a cut (not verified: fetch() adds that). */
  async *blobChunks(desc: Descriptor): AsyncGenerator<Buffer> {
    let offset = 0
    const budget = new RetryBudget(this.registry.retry)
    const what = `download blob ${desc.digest}`
    while (offset < desc.size || (desc.size === 0 && offset === 0 && budget.attempts === 0)) {
      budget.next()
      const headers: Record<string, string> = {}
      if (offset > 0) headers.range = `bytes=${offset}-`
      const res = await this.registry.send({
        method: 'GET',
        url: this.url('blobs', desc.digest),
        headers,
        scopes: this.scopes('pull'),
        what,
        ref: this.ref(desc.digest),
        redirects: true,
      })
      if (res.status !== 200 && res.status !== 206) throw await this.registry.errorFrom(res, what, this.ref(desc.digest))
      let skip = 0
      if (offset > 0) {
        if (res.status === 206) {
          const cr = /bytes (\d+)-/.exec(header(res, 'content-range') ?? '')
          if (cr && Number(cr[1]) !== offset) skip = -1
        } else {
          skip = offset // the registry ignored Range: throw away what we have
        }
        this.registry.stats.resumedDownloads++
      }
      if (skip < 0) {
        discard(res)
        throw new AbortError({
          code: 'REGISTRY_ERROR',
          message: `cannot ${what} at ${this.host}: the registry answered a range request with the wrong range (${header(res, 'content-range')})`,
          hint: 'Pull again; if it persists the registry or a proxy mangles range requests.',
          exitCode: ExitCode.network,
          ref: this.ref(desc.digest),
        })
      }
      const startOffset = offset
      try {
        for await (const c of res.body as AsyncIterable<Buffer>) {
          let chunk = c
          if (skip > 0) {
            if (chunk.length <= skip) {
              skip -= chunk.length
              continue
            }
            chunk = chunk.subarray(skip)
            skip = 0
          }
          offset += chunk.length
          yield chunk
        }
        if (offset < desc.size) throw Object.assign(new Error(`connection closed after ${offset} of ${desc.size} bytes`), {code: 'PREMATURE_END'})
        return
      } catch (err) {
        res.body.destroy()
        if (!isRetryableError(err) || budget.exhausted) throw this.registry.unreachable({what, ref: this.ref(desc.digest), url: res.url}, err)
        this.registry.stats.retries++
        // Progress resets the back-off: a cut after real progress retries at once.
        if (offset === startOffset) await budget.wait()
      }
    }
  }

  /** A manifest's bytes, verified against its digest (and size when known). */
  async fetchManifestBytes(desc: Pick<Descriptor, 'digest' | 'mediaType'> & {size?: number}): Promise<Buffer> {
    const cached = this.manifestCache.get(desc.digest)
    if (cached) return cached
    const what = `fetch manifest ${desc.digest}`
    const res = await this.registry.send({
      method: 'GET',
      url: this.url('manifests', desc.digest),
      headers: {accept: desc.mediaType && !MANIFEST_MEDIA_TYPES.includes(desc.mediaType as never) ? `${desc.mediaType}, ${ACCEPT_MANIFESTS}` : ACCEPT_MANIFESTS},
      scopes: this.scopes('pull'),
      what,
      ref: this.ref(desc.digest),
    })
    if (res.status !== 200) throw await this.registry.errorFrom(res, what, this.ref(desc.digest))
    const bytes = await this.readManifestBody(res, what, this.ref(desc.digest))
    if (desc.size !== undefined && bytes.length !== desc.size) throw mismatch(`manifest ${desc.digest} from ${this}`, `size ${bytes.length}, expected ${desc.size}`)
    const got = sha256(bytes)
    if (got !== desc.digest) throw mismatch(`manifest ${desc.digest} from ${this}`, `digest ${got}`)
    this.manifestCache.set(desc.digest, bytes)
    return bytes
  }

  private async readManifestBody(res: HttpResponse, what: string, ref: string): Promise<Buffer> {
    try {
      return await readBody(res, MAX_MANIFEST_BYTES)
    } catch (err) {
      if ((err as {code?: string}).code === 'ETOOBIG') {
        throw new AbortError({
          code: 'MANIFEST_TOO_LARGE',
          message: `cannot ${what} at ${this.host}: the manifest is larger than ${MAX_MANIFEST_BYTES} bytes`,
          hint: 'ovm reads manifests of up to 4 MiB, the floor the distribution spec sets.',
          exitCode: ExitCode.invalid,
          ref,
        })
      }
      throw this.registry.unreachable({what, ref, url: res.url}, err)
    }
  }

  // ---- resolve, tags ----------------------------------------------------------

  /** A tag, a digest, or a full reference whose tag or digest is used. */
  private referencePart(reference: string): string {
    if (isDigest(reference)) return reference
    if (/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(reference)) return reference
    const r = parseReference(reference)
    return (r.digest ?? r.tag) as string
  }

  async resolve(reference: string): Promise<Descriptor> {
    const part = this.referencePart(reference)
    const what = `resolve ${this.ref(part)}`
    const res = await this.registry.send({
      method: 'HEAD',
      url: this.url('manifests', part),
      headers: {accept: ACCEPT_MANIFESTS},
      scopes: this.scopes('pull'),
      what,
      ref: this.ref(part),
    })
    discard(res)
    if (res.status !== 200) {
      if (res.status === 404) {
        throw new AbortError({
          code: 'REF_NOT_FOUND',
          message: `no manifest ${this.ref(part)} in the registry`,
          hint: 'Check the repository and tag; `skopeo list-tags docker://…` or `ovm discover` show what the registry has.',
          exitCode: ExitCode.notFound,
          ref: this.ref(part),
        })
      }
      throw await this.registry.errorFrom(res, what, this.ref(part))
    }
    const mediaType = (header(res, 'content-type') ?? '').split(';')[0]?.trim() ?? ''
    const digest = header(res, 'docker-content-digest')
    const size = Number(header(res, 'content-length'))
    if (digest && isDigest(digest) && Number.isFinite(size) && MANIFEST_MEDIA_TYPES.includes(mediaType as never) && (!isDigest(part) || part === digest)) {
      return {mediaType, digest, size}
    }
    // No usable HEAD answer: GET and hash.
    const get = await this.registry.send({method: 'GET', url: this.url('manifests', part), headers: {accept: ACCEPT_MANIFESTS}, scopes: this.scopes('pull'), what, ref: this.ref(part)})
    if (get.status !== 200) throw await this.registry.errorFrom(get, what, this.ref(part))
    const bytes = await this.readManifestBody(get, what, this.ref(part))
    const d = sha256(bytes)
    if (isDigest(part) && d !== part) throw mismatch(`manifest ${part} from ${this}`, `digest ${d}`)
    let mt = (header(get, 'content-type') ?? '').split(';')[0]?.trim() ?? ''
    if (!MANIFEST_MEDIA_TYPES.includes(mt as never)) {
      try {
        const doc = JSON.parse(bytes.toString('utf8')) as {mediaType?: string; manifests?: unknown}
        mt = doc.mediaType ?? (Array.isArray(doc.manifests) ? MediaType.imageIndex : MediaType.imageManifest)
      } catch {
        mt = MediaType.imageManifest
      }
    }
    this.manifestCache.set(d, bytes)
    return {mediaType: mt, digest: d, size: bytes.length}
  }

  /** Tag names, following `Link` pagination. */
  async tags(): Promise<string[]> {
    const out: string[] = []
    let url: URL | undefined = this.registry.url(`/v2/${this.name}/tags/list?n=1000`)
    const what = `list tags of ${this}`
    for (let page = 0; url && page < 1000; page++) {
      const res = await this.registry.send({method: 'GET', url, scopes: this.scopes('pull'), what, ref: String(this)})
      if (res.status === 404) {
        discard(res)
        return out
      }
      if (res.status !== 200) throw await this.registry.errorFrom(res, what, String(this))
      const doc = JSON.parse((await readBody(res, 16 * 1024 * 1024)).toString('utf8')) as {tags?: string[] | null}
      out.push(...(doc.tags ?? []))
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(header(res, 'link') ?? '')
      url = link ? new URL(link[1] as string, url) : undefined
    }
    return out
  }

  async list(): Promise<TaggedDescriptor[]> {
    const out: TaggedDescriptor[] = []
    for (const t of await this.tags()) out.push({reference: `${this}:${t}`, descriptor: await this.resolve(t)})
    return out
  }

  // ---- push -------------------------------------------------------------------

  async push(expected: Descriptor, content: Content): Promise<void> {
    if (isManifestDescriptor(expected)) {
      const bytes = content instanceof Uint8Array ? Buffer.from(content) : await collect(content, expected.size, MAX_MANIFEST_BYTES)
      const {subjectIndexed} = await this.pushManifest(expected, bytes)
      await indexSubjectIfNeeded(this, expected, bytes, subjectIndexed)
      return
    }
    if (await this.exists(expected)) {
      if (!(content instanceof Uint8Array)) content.resume()
      return
    }
    await this.upload(expected, content)
  }

  /**
   * PUT a manifest by digest (or under `reference`), with its media type.
   * Returns whether the registry said it indexed the subject (`OCI-Subject`).
   */
  async pushManifest(desc: Descriptor, bytes: Buffer, reference: string = desc.digest): Promise<{subjectIndexed: boolean}> {
    const got = sha256(bytes)
    if (got !== desc.digest || bytes.length !== desc.size) throw mismatch(`manifest ${desc.digest}`, `digest ${got}, size ${bytes.length}`)
    if (bytes.length > MAX_MANIFEST_BYTES) {
      throw new AbortError({
        code: 'MANIFEST_TOO_LARGE',
        message: `manifest ${desc.digest} is ${bytes.length} bytes; registries need only accept ${MAX_MANIFEST_BYTES}`,
        hint: 'Split the artifact or move data from annotations into layers.',
        exitCode: ExitCode.invalid,
        ref: this.ref(reference),
      })
    }
    const what = `push manifest ${this.ref(reference)}`
    const res = await this.registry.send({
      method: 'PUT',
      url: this.url('manifests', reference),
      headers: {'content-type': desc.mediaType},
      body: bytes,
      scopes: this.scopes('pull', 'push'),
      what,
      ref: this.ref(reference),
    })
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) throw await this.registry.errorFrom(res, what, this.ref(reference))
    discard(res)
    const dcd = header(res, 'docker-content-digest')
    if (dcd && isDigest(dcd) && dcd !== desc.digest) {
      throw mismatch(`manifest ${this.ref(reference)}`, `the registry stored it as ${dcd}, expected ${desc.digest}`)
    }
    this.manifestCache.set(desc.digest, bytes)
    return {subjectIndexed: header(res, 'oci-subject') !== undefined}
  }

  async tag(desc: Descriptor, reference: string): Promise<void> {
    const part = this.referencePart(reference)
    const bytes = await this.fetchManifestBytes(desc)
    await this.pushManifest(desc, bytes, part)
  }

  async delete(desc: Descriptor): Promise<void> {
    const kind = isManifestDescriptor(desc) ? 'manifests' : 'blobs'
    const what = `delete ${kind === 'manifests' ? 'manifest' : 'blob'} ${desc.digest}`
    const res = await this.registry.send({method: 'DELETE', url: this.url(kind, desc.digest), scopes: this.scopes('delete'), what, ref: this.ref(desc.digest)})
    if (res.status !== 202 && res.status !== 200 && res.status !== 204) throw await this.registry.errorFrom(res, what, this.ref(desc.digest))
    discard(res)
    this.manifestCache.delete(desc.digest)
  }

  // ---- blob uploads -------------------------------------------------------------

  /** `POST /blobs/uploads/`: a session to upload into. */
  async startUpload(): Promise<UploadSession> {
    const what = `start an upload to ${this}`
    const res = await this.registry.send({method: 'POST', url: this.url('blobs', 'uploads/'), headers: {'content-length': '0'}, scopes: this.scopes('pull', 'push'), what, ref: String(this)})
    if (res.status !== 202) throw await this.registry.errorFrom(res, what, String(this))
    discard(res)
    return this.session(res, what)
  }

  private session(res: HttpResponse, what: string): UploadSession {
    const loc = header(res, 'location')
    if (!loc) {
      throw new AbortError({
        code: 'REGISTRY_ERROR',
        message: `cannot ${what} at ${this.host}: the registry started an upload without a Location`,
        hint: 'The registry does not follow the distribution spec; report it to its operator.',
        exitCode: ExitCode.network,
        ref: String(this),
      })
    }
    const min = Number(header(res, 'oci-chunk-min-length') ?? 0)
    return {location: new URL(loc, res.url), minChunk: Number.isFinite(min) && min > 0 ? min : 0}
  }

  /**
   * Cross-repository mount: `POST ?mount=<digest>&from=<repo>`. True when
   * mounted; false when the registry declined (the session it opened is
   * abandoned; the caller uploads instead).
   */
  async mount(desc: Descriptor, from: string): Promise<boolean> {
    const url = this.url('blobs', 'uploads/')
    url.searchParams.set('mount', desc.digest)
    url.searchParams.set('from', from)
    const what = `mount blob ${desc.digest} from ${from}`
    const res = await this.registry.send({
      method: 'POST',
      url,
      headers: {'content-length': '0'},
      scopes: [...this.scopes('pull', 'push'), repositoryScope(from, ['pull'])],
      what,
      ref: this.ref(desc.digest),
    })
    discard(res)
    if (res.status === 201) {
      const d = header(res, 'docker-content-digest')
      if (d && d !== desc.digest) throw mismatch(`mounted blob ${desc.digest}`, `the registry answered ${d}`)
      this.registry.stats.mounts++
      return true
    }
    if (res.status === 202) return false
    if (res.status === 401 || res.status === 403 || res.status === 404) return false
    throw await this.registry.errorFrom(res, what, this.ref(desc.digest))
  }

  /**
   * Upload a blob without checking first whether the registry has it.
   * `reopen`, when given, re-reads the content from the start: used when the
   * registry drops an upload session (distribution 2.x cancels a session
   * whose PATCH was cut after some bytes were stored).
   */
  async upload(desc: Descriptor, content: Content, reopen?: () => Readable): Promise<void> {
    if (desc.size <= this.registry.monolithicMax) {
      const bytes = content instanceof Uint8Array ? Buffer.from(content) : await collect(content, desc.size, desc.size)
      await this.uploadMonolithic(desc, bytes)
      return
    }
    let src = content instanceof Uint8Array ? Readable.from([Buffer.from(content)]) : content
    const again = content instanceof Uint8Array ? () => Readable.from([Buffer.from(content)]) : reopen
    for (let restarts = 0; ; restarts++) {
      try {
        await this.uploadChunked(desc, src)
        return
      } catch (err) {
        if (!(err instanceof OvmError && err.code === 'UPLOAD_LOST') || !again || restarts >= 3) throw err
        src.destroy()
        src = again()
        this.registry.stats.restartedUploads++
      }
    }
  }

  private withDigest(location: URL, digest: string): URL {
    const u = new URL(location)
    u.searchParams.set('digest', digest)
    return u
  }

  /** POST then PUT with the whole body; retried as a pair. */
  private async uploadMonolithic(desc: Descriptor, bytes: Buffer): Promise<void> {
    const what = `upload blob ${desc.digest}`
    const budget = new RetryBudget(this.registry.retry)
    for (;;) {
      budget.next()
      const s = await this.startUpload()
      try {
        const res = await this.registry.send({
          method: 'PUT',
          url: this.withDigest(s.location, desc.digest),
          headers: {'content-type': 'application/octet-stream'},
          body: bytes,
          scopes: this.scopes('pull', 'push'),
          what,
          ref: this.ref(desc.digest),
          noRetry: true,
        })
        if (res.status === 201 || res.status === 204) {
          discard(res)
          return
        }
        if (!isRetryableStatus(res.status) || budget.exhausted) throw await this.registry.errorFrom(res, what, this.ref(desc.digest))
        const after = parseRetryAfter(header(res, 'retry-after'))
        discard(res)
        this.registry.stats.retries++
        await budget.wait(after)
      } catch (err) {
        if (err instanceof OvmError && !isRetryableError(err.cause)) throw err
        if (budget.exhausted) throw err
        this.registry.stats.retries++
        await budget.wait()
      }
    }
  }

  /** Where the registry's upload session stands: the number of bytes it holds. */
  async uploadOffset(location: URL): Promise<{offset: number; location: URL}> {
    const what = `query an upload session at ${this}`
    const res = await this.registry.send({method: 'GET', url: location, scopes: this.scopes('pull', 'push'), what, ref: String(this)})
    if (res.status === 404 || res.status === 400) {
      const e = await this.registry.errorFrom(res, what, String(this))
      throw new AbortError({
        code: 'UPLOAD_LOST',
        message: `the registry dropped the upload session at ${this}: ${e.message}`,
        hint: 'Push again: blobs the registry already has are skipped.',
        exitCode: ExitCode.network,
        ref: String(this),
      })
    }
    if (res.status !== 204 && res.status !== 202 && res.status !== 200) throw await this.registry.errorFrom(res, what, String(this))
    discard(res)
    const range = /^(?:bytes=)?0-(\d+)$/.exec((header(res, 'range') ?? '').trim())
    const end = range ? Number(range[1]) : -1
    const loc = header(res, 'location')
    // distribution reports an empty session as 0-0: treat it as nothing held.
    return {offset: range && end > 0 ? end + 1 : 0, location: loc ? new URL(loc, location) : location}
  }

  private async uploadChunked(desc: Descriptor, src: Readable): Promise<void> {
    const what = `upload blob ${desc.digest}`
    const ref = this.ref(desc.digest)
    const s = await this.startUpload()
    let location = s.location
    const chunkSize = Math.max(this.registry.chunkSize, s.minChunk)
    let offset = 0
    for await (const chunk of chunks(src, chunkSize)) {
      const budget = new RetryBudget(this.registry.retry)
      let sent = 0
      while (sent < chunk.length) {
        if (!budget.next()) throw this.registry.unreachable({what, ref, url: location}, new Error(`upload stalled at byte ${offset + sent}`))
        let failure: unknown
        try {
          const body = chunk.subarray(sent)
          const res = await this.registry.send({
            method: 'PATCH',
            url: location,
            headers: {'content-type': 'application/octet-stream', 'content-range': `${offset + sent}-${offset + chunk.length - 1}`},
            body,
            scopes: this.scopes('pull', 'push'),
            what,
            ref,
            noRetry: true,
          })
          if (res.status === 202 || res.status === 204) {
            discard(res)
            const loc = header(res, 'location')
            if (loc) location = new URL(loc, location)
            sent = chunk.length
            break
          }
          if (res.status !== 416 && !isRetryableStatus(res.status)) throw await this.registry.errorFrom(res, what, ref)
          failure = new Error(`HTTP ${res.status}`)
          const after = parseRetryAfter(header(res, 'retry-after'))
          discard(res)
          if (after !== undefined) await budget.wait(after)
        } catch (err) {
          if (err instanceof OvmError && !isRetryableError(err.cause)) throw err
          failure = err
        }
        // Ask the session how much it holds, and continue from there.
        this.registry.stats.retries++
        this.registry.stats.resumedUploads++
        const st = await this.uploadOffset(location).catch(async (err: unknown) => {
          await budget.wait()
          throw err
        })
        location = st.location
        if (st.offset < offset || st.offset > offset + chunk.length) {
          throw new AbortError({
            code: 'UPLOAD_LOST',
            message: `cannot ${what} at ${this.host}: after ${String((failure as Error)?.message ?? failure)} the upload session holds ${st.offset} bytes, outside the chunk ${offset}-${offset + chunk.length - 1} ovm still has`,
            hint: 'Push again: blobs the registry already has are skipped.',
            exitCode: ExitCode.network,
            ref,
          })
        }
        const progressed = st.offset - offset > sent
        sent = st.offset - offset
        if (!progressed) await budget.wait()
      }
      offset += chunk.length
    }
    if (offset !== desc.size) throw mismatch(`blob ${desc.digest}`, `size ${offset}, expected ${desc.size}`)
    // Close the session with the digest.
    const budget = new RetryBudget(this.registry.retry)
    for (;;) {
      budget.next()
      try {
        const res = await this.registry.send({
          method: 'PUT',
          url: this.withDigest(location, desc.digest),
          headers: {'content-type': 'application/octet-stream', 'content-length': '0'},
          scopes: this.scopes('pull', 'push'),
          what,
          ref,
        })
        if (res.status === 201 || res.status === 204) {
          discard(res)
          return
        }
        throw await this.registry.errorFrom(res, what, ref)
      } catch (err) {
        // A cut during the final PUT: the blob may be committed anyway.
        if (err instanceof OvmError && err.exitCode === ExitCode.network && (await this.exists(desc).catch(() => false))) return
        if (budget.exhausted || !(err instanceof OvmError && err.exitCode === ExitCode.network)) throw err
        await budget.wait()
      }
    }
  }
}

/** Read a stream fully, refusing more than `max` bytes. */
export async function collect(src: Readable, sizeHint: number, max: number): Promise<Buffer> {
  const parts: Buffer[] = []
  let n = 0
  for await (const c of src as AsyncIterable<Buffer>) {
    n += c.length
    if (n > max) {
      src.destroy()
      throw mismatch('content', `more than ${max} bytes`)
    }
    parts.push(c)
  }
  return Buffer.concat(parts, sizeHint === n ? n : undefined)
}

/** Re-chunk a stream into buffers of exactly `size` bytes (the last may be shorter). */
export async function* chunks(src: Readable, size: number): AsyncGenerator<Buffer> {
  let buf = Buffer.allocUnsafe(size)
  let fill = 0
  for await (const c of src as AsyncIterable<Buffer>) {
    let pos = 0
    while (pos < c.length) {
      const n = Math.min(size - fill, c.length - pos)
      c.copy(buf, fill, pos, pos + n)
      fill += n
      pos += n
      if (fill === size) {
        yield buf
        buf = Buffer.allocUnsafe(size)
        fill = 0
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill)
}

// ---- opening references -----------------------------------------------------------

export interface RemoteTarget {
  repository: RemoteRepository
  reference: Reference
  /** The tag or digest within the repository. */
  part: string
}

const registries = new Map<string, Registry>()

/** The Registry for a host, shared within the process (one token cache, one stats). */
export function registryFor(host: string, opts: RegistryOptions = {}): Registry {
  const key = `${host} ${opts.plainHttp ? 'http' : ''}`
  let r = registries.get(key)
  if (!r || Object.keys(opts).some((k) => k !== 'plainHttp')) {
    r = new Registry(host, opts)
    if (Object.keys(opts).every((k) => k === 'plainHttp')) registries.set(key, r)
  }
  return r
}

/** Open a remote reference (`host/repo:tag`, `host/repo@sha256:…`). */
export function openRemote(reference: string, opts: RegistryOptions = {}): RemoteTarget {
  const r = parseReference(reference)
  if (!r.registry) {
    throw new AbortError({
      code: 'BAD_REFERENCE',
      message: `${reference} names no registry`,
      hint: 'Write the registry first, e.g. registry.example.com/example/busybox:1.0 or localhost:5000/busybox:1.0.',
      exitCode: ExitCode.usage,
      ref: reference,
    })
  }
  const registry = registryFor(r.registry, opts)
  return {repository: registry.repository(r.repository), reference: r, part: (r.digest ?? r.tag) as string}
}
