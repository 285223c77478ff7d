import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {AbortError, ExitCode, fileError, isErrno, isOvmError} from '../errors/index.js'
import {copy, referrersOf} from '../oci/copy.js'
import type {Descriptor} from '../oci/descriptor.js'
import {parseReference} from '../oci/reference.js'
import {openRemote} from '../oci/remote/client.js'
import {enforcePolicy, loadPolicy, policyPath} from '../sign/policy.js'
import {remoteSource} from '../sign/sign.js'
import {type LayoutStore, pathExists} from '../oci/layout.js'
import {type ParseResult, type Problem, ovmfileError, readOvmfile} from '../ovmfile/index.js'
import {type SourceDigest, checkContext} from './context.js'
import {type BuildPlan, type CacheIndex, planBuild} from './plan.js'

export interface PrepareOptions {
  ovmfile: string
  context: string
  buildArgs: Record<string, string>
  noCache?: boolean
}

export interface PreparedBuild {
  parsed: ParseResult
  sources: Map<string, SourceDigest>
  plan: BuildPlan
  warnings: Problem[]
}

/** The build cache index: cache key → layer, kept beside the store. */
export function cacheIndexPath(store: LayoutStore): string {
  return join(store.root, 'cache', 'build-index.json')
}

export async function readCacheIndex(store: LayoutStore): Promise<CacheIndex> {
  try {
    return JSON.parse(await readFile(cacheIndexPath(store), 'utf8')) as CacheIndex
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return {}
    throw new AbortError({
      code: 'CACHE_CORRUPT',
      message: `the build cache index is unreadable: ${cacheIndexPath(store)}`,
      hint: 'Delete it (the next build rebuilds every step) or build with --no-cache.',
      exitCode: ExitCode.integrity,
      cause: err,
    })
  }
}

async function fileDigest(path: string): Promise<string> {
  const h = createHash('sha256')
  try {
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  } catch (err) {
    throw fileError(err, path, 'base disk')
  }
  return `sha256:${h.digest('hex')}`
}

/** Parse, check the context, identify the base, and plan: everything short of booting a VM. */
export async function prepareBuild(store: LayoutStore, opts: PrepareOptions): Promise<PreparedBuild> {
  const parsed = await readOvmfile(opts.ovmfile, {buildArgs: opts.buildArgs})
  const ctx = await checkContext(parsed.ovmfile, opts.context)
  const errors = [...parsed.errors, ...ctx.problems].sort((a, b) => a.line - b.line || a.col - b.col)
  if (errors.length > 0) throw ovmfileError(opts.ovmfile, errors)
  const from = parsed.ovmfile.from!
  let baseKey: string
  let baseDescription: string
  if (from.kind === 'scratch') {
    baseKey = `scratch:${from.size}:${from.fs}`
    baseDescription = `scratch ${from.sizeText} ${from.fs}`
  } else if (from.kind === 'disk') {
    const path = resolve(opts.context, from.path)
    baseKey = await fileDigest(path)
    baseDescription = `disk ${from.path}`
  } else {
    const desc = await resolveOrPull(store, from.ref)
    baseKey = desc.digest
    baseDescription = `${from.ref}@${desc.digest}`
  }
  const cache = opts.noCache ? {} : await liveCacheEntries(store)
  const plan = planBuild(parsed.ovmfile, {baseKey, baseDescription, sources: ctx.digests}, cache)
  return {parsed, sources: ctx.digests, plan, warnings: parsed.warnings}
}

/**
 * A base artifact from the store, pulled first when the reference names a
 * registry and the store lacks it (the trust policy applies, as for `ovm pull`).
 */
async function resolveOrPull(store: LayoutStore, ref: string): Promise<Descriptor> {
  try {
    return await store.resolve(ref)
  } catch (err) {
    if (!(isOvmError(err) && err.code === 'REF_NOT_FOUND' && parseReference(ref).registry)) throw err
  }
  const src = openRemote(ref)
  await enforcePolicy(remoteSource(src.repository, {checkBlobs: false}), ref, await loadPolicy(policyPath(store.root)))
  await store.init()
  const r = await copy(src.repository, src.part, store, ref, {}, {referrers: referrersOf})
  return r.descriptor
}

/** The cache index without entries whose layer blob is gone (pruned): those steps run again. */
async function liveCacheEntries(store: LayoutStore): Promise<CacheIndex> {
  const all = await readCacheIndex(store)
  const out: Record<string, CacheIndex[string]> = {}
  for (const [key, entry] of Object.entries(all)) {
    if (entry.layer && !(await pathExists(store.blobPath(entry.layer)))) continue
    out[key] = entry
  }
  return out
}
