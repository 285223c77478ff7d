/** What both engines say the same way: their errors, and whether a snapshot fits the machine asked for. */
import {readFile, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {type OverlayOptions, createOverlay} from '../disk/unpack.js'
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

/**
 * addOverlay's first half, the same for both engines: check the disk is a
 * writable one, then make `path`, a fresh qcow2 backed by the disk's current
 * top (`tops[disk]`). The engine then switches the VM onto it.
 */
export async function makeNextOverlay(spec: BootSpec, tops: readonly string[], disk: number, path: string, opts: OverlayOptions = {}): Promise<void> {
  const d = spec.disks[disk]
  if (!d || d.readOnly) throw engineError('NO_SUCH_DISK', `disk ${disk} does not exist or is read-only`, 'Name a writable disk of the VM (0 = the first).')
  await rm(path, {force: true})
  // Made here rather than by the VMM (QEMU would print "Formatting ..." on the console's stdout).
  await createOverlay({path: tops[disk] as string, format: 'qcow2'}, path, opts)
}

/**
 * A snapshot folder's snapshot.json, parsed, for either engine's reader
 * (which then checks its own fields): missing or not JSON is SNAPSHOT_INVALID.
 */
export async function readSnapshotJson(dir: string): Promise<unknown> {
  let text: string
  try {
    text = await readFile(join(dir, 'snapshot.json'), 'utf8')
  } catch (err) {
    throw engineError('SNAPSHOT_INVALID', `${dir} is not a snapshot: snapshot.json is missing`, 'Take the snapshot again with `ovm snapshot`.', err)
  }
  try {
    return JSON.parse(text) as unknown
  } catch (err) {
    throw engineError('SNAPSHOT_INVALID', `${dir}/snapshot.json is not JSON: ${(err as Error).message}`, 'Take the snapshot again with `ovm snapshot`.', err)
  }
}
