import http, {type IncomingHttpHeaders, type IncomingMessage} from 'node:http'
import https from 'node:https'
import {Readable} from 'node:stream'

/**
 * The smallest HTTP layer the registry client needs, on node:http with
 * keep-alive agents: streamed request bodies with an exact Content-Length,
 * streamed responses, no redirect following (the client decides, because
 * credentials must not follow a redirect to another host).
 */

export interface HttpRequest {
  method: string
  url: URL
  headers?: Record<string, string>
  /** Bytes, or a stream factory (called once per attempt). */
  body?: Uint8Array | (() => Readable)
  /** Abort the request after this many ms without progress. */
  idleTimeoutMs?: number
  signal?: AbortSignal
}

export interface HttpResponse {
  status: number
  headers: IncomingHttpHeaders
  body: IncomingMessage
  url: URL
}

const agentOptions = {keepAlive: true, maxSockets: 16, keepAliveMsecs: 1000}
const httpAgent = new http.Agent(agentOptions)
const httpsAgent = new https.Agent(agentOptions)

export interface Transport {
  request(req: HttpRequest): Promise<HttpResponse>
}

export interface NodeTransportOptions {
  /** Extra CA certificates (PEM) for TLS. */
  ca?: string | Buffer
  /** Skip TLS verification (tests only). */
  insecureSkipVerify?: boolean
}

export class NodeTransport implements Transport {
  private readonly httpsAgent: https.Agent

  constructor(opts: NodeTransportOptions = {}) {
    this.httpsAgent =
      opts.ca || opts.insecureSkipVerify ? new https.Agent({...agentOptions, ca: opts.ca, rejectUnauthorized: !opts.insecureSkipVerify}) : httpsAgent
  }

  request(req: HttpRequest): Promise<HttpResponse> {
    const isHttps = req.url.protocol === 'https:'
    const mod = isHttps ? https : http
    const headers: Record<string, string> = {'user-agent': 'ovm/0.1', ...req.headers}
    if (req.body instanceof Uint8Array) headers['content-length'] = String(req.body.length)
    return new Promise<HttpResponse>((resolve, reject) => {
      const r = mod.request(
        req.url,
        {method: req.method, headers, agent: isHttps ? this.httpsAgent : httpAgent, signal: req.signal},
        (res) => resolve({status: res.statusCode ?? 0, headers: res.headers, body: res, url: req.url}),
      )
      const idle = req.idleTimeoutMs ?? 60_000
      r.setTimeout(idle, () => r.destroy(Object.assign(new Error(`no progress for ${idle} ms`), {code: 'ETIMEDOUT'})))
      r.on('error', reject)
      if (req.body === undefined) {
        r.end()
      } else if (req.body instanceof Uint8Array) {
        r.end(req.body)
      } else {
        const src = req.body()
        src.on('error', (err) => r.destroy(err))
        src.pipe(r)
      }
    })
  }
}

export const defaultTransport = new NodeTransport()

/** Read a response body into memory, refusing more than `max` bytes. */
export async function readBody(res: HttpResponse, max = 4 * 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const c of res.body as AsyncIterable<Buffer>) {
    n += c.length
    if (n > max) {
      res.body.destroy()
      throw Object.assign(new Error(`response body larger than ${max} bytes`), {code: 'ETOOBIG'})
    }
    chunks.push(c)
  }
  return Buffer.concat(chunks)
}

/** Throw away a response body so the connection can be reused. */
export function discard(res: HttpResponse): void {
  res.body.resume()
}

export function header(res: HttpResponse, name: string): string | undefined {
  const v = res.headers[name.toLowerCase()]
  return Array.isArray(v) ? v[0] : v
}

export function fromBytes(bytes: Uint8Array): () => Readable {
  return () => Readable.from([Buffer.from(bytes)])
}
