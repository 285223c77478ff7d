/**
 * A build's events as NDJSON under `<store>/builds/`, so another process
 * (`ovm tui`) can follow a build in progress by tailing the file.
 *
 * One file per build, `<UTC start, ms>-<pid>.ndjson`: a `start` record (pid,
 * Ovmfile, tags, the planned steps), one record per build event, and an
 * `end` record. A file without `end` whose pid is gone is an interrupted
 * build. Writing never fails a build: on the first write error the log
 * goes quiet. Only the newest KEEP_BUILD_LOGS files are kept.
 */
import {closeSync, openSync, writeSync} from 'node:fs'
import {mkdir, open, readdir, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {isErrno} from '../errors/index.js'
import type {BuildEvent} from './execute.js'
import type {PlannedStep} from './plan.js'

export const KEEP_BUILD_LOGS = 20
/** Output records kept per build when reading (older lines are dropped). */
export const MAX_OUTPUT_RECORDS = 200

export type BuildLogRecord =
  | {t: number; type: 'start'; pid: number; ovmfile: string; tags: string[]; steps: {index: number; line: number; text: string; cached: boolean}[]}
  | {t: number; type: 'step-start' | 'step-cached'; step: number}
  | {t: number; type: 'step-output'; step: number; line: string}
  | {t: number; type: 'step-done'; step: number; ms: number; layer?: {digest: string; size: number}}
  | {t: number; type: 'phase'; phase: string}
  | {t: number; type: 'boot'; ms: number}
  | {t: number; type: 'console'; line: string}
  | {t: number; type: 'end'; ok: boolean; digest?: string; error?: string}

export function buildLogDir(storeRoot: string): string {
  return join(storeRoot, 'builds')
}

/** The record an event becomes (steps by index only; the start record holds their text). */
export function recordOf(e: BuildEvent, t = Date.now()): BuildLogRecord {
  switch (e.type) {
    case 'step-start':
    case 'step-cached':
      return {t, type: e.type, step: e.step.index}
    case 'step-output':
      return {t, type: e.type, step: e.step.index, line: e.line}
    case 'step-done':
      return {t, type: e.type, step: e.step.index, ms: e.ms, ...(e.layer ? {layer: {digest: e.layer.digest, size: e.layer.size}} : {})}
    case 'phase':
      return {t, type: e.type, phase: e.phase}
    case 'boot':
      return {t, type: e.type, ms: e.ms}
    case 'console':
      return {t, type: e.type, line: e.line}
  }
}

export class BuildEventLog {
  private fd: number | undefined

  private constructor(
    readonly path: string,
    fd: number,
  ) {
    this.fd = fd
  }

  /** Start a log for a build of `ovmfile` (pruning the oldest logs beyond KEEP_BUILD_LOGS). */
  static async open(storeRoot: string, header: {ovmfile: string; tags: string[]; steps: PlannedStep[]}): Promise<BuildEventLog | undefined> {
    const dir = buildLogDir(storeRoot)
    try {
      await mkdir(dir, {recursive: true, mode: 0o700})
      await pruneBuildLogs(dir, KEEP_BUILD_LOGS - 1)
      const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('.', '')
      let path = join(dir, `${stamp}-${process.pid}.ndjson`)
      let fd: number | undefined
      for (let n = 1; fd === undefined; n++) {
        try {
          fd = openSync(path, 'wx', 0o600)
        } catch (err) {
          if (!isErrno(err, 'EEXIST') || n > 100) throw err
          path = join(dir, `${stamp}-${process.pid}-${n}.ndjson`)
        }
      }
      const log = new BuildEventLog(path, fd)
      log.write({
        t: Date.now(),
        type: 'start',
        pid: process.pid,
        ovmfile: header.ovmfile,
        tags: header.tags,
        steps: header.steps.map((s) => ({index: s.index, line: s.line, text: s.text, cached: s.cached})),
      })
      return log
    } catch {
      return undefined // a build without a log is still a build
    }
  }

  event(e: BuildEvent): void {
    this.write(recordOf(e))
  }

  end(result: {ok: true; digest: string} | {ok: false; error: string}): void {
    this.write({t: Date.now(), type: 'end', ...result})
    if (this.fd !== undefined) closeSync(this.fd)
    this.fd = undefined
  }

  private write(r: BuildLogRecord): void {
    if (this.fd === undefined) return
    try {
      writeSync(this.fd, `${JSON.stringify(r)}\n`)
    } catch {
      try {
        closeSync(this.fd)
      } catch {
        // already unusable
      }
      this.fd = undefined
    }
  }
}

async function pruneBuildLogs(dir: string, keep: number): Promise<void> {
  const names = (await readdir(dir)).filter((n) => n.endsWith('.ndjson')).sort()
  for (const n of names.slice(0, Math.max(0, names.length - keep))) await rm(join(dir, n), {force: true})
}

export interface BuildLogSnapshot {
  id: string
  records: BuildLogRecord[]
  /** Whether the process that writes the log is still alive. */
  writerAlive: boolean
}

/** Whether a process with this pid exists (EPERM: it exists, as another user). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return isErrno(err, 'EPERM')
  }
}

interface Tailed {
  offset: number
  partial: string
  records: BuildLogRecord[]
  outputs: number
}

/**
 * Follows the build logs of a store: each `read()` returns the newest logs,
 * reading only what was appended since the last call. Output records beyond
 * MAX_OUTPUT_RECORDS per build are dropped, oldest first; lines that are not
 * JSON (a torn write) are skipped.
 */
export class BuildLogTail {
  private readonly files = new Map<string, Tailed>()

  constructor(
    readonly storeRoot: string,
    readonly limit = 10,
  ) {}

  async read(): Promise<BuildLogSnapshot[]> {
    const dir = buildLogDir(this.storeRoot)
    let names: string[]
    try {
      names = (await readdir(dir)).filter((n) => n.endsWith('.ndjson')).sort().reverse().slice(0, this.limit)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return []
      throw err
    }
    for (const known of this.files.keys()) if (!names.includes(known)) this.files.delete(known)
    const out: BuildLogSnapshot[] = []
    for (const name of names) {
      const f = this.files.get(name) ?? {offset: 0, partial: '', records: [], outputs: 0}
      this.files.set(name, f)
      await this.readMore(join(dir, name), f)
      const start = f.records[0]
      if (!start || start.type !== 'start') continue
      const ended = f.records.some((r) => r.type === 'end')
      out.push({id: name.replace(/\.ndjson$/, ''), records: f.records, writerAlive: !ended && pidAlive(start.pid)})
    }
    return out
  }

  private async readMore(path: string, f: Tailed): Promise<void> {
    let fh
    try {
      fh = await open(path, 'r')
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return
      throw err
    }
    try {
      const {size} = await fh.stat()
      if (size < f.offset) Object.assign(f, {offset: 0, partial: '', records: [], outputs: 0}) // replaced
      if (size === f.offset) return
      const buf = Buffer.alloc(size - f.offset)
      const {bytesRead} = await fh.read(buf, 0, buf.length, f.offset)
      f.offset += bytesRead
      const lines = (f.partial + buf.subarray(0, bytesRead).toString('utf8')).split('\n')
      f.partial = lines.pop() ?? ''
      for (const line of lines) {
        if (!line.trim()) continue
        let r: BuildLogRecord
        try {
          r = JSON.parse(line) as BuildLogRecord
        } catch {
          continue
        }
        f.records.push(r)
        if (r.type === 'step-output' || r.type === 'console') f.outputs++
      }
      if (f.outputs > MAX_OUTPUT_RECORDS) {
        let drop = f.outputs - MAX_OUTPUT_RECORDS
        f.records = f.records.filter((r) => !(drop > 0 && (r.type === 'step-output' || r.type === 'console') && drop--))
        f.outputs = MAX_OUTPUT_RECORDS
      }
    } finally {
      await fh.close()
    }
  }
}
