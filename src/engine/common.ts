/** What both engines say the same way: their errors, and whether a snapshot fits the machine asked for. */
import {AbortError, ExitCode} from '../errors/index.js'
import type {BootSpec, Engine, SnapshotSignature} from './types.js'

export function engineError(code: string, message: string, hint: string, cause?: unknown): AbortError {
  return new AbortError({code, message, hint, exitCode: ExitCode.engine, cause})
}

/** Refuse a restore this engine cannot honour (its own check), or onto a machine of another size than the snapshot's. */
export async function assertRestorable(engine: Engine, spec: BootSpec, snapshotDir: string, sig: SnapshotSignature): Promise<void> {
  const why = await engine.checkSnapshot(sig)
  if (why) throw engineError('SNAPSHOT_INCOMPATIBLE', `cannot restore snapshot ${snapshotDir}: ${why}`, 'Boot the artifact it was taken from instead (cold boot).')
  if (sig.memoryMiB !== spec.memoryMiB || sig.cpus !== spec.cpus) {
    throw engineError(
      'SNAPSHOT_INCOMPATIBLE',
      `cannot restore snapshot ${snapshotDir} with ${spec.memoryMiB} MiB and ${spec.cpus} vCPUs: it was taken with ${sig.memoryMiB} MiB and ${sig.cpus} vCPUs`,
      'Leave out --memory and --cpus when running a snapshot.',
    )
  }
}
