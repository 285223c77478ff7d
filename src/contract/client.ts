/** A client of the contract over its UNIX socket (what `ovm run`, `ps`, `stop`, `logs` and `snapshot` use). */
import {type IncomingMessage, request} from 'node:http'
import type {Duplex} from 'node:stream'

import {AbortError, ExitCode, type ExitCodeValue, isErrno} from '../errors/index.js'
import type {InjectRequest, InstanceStatus, LogRecord, SnapshotResponse, StartRequest, StopResponse} from './types.js'

export class ContractClient {
  constructor(readonly socketPath: string) {}

  private notRunning(err: unknown): AbortError {
    return new AbortError({
      code: 'DAEMON_NOT_RUNNING',
      message: `no ovm daemon is running at ${this.socketPath}`,
      hint: 'Start one with `ovm serve` (or `ovm run` starts one itself).',
      exitCode: ExitCode.notFound,
      cause: err,
    })
  }

  private open(method: string, path: string, body?: unknown): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const bytes = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
      const req = request(
        {socketPath: this.socketPath, method, path, headers: bytes ? {'content-type': 'application/json', 'content-length': bytes.length} : {}},
        resolve,
      )
      req.on('error', (err) => reject(isErrno(err, 'ENOENT') || isErrno(err, 'ECONNREFUSED') ? this.notRunning(err) : err))
      req.end(bytes)
    })
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.open(method, path, body)
    const chunks: Buffer[] = []
    for await (const c of res) chunks.push(c as Buffer)
    const text = Buffer.concat(chunks).toString('utf8')
    let doc: unknown
    try {
      doc = JSON.parse(text)
    } catch {
      throw new AbortError({code: 'BAD_RESPONSE', message: `the daemon answered ${res.statusCode} with a body that is not JSON`, hint: 'Restart `ovm serve`.', exitCode: ExitCode.engine})
    }
    if ((res.statusCode ?? 500) >= 400) {
      const e = (doc as {error?: {code?: string; message?: string; hint?: string; details?: {at: string; message: string}[]}}).error ?? {}
      const exitCode: ExitCodeValue = res.statusCode === 404 ? ExitCode.notFound : res.statusCode === 409 ? ExitCode.conflict : res.statusCode === 400 || res.statusCode === 413 ? ExitCode.invalid : ExitCode.engine
      throw new AbortError({code: e.code ?? 'DAEMON_ERROR', message: e.message ?? `the daemon answered ${res.statusCode}`, hint: e.hint, details: e.details, exitCode})
    }
    return doc as T
  }

  start(req: StartRequest): Promise<InstanceStatus> {
    return this.call('POST', '/start', req)
  }

  stop(id: string, graceMs?: number): Promise<StopResponse> {
    return this.call('POST', '/stop', {instance_id: id, ...(graceMs === undefined ? {} : {grace_ms: graceMs})})
  }

  snapshot(id: string, tag?: string): Promise<SnapshotResponse> {
    return this.call('POST', '/snapshot', {instance_id: id, ...(tag ? {tag} : {})})
  }

  inject(req: InjectRequest): Promise<{status: 'ok'; bytes?: number}> {
    return this.call('POST', '/inject', req)
  }

  status(id: string): Promise<InstanceStatus> {
    return this.call('GET', `/status/${encodeURIComponent(id)}`)
  }

  async list(): Promise<InstanceStatus[]> {
    return (await this.call<{instances: InstanceStatus[]}>('GET', '/instances')).instances
  }

  /** Attach to an instance's console: a raw two-way socket (EXTENSION, `GET /attach/{id}`). */
  attach(id: string): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const req = request({socketPath: this.socketPath, method: 'GET', path: `/attach/${encodeURIComponent(id)}`, headers: {connection: 'Upgrade', upgrade: 'ovm-console'}})
      req.on('upgrade', (_res, sock: Duplex, head: Buffer) => {
        if (head.length > 0) sock.unshift(head)
        resolve(sock)
      })
      req.on('response', (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          let e: {code?: string; message?: string} = {}
          try {
            e = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as {error?: typeof e}).error ?? {}
          } catch {
            // not JSON
          }
          reject(new AbortError({code: e.code ?? 'ATTACH_FAILED', message: e.message ?? `cannot attach to ${id} (${res.statusCode})`, hint: 'Check the instance with `ovm ps`.', exitCode: res.statusCode === 404 ? ExitCode.notFound : ExitCode.engine}))
        })
      })
      req.on('error', (err) => reject(isErrno(err, 'ENOENT') || isErrno(err, 'ECONNREFUSED') ? this.notRunning(err) : err))
      req.end()
    })
  }

  /** Stream log records; resolves when the stream ends. */
  async logs(id: string, onRecord: (r: LogRecord) => void, opts: {follow?: boolean; signal?: AbortSignal} = {}): Promise<void> {
    const res = await this.open('GET', `/logs/${encodeURIComponent(id)}?follow=${opts.follow === false ? '0' : '1'}`)
    if ((res.statusCode ?? 500) >= 400) {
      const chunks: Buffer[] = []
      for await (const c of res) chunks.push(c as Buffer)
      const e = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as {error?: {code?: string; message?: string; hint?: string}}).error ?? {}
      throw new AbortError({code: e.code ?? 'DAEMON_ERROR', message: e.message ?? `the daemon answered ${res.statusCode}`, hint: e.hint, exitCode: res.statusCode === 404 ? ExitCode.notFound : ExitCode.engine})
    }
    opts.signal?.addEventListener('abort', () => res.destroy(), {once: true})
    let buf = ''
    try {
      for await (const c of res) {
        buf += (c as Buffer).toString('utf8')
        let nl: number
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl)
          buf = buf.slice(nl + 1)
          if (line.trim()) onRecord(JSON.parse(line) as LogRecord)
        }
      }
    } catch (err) {
      if (!opts.signal?.aborted) throw err
    }
  }
}
