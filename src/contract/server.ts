/**
 * The contract server: HTTP/1.1 over a UNIX socket created with mode 0600.
 * Every request body is validated against the OpenAPI document before it is
 * acted on, and every response body before it is sent. A bad request gets a
 * 4xx JSON error; nothing a client sends can stop the server.
 */
import {chmod, mkdir, rm, stat} from 'node:fs/promises'
import {type IncomingMessage, type Server, type ServerResponse, createServer} from 'node:http'
import {connect} from 'node:net'
import type {Duplex} from 'node:stream'
import {dirname, join} from 'node:path'

import {AbortError, ExitCode, isOvmError} from '../errors/index.js'
import {defaultStoreRoot} from '../oci/layout.js'
import type {Runtime} from './runtime.js'
import type {InjectRequest, SnapshotRequest, StartRequest, StopRequest} from './types.js'
import {type ContractSchema, contractProblems} from './validate.js'

/** Largest request body accepted. */
export const MAX_BODY_BYTES = 64 * 1024

/** `$OVM_SOCKET`, else `<store>/ovm.sock`. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.OVM_SOCKET ?? join(defaultStoreRoot(env), 'ovm.sock')
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly details?: {at: string; message: string}[],
  ) {
    super(message)
  }
}

function statusFor(err: unknown): number {
  if (err instanceof HttpError) return err.status
  if (!isOvmError(err)) return 500
  switch (err.exitCode) {
    case ExitCode.usage:
    case ExitCode.invalid:
      return 400
    case ExitCode.notFound:
      return 404
    case ExitCode.conflict:
      return 409
    case ExitCode.engine:
      return err.code === 'SNAPSHOT_INCOMPATIBLE' || err.code === 'ENGINE_UNAVAILABLE' || err.code === 'DEVICE_UNSUPPORTED' ? 409 : 500
    default:
      return 500
  }
}

function errorBody(err: unknown): {error: {code: string; message: string; hint?: string; details?: {at: string; message: string; hint?: string}[]}} {
  if (err instanceof HttpError) return {error: {code: err.code, message: err.message, ...(err.hint ? {hint: err.hint} : {}), ...(err.details?.length ? {details: err.details} : {})}}
  if (isOvmError(err)) return {error: {code: err.code, message: err.message, ...(err.hint ? {hint: err.hint} : {}), ...(err.details.length ? {details: err.details} : {})}}
  return {error: {code: 'INTERNAL', message: (err as Error)?.message ?? String(err), hint: 'This is a bug in ovm; the server keeps serving.'}}
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? '0')
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, 'BODY_TOO_LARGE', `request body of ${declared} bytes is over the ${MAX_BODY_BYTES}-byte limit`)
  const chunks: Buffer[] = []
  let n = 0
  for await (const c of req) {
    n += (c as Buffer).length
    if (n > MAX_BODY_BYTES) throw new HttpError(413, 'BODY_TOO_LARGE', `request body is over the ${MAX_BODY_BYTES}-byte limit`)
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks)
}

async function jsonBody<T>(req: IncomingMessage, schema: ContractSchema): Promise<T> {
  const bytes = await readBody(req)
  let value: unknown
  try {
    value = JSON.parse(bytes.toString('utf8'))
  } catch (err) {
    throw new HttpError(400, 'MALFORMED_JSON', `request body is not valid JSON: ${(err as Error).message}`, 'Send a JSON object (Content-Type: application/json).')
  }
  const problems = contractProblems(schema, value)
  if (problems.length > 0) {
    throw new HttpError(400, 'INVALID_REQUEST', `request body does not match ${schema} (${problems.length} problem${problems.length === 1 ? '' : 's'})`, 'See schemas/contract.openapi.json.', problems)
  }
  return value as T
}

export interface ContractServerOptions {
  runtime: Runtime
  socketPath: string
  /** Called with each NDJSON line the server logs (default: stderr). */
  log?: (line: string) => void
}

export class ContractServer {
  readonly socketPath: string
  private server?: Server
  private readonly runtime: Runtime
  private readonly logLine: (line: string) => void

  constructor(opts: ContractServerOptions) {
    this.runtime = opts.runtime
    this.socketPath = opts.socketPath
    this.logLine = opts.log ?? ((l) => process.stderr.write(`${l}\n`))
  }

