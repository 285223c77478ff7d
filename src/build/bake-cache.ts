/**
 * SNAPSHOT results in the build index: an artifact baked once with a given
 * SNAPSHOT (condition, timeout, engine choice) is not booted and baked again
 * while the store still holds the result whole. A rebuild with nothing
 * changed yields the same cold artifact (execute.ts reuses it), so it finds
 * its snapshot here and boots no VM at all.
 */
import {sha256} from '../oci/digest.js'
import type {Descriptor} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import type {BakeResult} from '../contract/bake.js'
import type {EngineChoice} from '../engine/select.js'
import {storedArtifact} from './execute.js'
import {readCacheIndex, updateCacheIndex} from './prepare.js'

export interface BakeSpec {
  subject: string
  when?: string
  whenRun?: string
  timeoutMs: number
  engine: EngineChoice
}

interface BakeEntry {
  layer: string
  createdAt: string
  bake: Omit<BakeResult, 'digest' | 'cached'>
}

const keyOf = (spec: BakeSpec): string => `bake:${sha256(Buffer.from(JSON.stringify([spec.subject, spec.when ?? null, spec.whenRun ?? null, spec.timeoutMs, spec.engine])))}`

/** The snapshot artifact an earlier build baked from `spec`, when the store still holds it whole. */
export async function earlierBake(store: LayoutStore, spec: BakeSpec): Promise<(BakeResult & {descriptor: Descriptor}) | undefined> {
  const entry = (await readCacheIndex(store))[keyOf(spec)] as BakeEntry | undefined
  if (!entry?.bake || entry.bake.subject !== spec.subject) return undefined
  const a = await storedArtifact(store, entry.layer)
  if (!a?.ovms.ramSnapshot) return undefined
  return {...entry.bake, digest: a.descriptor.digest, descriptor: a.descriptor}
}

export async function rememberBake(store: LayoutStore, spec: BakeSpec, baked: BakeResult): Promise<void> {
  const entry: BakeEntry = {
    layer: baked.digest,
    createdAt: new Date().toISOString(),
    bake: {subject: baked.subject, pausedMs: baked.pausedMs, bytes: baked.bytes, readyMs: baked.readyMs},
  }
  await updateCacheIndex(store, (c) => {
    c[keyOf(spec)] = entry
  })
}
