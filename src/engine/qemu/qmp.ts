/**
 * A small QMP client: JSON lines over a UNIX socket. One command in flight
 * at a time (QMP answers in order); asynchronous events go to listeners.
 */
import {EventEmitter} from 'node:events'
import {type Socket, createConnection} from 'node:net'
import {setTimeout as sleep} from 'node:timers/promises'

export interface QmpEvent {
  event: string
  data?: Record<string, unknown>
  timestamp?: {seconds: number; microseconds: number}
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${desc}`)
  }
}

interface Pending {
  command: string
  resolve: (v: unknown) => void
  reject: (e: Error) => void
}

export class QmpClient extends EventEmitter {
  private buf = ''
  private queue: Pending[] = []
  private closed = false
  version?: {qemu: {major: number; minor: number; micro: number}}

  private constructor(private readonly sock: Socket) {
    super()
    sock.setEncoding('utf8')
    sock.on('data', (d: string) => this.onData(d))
    sock.on('close', () => this.onClose(new Error('QMP connection closed')))
    sock.on('error', (err) => this.onClose(err))
  }

  /** Connect (retrying until `timeoutMs` while QEMU creates the socket) and leave capabilities negotiation done. */
  static async connect(path: string, opts: {timeoutMs?: number; alive?: () => boolean} = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000)
    let lastErr: unknown
    for (;;) {
      let c: QmpClient | undefined
      if (opts.alive && !opts.alive()) throw new Error(`the VMM exited before its QMP socket ${path} answered`)
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path)
          s.once('connect', () => {
            s.off('error', reject)
            resolve(s)
          })
          s.once('error', reject)
        })
        c = new QmpClient(sock)
        const greeting = (await c.nextMessage()) as {QMP?: {version: QmpClient['version']}}
        c.version = greeting.QMP?.version
        await c.execute('qmp_capabilities')
        return c
      } catch (err) {
        c?.close()
        lastErr = err
        if (opts.alive && !opts.alive()) throw new Error(`the VMM exited before its QMP socket ${path} answered`)
        if (Date.now() > deadline) throw new Error(`cannot connect to QMP at ${path}: ${(lastErr as Error).message}`)
        await sleep(20)
      }
    }
  }

  private greetingWaiter?: {resolve: (v: unknown) => void; reject: (e: Error) => void}

  /** The greeting; rejects when the connection closes first or nothing comes within 5 s. */
  private nextMessage(): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new Error('QMP connection closed before the greeting'))
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined
        this.sock.destroy()
        reject(new Error('no QMP greeting within 5 s'))
      }, 5000)
      this.greetingWaiter = {
        resolve: (v) => {
          clearTimeout(timer)
          resolve(v)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      }
    })
  }

  private onData(d: string): void {
    this.buf += d
    let nl: number
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim()
      this.buf = this.buf.slice(nl + 1)
      if (!line) continue
      let msg: Record<string, unknown>
      try {
        msg = JSON.parse(line)
      } catch {
        continue
      }
      if (this.greetingWaiter && 'QMP' in msg) {
        const w = this.greetingWaiter
        this.greetingWaiter = undefined
        w.resolve(msg)
      } else if ('event' in msg) {
        this.emit('event', msg as unknown as QmpEvent)
      } else if ('return' in msg || 'error' in msg) {
        const p = this.queue.shift()
        if (!p) continue
        if ('error' in msg) {
          const e = msg.error as {class: string; desc: string}
          p.reject(new QmpError(p.command, e.class, e.desc))
        } else {
          p.resolve(msg.return)
        }
      }
    }
  }

  private onClose(err: Error): void {
    if (this.closed) return
    this.closed = true
    const w = this.greetingWaiter
    this.greetingWaiter = undefined
    w?.reject(new Error(`QMP connection closed before the greeting: ${err.message}`))
    for (const p of this.queue.splice(0)) p.reject(new Error(`QMP ${p.command}: ${err.message}`))
    this.emit('close')
  }

  get isClosed(): boolean {
    return this.closed
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection closed`))
    return new Promise<T>((resolve, reject) => {
      this.queue.push({command, resolve: resolve as (v: unknown) => void, reject})
      this.sock.write(`${JSON.stringify(args ? {execute: command, arguments: args} : {execute: command})}\n`)
    })
  }

  /** Wait for an event matching `pred`, or reject after `timeoutMs` or when the connection closes. */
  waitEvent(pred: (e: QmpEvent) => boolean, timeoutMs: number): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (!pred(e)) return
        done()
        resolve(e)
      }
      const onClose = (): void => {
        done()
        reject(new Error('QMP connection closed while waiting for an event'))
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`no matching QMP event within ${timeoutMs} ms`))
      }, timeoutMs)
      const done = (): void => {
        clearTimeout(timer)
        this.off('event', onEvent)
        this.off('close', onClose)
      }
      this.on('event', onEvent)
      this.on('close', onClose)
    })
  }

  close(): void {
    this.sock.destroy()
  }
}
