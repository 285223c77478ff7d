import {createHash} from 'node:crypto'

import type {Ovmfile, Step} from '../ovmfile/types.js'
import type {SourceDigest} from './context.js'

/** What the cache knows about a step's key: the diff layer it produced, or that it changed nothing. */
export interface CacheEntry {
  /** Digest of the qcow2 diff layer blob; absent when the step wrote nothing. */
  layer?: string
  createdAt: string
}

export type CacheIndex = Readonly<Record<string, CacheEntry>>

export interface PlannedStep {
  index: number
  line: number
  kind: Step['kind']
  text: string
  /** Key over the parent key, the step, its env/args/workdir and input digests. */
  cacheKey: string
  parentKey: string
  cached: boolean
  layer?: string
  inputs: {source: string; digest: string}[]
}

export interface BuildPlan {
  version: 1
  source: string
  base: {description: string; key: string}
  kernel?: {ref: string; modules?: string}
  steps: PlannedStep[]
  /** Steps that must run (the first miss and everything after it). */
  toRun: number
  /** True when every step is cached: the build boots no VM (SNAPSHOT aside). */
  fullyCached: boolean
  snapshot?: Ovmfile['snapshot']
}

/** The same variables in any order give the same key: `ENV A=1` then `ENV B=2` is `ENV B=2 A=1`. */
function sorted(vars: Record<string, string>): [string, string][] {
  return Object.entries(vars).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

function key(parts: unknown): string {
  return `sha256:${createHash('sha256').update(JSON.stringify(parts)).digest('hex')}`
}

/** What a step does, normalised: formatting of the Ovmfile line does not change the key. */
function stepIdentity(step: Step): unknown {
  if (step.kind === 'RUN') return {kind: 'RUN', command: step.command}
  return {kind: 'COPY', sources: step.sources, dest: step.dest, chown: step.chown ?? null, chmod: step.chmod ?? null}
}

/**
 * Plan a build: pure. Each step's cache key chains on its parent's, so a
 * change invalidates that step and every step after it, and nothing before.
 * `baseKey` identifies the base disk (the FROM source's digest).
 */
export function planBuild(file: Ovmfile, inputs: {baseKey: string; baseDescription: string; sources: ReadonlyMap<string, SourceDigest>}, cache: CacheIndex): BuildPlan {
  let parentKey = key({v: 1, base: inputs.baseKey})
  const steps: PlannedStep[] = []
  let missed = false
  for (const step of file.steps) {
    const stepInputs = step.kind === 'COPY' ? step.sources.map((s) => ({source: s, digest: inputs.sources.get(s)?.digest ?? 'missing'})) : []
    const cacheKey = key({v: 1, parent: parentKey, step: stepIdentity(step), env: sorted(step.env), args: sorted(step.args), workdir: step.workdir, inputs: stepInputs})
    const hit = missed ? undefined : cache[cacheKey]
    if (!hit) missed = true
    steps.push({
      index: step.index,
      line: step.pos.line,
      kind: step.kind,
      text: step.text,
      cacheKey,
      parentKey,
      cached: Boolean(hit),
      ...(hit?.layer ? {layer: hit.layer} : {}),
      inputs: stepInputs,
    })
    parentKey = cacheKey
  }
  const toRun = steps.filter((s) => !s.cached).length
  return {
    version: 1,
    source: file.source,
    base: {description: inputs.baseDescription, key: inputs.baseKey},
    ...(file.kernel ? {kernel: {ref: file.kernel.ref, ...(file.kernel.modules ? {modules: file.kernel.modules} : {})}} : {}),
    steps,
    toRun,
    fullyCached: toRun === 0,
    ...(file.snapshot ? {snapshot: file.snapshot} : {}),
  }
}
