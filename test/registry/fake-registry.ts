import {createHash, randomUUID} from 'node:crypto'
import http, {type IncomingMessage, type ServerResponse} from 'node:http'
import type {AddressInfo} from 'node:net'

/**
 * An in-process OCI registry for fault injection only: blobs, uploads
 * (monolithic, chunked, mount), manifests, tags, an optional native
 * referrers API, optional Bearer auth, and a `fault` hook that can answer
 * any request with a status or cut its connection.
 */

export interface FakeRequest {
  method: string
  path: string
  query: URLSearchParams
  headers: http.IncomingHttpHeaders
}

export type Fault = {status: number; headers?: Record<string, string>; body?: string} | 'cut' | {cutAfter: number} | undefined

export interface FakeOptions {
  referrersApi?: boolean
  bearer?: {user: string; password: string}
  fault?: (req: FakeRequest, n: number) => Fault
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

export class FakeRegistry {
  readonly blobs = new Map<string, Buffer>()
  readonly manifests = new Map<string, {type: string; bytes: Buffer}>()
  readonly tags = new Map<string, string>()
  readonly uploads = new Map<string, Buffer>()
  readonly log: FakeRequest[] = []
  readonly tokenScopes: string[] = []
  private server?: http.Server
  host = ''

  constructor(private readonly opts: FakeOptions = {}) {}

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => void this.handle(req, res))
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r))
    this.host = `127.0.0.1:${(this.server.address() as AddressInfo).port}`
    return this
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections()
    await new Promise((r) => this.server?.close(r))
  }

  count(method: string, pathRe: RegExp): number {
    return this.log.filter((r) => r.method === method && pathRe.test(r.path)).length
  }

  private async body(req: IncomingMessage): Promise<Buffer> {
    const parts: Buffer[] = []
    for await (const c of req as AsyncIterable<Buffer>) parts.push(c)
    return Buffer.concat(parts)
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `http://${this.host}`)
    const r: FakeRequest = {method: req.method ?? 'GET', path: url.pathname, query: url.searchParams, headers: req.headers}
    if (url.pathname === '/token') return this.token(req, res, url)
    this.log.push(r)
    const fault = this.opts.fault?.(r, this.log.length)
    if (fault === 'cut') {
      req.socket.destroy()
      return
    }
    if (fault && 'status' in fault) {
      await this.body(req)
      res.writeHead(fault.status, fault.headers ?? {}).end(fault.body ?? '')
      return
    }
    if (this.opts.bearer && !this.authorised(req)) {
      const m = /^\/v2\/(.+?)\/(blobs|manifests|tags|referrers)\//.exec(url.pathname)
      const scope = m ? `repository:${m[1]}:${req.method === 'GET' || req.method === 'HEAD' ? 'pull' : 'pull,push'}` : ''
      await this.body(req)
      res
        .writeHead(401, {
          'www-authenticate': `Bearer realm="http://${this.host}/token",service="fake"${scope ? `,scope="${scope}"` : ''}`,
          'content-type': 'application/json',
        })
        .end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
      return
    }
    try {
      await this.route(req, res, url, fault && 'cutAfter' in fault ? fault.cutAfter : undefined)
    } catch (err) {
      if (!res.headersSent) res.writeHead(500).end(String(err))
    }
  }

  private authorised(req: IncomingMessage): boolean {
    return req.headers.authorization === 'Bearer fake-token'
  }

  private token(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const b = this.opts.bearer!
    const ok = req.headers.authorization === `Basic ${Buffer.from(`${b.user}:${b.password}`).toString('base64')}`
    this.tokenScopes.push(url.searchParams.getAll('scope').join(' '))
    if (!ok) {
      res.writeHead(401).end()
      return
    }
    res.writeHead(200, {'content-type': 'application/json'}).end(JSON.stringify({token: 'fake-token', expires_in: 300}))
  }

  private async route(req: IncomingMessage, res: ServerResponse, url: URL, cutAfter?: number): Promise<void> {
    const p = url.pathname
    if (p === '/v2/') return void res.writeHead(200, {'content-type': 'application/json'}).end('{}')
    let m: RegExpExecArray | null
    if ((m = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/.exec(p))) {
      const id = m[2] as string
      if (req.method === 'POST') {
        await this.body(req)
        const mount = url.searchParams.get('mount')
        if (mount && this.blobs.has(mount)) return void res.writeHead(201, {'docker-content-digest': mount, location: `/v2/${m[1]}/blobs/${mount}`}).end()
        const nid = randomUUID()
        this.uploads.set(nid, Buffer.alloc(0))
        return void res.writeHead(202, {location: `/v2/${m[1]}/blobs/uploads/${nid}`, range: '0-0', 'docker-upload-uuid': nid}).end()
      }
      const held = this.uploads.get(id)
      if (held === undefined) return void res.writeHead(404, {'content-type': 'application/json'}).end('{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}')
      const rangeHeader = (): string => `0-${Math.max(0, this.uploads.get(id)!.length - 1)}`
      if (req.method === 'GET') return void res.writeHead(204, {range: rangeHeader(), location: p}).end()
      if (req.method === 'PATCH' || req.method === 'PUT') {
        const cr = req.headers['content-range']
        if (req.method === 'PATCH' && cr) {
          const start = Number(/^(\d+)-/.exec(String(cr))?.[1])
          if (start !== held.length) {
            await this.body(req)
            return void res.writeHead(416, {range: rangeHeader(), location: p}).end()
          }
        }
        // Receive, keeping what arrived even if the connection is cut.
        const parts: Buffer[] = [held]
        let got = 0
        const done = await new Promise<boolean>((resolve) => {
          req.on('data', (c: Buffer) => {
            if (cutAfter !== undefined && got + c.length > cutAfter) {
              parts.push(c.subarray(0, cutAfter - got))
              got = cutAfter
              this.uploads.set(id, Buffer.concat(parts))
              req.socket.destroy()
              resolve(false)
              return
            }
            got += c.length
            parts.push(c)
          })
          req.on('end', () => resolve(true))
          req.on('error', () => resolve(false))
          req.on('close', () => resolve(false))
        })
        this.uploads.set(id, Buffer.concat(parts))
        if (!done) return
        if (req.method === 'PATCH') return void res.writeHead(202, {location: p, range: rangeHeader()}).end()
        const digest = url.searchParams.get('digest') ?? ''
        const bytes = this.uploads.get(id)!
        if (sha(bytes) !== digest) return void res.writeHead(400, {'content-type': 'application/json'}).end('{"errors":[{"code":"DIGEST_INVALID"}]}')
        this.blobs.set(digest, bytes)
        this.uploads.delete(id)
        return void res.writeHead(201, {'docker-content-digest': digest, location: `/v2/${m[1]}/blobs/${digest}`}).end()
      }
    }
    if ((m = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(p))) {
      const b = this.blobs.get(m[2] as string)
      if (!b) return void res.writeHead(404, {'content-type': 'application/json'}).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}')
      if (req.method === 'HEAD') return void res.writeHead(200, {'content-length': b.length, 'docker-content-digest': m[2]}).end()
      const range = /^bytes=(\d+)-$/.exec(String(req.headers.range ?? ''))
      const start = range ? Number(range[1]) : 0
      const slice = b.subarray(start)
      res.writeHead(range ? 206 : 200, {
        'content-length': slice.length,
        ...(range ? {'content-range': `bytes ${start}-${b.length - 1}/${b.length}`} : {}),
      })
      if (cutAfter !== undefined && cutAfter < slice.length) {
        res.write(slice.subarray(0, cutAfter), () => res.socket?.destroy())
        return
      }
      return void res.end(slice)
    }
    if ((m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(p))) {
      const ref = m[2] as string
      const digest = ref.startsWith('sha256:') ? ref : this.tags.get(`${m[1]}:${ref}`)
      if (req.method === 'PUT') {
        const bytes = await this.body(req)
        const d = sha(bytes)
        this.manifests.set(d, {type: String(req.headers['content-type']), bytes})
        if (!ref.startsWith('sha256:')) this.tags.set(`${m[1]}:${ref}`, d)
        const headers: Record<string, string> = {'docker-content-digest': d, location: `/v2/${m[1]}/manifests/${d}`}
        if (this.opts.referrersApi && (JSON.parse(bytes.toString('utf8')) as {subject?: unknown}).subject) headers['oci-subject'] = 'yes'
        return void res.writeHead(201, headers).end()
      }
      const man = digest ? this.manifests.get(digest) : undefined
      if (!man || !digest) return void res.writeHead(404, {'content-type': 'application/json'}).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
      if (req.method === 'DELETE') {
        this.manifests.delete(digest)
        return void res.writeHead(202).end()
      }
      res.writeHead(200, {'content-type': man.type, 'content-length': man.bytes.length, 'docker-content-digest': digest})
      return void res.end(req.method === 'HEAD' ? undefined : man.bytes)
    }
    if ((m = /^\/v2\/(.+)\/referrers\/(sha256:[a-f0-9]{64})$/.exec(p)) && this.opts.referrersApi) {
      const at = url.searchParams.get('artifactType')
      const manifests = []
      for (const [d, man] of this.manifests) {
        const doc = JSON.parse(man.bytes.toString('utf8')) as {subject?: {digest: string}; artifactType?: string; config?: {mediaType: string}; annotations?: Record<string, string>}
        if (doc.subject?.digest !== m[2]) continue
        const t = doc.artifactType ?? doc.config?.mediaType
        if (at && t !== at) continue
        manifests.push({mediaType: man.type, digest: d, size: man.bytes.length, artifactType: t, ...(doc.annotations ? {annotations: doc.annotations} : {})})
      }
      res.writeHead(200, {'content-type': 'application/vnd.oci.image.index.v1+json', ...(at ? {'oci-filters-applied': 'artifactType'} : {})})
      return void res.end(JSON.stringify({schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests}))
    }
    res.writeHead(404, {'content-type': 'text/plain'}).end('404 page not found')
  }
}
