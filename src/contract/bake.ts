import {connect, type Socket} from 'node:net'
import {setTimeout as sleep} from 'node:timers/promises'

import type {EngineChoice} from '../engine/select.js'
import {AbortError, ExitCode} from '../errors/index.js'
import type {LayoutStore} from '../oci/layout.js'
import {Runtime} from './runtime.js'
import type {LogRecord} from './types.js'

/** The line OVMS-Init prints just before it starts the workload (src/build/initramfs.ts). */
export const WORKLOAD_START_MARKER = '@@ovm-start'

export interface BakeOptions {
  store: LayoutStore
  /** The cold-boot artifact to run. */
  reference: string
  /** A regular expression matched against each console line; without it (and whenRun), the workload's start. */
  when?: string
  /** A command run in the VM (through the OVMS-Init agent) until it succeeds. */
  whenRun?: string
  timeoutMs: number
  /** Where the artifact with the RAM snapshot is tagged (its `subject` is `reference`). */
  tag: string
  /** The engine to boot it on (default auto: see selectEngine). */
  engine?: EngineChoice
  onLine?: (line: string) => void
}

export interface BakeResult {
  digest: string
  subject: string
  pausedMs: number
  bytes: number
  readyMs: number
  /** True when an earlier build baked it (the same artifact and SNAPSHOT) and nothing was booted. */
  cached?: boolean
}

/**
 * Boot an artifact, wait until it is ready (a console line matches `when`),
 * take a RAM snapshot, publish it under `tag`, and stop the VM.
 */
export async function bakeSnapshot(opts: BakeOptions): Promise<BakeResult> {
  const runtime = new Runtime({store: opts.store})
  const pattern = new RegExp(opts.when ?? `^${WORKLOAD_START_MARKER}$`)
  const t0 = Date.now()
  const st = await runtime.start({manifest: opts.reference, ...(opts.engine ? {overrides: {engine: opts.engine}} : {})})
  const inst = runtime.get(st.instance_id)
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        done()
        reject(
          new AbortError({
            code: 'SNAPSHOT_TIMEOUT',
            message: `no console line matched ${pattern} within ${opts.timeoutMs} ms, so no snapshot was taken`,
            hint: 'Check the pattern against what the VM prints (ovm run REF), or raise SNAPSHOT … TIMEOUT.',
            exitCode: ExitCode.buildFailed,
          }),
        )
      }, opts.timeoutMs)
      const follower = (r: LogRecord): void => {
        if (r.type === 'console') {
          opts.onLine?.(r.line)
          if (pattern.test(r.line)) {
            done()
            resolve()
          }
        } else if (r.type === 'exit') {
          done()
          reject(
            new AbortError({
              code: 'SNAPSHOT_VM_ENDED',
              message: `the VM ended (${r.status.reason}) before a console line matched ${pattern}`,
              hint: 'SNAPSHOT needs a workload that keeps running once ready (a service), not one that exits.',
              exitCode: ExitCode.buildFailed,
            }),
          )
        }
      }
      const done = (): void => {
        clearTimeout(timer)
        inst.followers.delete(follower)
      }
      // Lines printed before we started following count too.
      if (inst.log.some((r) => r.type === 'console' && pattern.test(r.line))) {
        done()
        resolve()
        return
      }
      inst.followers.add(follower)
    })
    if (opts.whenRun) await probeUntilReady(inst.spec?.agentSocket, opts.whenRun, t0 + opts.timeoutMs, () => inst.ended)
    const readyMs = Date.now() - t0
    const snap = await runtime.snapshot(st.instance_id, opts.tag)
    return {digest: snap.digest, subject: snap.subject ?? st.instance_id, pausedMs: snap.paused_ms ?? 0, bytes: snap.size ?? 0, readyMs}
  } finally {
    await runtime.stop(st.instance_id).catch(() => undefined)
  }
}

/** Ask the guest's agent to run `command` once a second until it exits 0. */
async function probeUntilReady(socketPath: string | undefined, command: string, deadline: number, ended: () => boolean): Promise<void> {
  if (!socketPath) throw new AbortError({code: 'NO_AGENT', message: 'this VM has no agent port for SNAPSHOT WHEN-RUN', hint: 'Use SNAPSHOT WHEN "regexp".', exitCode: ExitCode.engine})
  const sock = await new Promise<Socket>((resolve, reject) => {
    const s = connect(socketPath)
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
  sock.setEncoding('utf8')
  let buf = ''
  const answers: string[] = []
  sock.on('data', (d: string) => {
    buf += d
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      answers.push(buf.slice(0, i).replace(/\r$/, ''))
      buf = buf.slice(i + 1)
    }
  })
  const line = `PROBE ${Buffer.from(command).toString('base64')}\n`
  try {
    while (Date.now() < deadline) {
      if (ended()) {
        throw new AbortError({code: 'SNAPSHOT_VM_ENDED', message: `the VM ended before \`${command}\` succeeded`, hint: 'SNAPSHOT needs a workload that keeps running.', exitCode: ExitCode.buildFailed})
      }
      answers.length = 0
      sock.write(line)
      const t = Date.now()
      while (answers.length === 0 && Date.now() - t < 5000) await sleep(50)
      if (answers.some((a) => a === 'PROBED 0')) return
      await sleep(1000)
    }
  } finally {
    sock.destroy()
  }
  throw new AbortError({
    code: 'SNAPSHOT_TIMEOUT',
    message: `\`${command}\` did not succeed in the VM before the timeout, so no snapshot was taken`,
    hint: 'Check the command (it runs in the VM\'s root file system), or raise SNAPSHOT … TIMEOUT.',
    exitCode: ExitCode.buildFailed,
  })
}