  /** One NDJSON record on the daemon's log. */
  private log(fields: Record<string, unknown>): void {
    this.logLine(JSON.stringify({ts: new Date().toISOString(), ...fields}))
  }

  private send(res: ServerResponse, status: number, schema: ContractSchema, body: unknown): void {
    const problems = contractProblems(schema, body)
    if (problems.length > 0) {
      this.log({level: 'error', msg: `response does not match ${schema}`, problems})
      status = 500
      body = {error: {code: 'INVALID_RESPONSE', message: `the runtime produced a ${schema} that does not match the contract`, hint: 'This is a bug in ovm.', details: problems}}
    }
    const bytes = Buffer.from(JSON.stringify(body))
    res.writeHead(status, {'content-type': 'application/json', 'content-length': bytes.length})
    res.end(bytes)
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const path = url.pathname
    const method = req.method ?? 'GET'
    const need = (m: string): void => {
      if (method !== m) throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${method} ${path} is not allowed; use ${m}`)
    }
    const idParam = (raw: string): string => {
      const id = decodeURIComponent(raw)
      if (!/^[a-f0-9]{12}$/.test(id)) throw new HttpError(404, 'INSTANCE_NOT_FOUND', `no instance ${JSON.stringify(id)} (instance ids are 12 hex digits)`, 'List instances with `ovm ps`.')
      return id
    }
    if (path === '/start') {
      need('POST')
      const body = await jsonBody<StartRequest>(req, 'StartRequest')
      return this.send(res, 200, 'InstanceStatus', await this.runtime.start(body))
    }
    if (path === '/stop') {
      need('POST')
      const body = await jsonBody<StopRequest>(req, 'StopRequest')
      return this.send(res, 200, 'StopResponse', await this.runtime.stop(body.instance_id, body.grace_ms))
    }
    if (path === '/snapshot') {
      need('POST')
      const body = await jsonBody<SnapshotRequest>(req, 'SnapshotRequest')
      return this.send(res, 200, 'SnapshotResponse', await this.runtime.snapshot(body.instance_id, body.tag))
    }
    if (path === '/inject') {
      need('POST')
      const body = await jsonBody<InjectRequest>(req, 'InjectRequest')
      return this.send(res, 200, 'OkResponse', await this.runtime.inject(body))
    }
    if (path === '/instances') {
      need('GET')
      return this.send(res, 200, 'InstanceList', {instances: this.runtime.list()})
    }
    let m = /^\/status\/([^/]+)$/.exec(path)
    if (m) {
      need('GET')
      return this.send(res, 200, 'InstanceStatus', this.runtime.get(idParam(m[1] as string)).status())
    }
    m = /^\/logs\/([^/]+)$/.exec(path)
    if (m) {
      need('GET')
      const id = idParam(m[1] as string)
      this.runtime.get(id) // 404 before any streaming
      const f = url.searchParams.get('follow')
      const follow = !(f === '0' || f === 'false')
      res.writeHead(200, {'content-type': 'application/x-ndjson', 'cache-control': 'no-store'})
      const unsubscribe = this.runtime.follow(
        id,
        (r) => {
          res.write(`${JSON.stringify(r)}\n`)
        },
        () => res.end(),
        follow,
      )
      res.on('close', unsubscribe)
      return
    }
    throw new HttpError(404, 'NOT_FOUND', `no endpoint ${method} ${path}`, 'Endpoints: POST /start /stop /snapshot /inject, GET /status/{id} /logs/{id} /instances.')
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const t0 = Date.now()
    this.route(req, res)
      .catch((err: unknown) => {
        const status = statusFor(err)
        if (status >= 500) this.log({level: 'error', method: req.method, path: req.url, msg: (err as Error)?.stack ?? String(err)})
        if (res.headersSent) {
          res.end()
          return
        }
        // Drain what is left of the body so the connection stays usable.
        req.resume()
        this.send(res, status, 'Error', errorBody(err))
      })
      .finally(() => {
        this.log({level: 'info', method: req.method, path: req.url, status: res.statusCode, ms: Date.now() - t0})
      })
  }

  /**
   * EXTENSION: `GET /attach/{id}` with `Upgrade: ovm-console` turns the
   * connection into the raw console: guest output one way, keystrokes the
   * other, closed when the instance ends.
   */
  private attach(req: IncomingMessage, sock: Duplex): void {
    const refuse = (status: number, code: string, message: string): void => {
      const body = JSON.stringify({error: {code, message}})
      sock.end(`HTTP/1.1 ${status} ${status === 404 ? 'Not Found' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
    }
    const m = /^\/attach\/([a-f0-9]{12})$/.exec(new URL(req.url ?? '/', 'http://localhost').pathname)
    if (!m || req.headers.upgrade?.toLowerCase() !== 'ovm-console') return refuse(400, 'BAD_UPGRADE', 'only GET /attach/{id} with Upgrade: ovm-console upgrades')
    let inst
    try {
      inst = this.runtime.get(m[1] as string)
    } catch (err) {
      return refuse(404, 'INSTANCE_NOT_FOUND', (err as Error).message)
    }
    const vm = inst.vm
    if (!vm || inst.ended) return refuse(404, 'INSTANCE_NOT_RUNNING', `instance ${inst.id} is ${inst.state}`)
    sock.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: ovm-console\r\nconnection: Upgrade\r\n\r\n')
    this.log({level: 'info', msg: 'console attached', instance_id: inst.id})
    // Replay what the guest printed before we attached, then go live: same tick, so nothing falls between.
    if (inst.consoleTail.length > 0) sock.write(Buffer.concat(inst.consoleTail))
    const off = vm.on((e) => {
      if (e.type === 'output') sock.write(e.data)
      else if (e.type === 'exit') sock.end()
    })
    sock.on('data', (d: Buffer) => vm.write(d))
    sock.on('error', () => undefined)
    sock.on('close', () => {
      off()
      this.log({level: 'info', msg: 'console detached', instance_id: inst.id})
    })
  }

  /** Bind the socket (mode 0600, in a folder created 0700) and serve. Refuses when another server answers there. */
  async listen(): Promise<void> {
    if (Buffer.byteLength(this.socketPath) > 107) {
      throw new AbortError({
        code: 'SOCKET_PATH_TOO_LONG',
        message: `socket path is ${Buffer.byteLength(this.socketPath)} bytes, over the 107 a UNIX socket allows: ${this.socketPath}`,
        hint: 'Pass a shorter --socket, or set OVM_SOCKET.',
        exitCode: ExitCode.usage,
      })
    }
    await mkdir(dirname(this.socketPath), {recursive: true, mode: 0o700})
    if (await stat(this.socketPath).then(() => true, () => false)) {
      if (await socketAnswers(this.socketPath)) {
        throw new AbortError({
          code: 'DAEMON_RUNNING',
          message: `another ovm daemon is serving ${this.socketPath}`,
          hint: 'Use it, or stop it first.',
          exitCode: ExitCode.conflict,
        })
      }
      await rm(this.socketPath, {force: true}) // stale
    }
    const server = createServer({requestTimeout: 0, keepAliveTimeout: 5000}, (req, res) => this.handle(req, res))
    server.on('upgrade', (req: IncomingMessage, sock: Duplex) => this.attach(req, sock))
    server.on('clientError', (_err, sock) => {
      if (sock.writable) sock.end('HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":{"code":"BAD_HTTP","message":"malformed HTTP request"}}')
      else sock.destroy()
    })
    // The socket is created under umask 0177: it is 0600 from the first instant.
    const old = process.umask(0o177)
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(this.socketPath, () => {
          server.off('error', reject)
          resolve()
        })
      })
    } finally {
      process.umask(old)
    }
    await chmod(this.socketPath, 0o600)
    this.server = server
  }

  async close(): Promise<void> {
    const s = this.server
    this.server = undefined
    if (!s) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
    await rm(this.socketPath, {force: true})
  }
}

/** Whether something accepts connections on the socket. */
export function socketAnswers(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path)
    const t = setTimeout(() => {
      s.destroy()
      resolve(false)
    }, timeoutMs)
    s.once('connect', () => {
      clearTimeout(t)
      s.destroy()
      resolve(true)
    })
    s.once('error', () => {
      clearTimeout(t)
      resolve(false)
    })
  })
}
