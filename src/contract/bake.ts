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
  /** A regular expression matched against each console line; without it, the workload's start. */
  when?: string
  timeoutMs: number
  /** Where the artifact with the RAM snapshot is tagged (its `subject` is `reference`). */
  tag: string
  onLine?: (line: string) => void
}

export interface BakeResult {
  digest: string
  subject: string
  pausedMs: number
  bytes: number
  readyMs: number
}

/**
 * Boot an artifact, wait until it is ready (a console line matches `when`),
 * take a RAM snapshot, publish it under `tag`, and stop the VM.
 */
export async function bakeSnapshot(opts: BakeOptions): Promise<BakeResult> {
  const runtime = new Runtime({store: opts.store})
  const pattern = new RegExp(opts.when ?? `^${WORKLOAD_START_MARKER}$`)
  const t0 = Date.now()
  const st = await runtime.start({manifest: opts.reference})
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
    const readyMs = Date.now() - t0
    const snap = await runtime.snapshot(st.instance_id, opts.tag)
    return {digest: snap.digest, subject: snap.subject ?? st.instance_id, pausedMs: snap.paused_ms ?? 0, bytes: snap.size ?? 0, readyMs}
  } finally {
    await runtime.stop(st.instance_id).catch(() => undefined)
  }
}
