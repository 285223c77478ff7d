/**
 * Which engine runs a VM: `kvm` (ours) wherever it can run guests here,
 * else `qemu`. An explicit choice is honoured or refused with the reason.
 */
import {AbortError, ExitCode} from '../errors/index.js'
import {readSnapshotJson} from './common.js'
import {KvmEngine, readKvmSnapshotFile} from './kvm/engine.js'
import {QemuEngine, readSnapshotFile} from './qemu/engine.js'
import type {Engine, EngineName, SnapshotSignature} from './types.js'

export type EngineChoice = EngineName | 'auto'

/** One instance of each engine. */
export function defaultEngines(): Record<EngineName, Engine> {
  return {kvm: new KvmEngine(), qemu: new QemuEngine()}
}

export interface Selected {
  engine: Engine
  /** Why the preferred engine was passed over (auto only). */
  fallbackReason?: string
}

/**
 * `auto`: kvm when `kvm.unavailable()` says nothing, else qemu (with the
 * reason kvm was skipped). A named engine that cannot run is an error
 * naming why.
 */
export async function selectEngine(choice: EngineChoice = 'auto', engines: Partial<Record<EngineName, Engine>> = defaultEngines()): Promise<Selected> {
  const order: EngineName[] = choice === 'auto' ? ['kvm', 'qemu'] : [choice]
  const reasons: string[] = []
  for (const name of order) {
    const e = engines[name]
    if (!e) {
      reasons.push(`${name}: not in this runtime`)
      continue
    }
    const why = await e.unavailable()
    if (!why) return {engine: e, ...(reasons.length > 0 ? {fallbackReason: reasons.join('; ')} : {})}
    reasons.push(`${name}: ${why}`)
  }
  throw new AbortError({
    code: 'ENGINE_UNAVAILABLE',
    message: choice === 'auto' ? `no engine can run here (${reasons.join('; ')})` : `the ${choice} engine cannot run here: ${reasons.join('; ')}`,
    hint: choice === 'kvm' ? 'Use --engine qemu, or run where /dev/kvm works (see rfc/runtime.md).' : 'Install qemu-system-x86 (scripts/install-deps.sh), or run where /dev/kvm works.',
    exitCode: ExitCode.engine,
  })
}

/**
 * The signature of a snapshot folder made by either engine: snapshot.json
 * names its maker, whose own reader then checks the rest of the file.
 */
export async function readSnapshotSignature(dir: string): Promise<SnapshotSignature> {
  const maker = ((await readSnapshotJson(dir)) as {signature?: {engine?: unknown}} | null)?.signature?.engine
  return (maker === 'kvm' ? await readKvmSnapshotFile(dir) : await readSnapshotFile(dir)).signature
}
