import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, readFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {AbortError, ExitCode, fileError, isErrno, isOvmError} from '../errors/index.js'
import type {BootstrapConfig} from '../artifact/manifest.js'
import type {Descriptor} from '../oci/descriptor.js'
import {parseReference} from '../oci/reference.js'
import {type LayoutStore, pathExists, writeAtomic} from '../oci/layout.js'
import {type ParseResult, type Problem, ovmfileError, readOvmfile} from '../ovmfile/index.js'
import type {ImageConfig} from '../convert/source.js'
import {withFileLock} from '../oci/lock.js'
import type {Ovmfile} from '../ovmfile/types.js'
import {normalisePath} from '../ovmfile/parse.js'
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

/** Change the build cache index under its lock (read, update, write to a temporary name, rename). */
export async function updateCacheIndex(store: LayoutStore, update: (c: Record<string, CacheIndex[string]>) => void): Promise<void> {
  const path = cacheIndexPath(store)
  await mkdir(join(store.root, 'cache'), {recursive: true})
  await withFileLock(`${path}.lock`, async () => {
    const cur = {...(await readCacheIndex(store))}
    update(cur)
    await writeAtomic(path, Buffer.from(JSON.stringify(cur, null, 1)))
  })
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
  } else if (from.kind === 'image') {
    // Loaded here: image conversion, registries and Sigstore are heavy to import, and most builds need none of them.
    const {imageBase} = await import('../convert/base.js')
    const base = await imageBase(store, from.source, {
      ...(from.size !== undefined ? {size: from.size} : {}),
      cwd: opts.context,
      isCached: async (key) => {
        const hit = (await readCacheIndex(store))[`base:${key}`]
        return Boolean(hit?.layer && (await pathExists(store.blobPath(hit.layer))))
      },
    })
    if (base.made) await recordImageBase(store, base.key, base.made)
    inheritImageConfig(parsed.ovmfile, base.config)
    baseKey = base.key
    baseDescription = `${from.source} (${base.description})`
  } else {
    const desc = await resolveOrPull(store, from.ref)
    await inheritBaseArtifact(store, parsed.ovmfile, desc.digest)
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
  const [{openRemote}, {enforcePolicy, loadPolicy, policyPath}, {remoteSource}, {copy, referrersOf}] = await Promise.all([
    import('../oci/remote/client.js'),
    import('../sign/policy.js'),
    import('../sign/sign.js'),
    import('../oci/copy.js'),
  ])
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

/** A FROM image's disk layer becomes the base's cache entry, so the build (and every later one) takes it from the cache. */
async function recordImageBase(store: LayoutStore, key: string, made: {digest: string; format: string; diskSize: number}): Promise<void> {
  await updateCacheIndex(store, (c) => {
    c[`base:${key}`] = {layer: made.digest, createdAt: new Date().toISOString(), format: made.format, diskSize: String(made.diskSize)} as CacheIndex[string]
  })
}

/**
 * A FROM image's config as the Ovmfile's defaults (as a Dockerfile's FROM):
 * its Env under the Ovmfile's ENV (for the steps too), its WorkingDir while
 * the Ovmfile sets none, its Entrypoint unless ENTRYPOINT is given, its Cmd
 * unless CMD or ENTRYPOINT is given, its ExposedPorts added, and its User.
 */
export function inheritImageConfig(file: Ovmfile, image: ImageConfig): void {
  const c = image.config ?? {}
  const env: Record<string, string> = {}
  for (const e of c.Env ?? []) {
    const i = e.indexOf('=')
    if (i > 0) env[e.slice(0, i)] = e.slice(i + 1)
  }
  const wd = c.WorkingDir && c.WorkingDir.startsWith('/') ? c.WorkingDir : undefined
  for (const step of file.steps) {
    step.env = {...env, ...step.env}
    if (wd && step.workdir === '/') {
      step.workdir = wd
      if (step.kind === 'COPY' && step.relDest !== undefined) {
        const abs = normalisePath(`${wd}/${step.relDest}`)
        step.dest = step.dest.endsWith('/') && abs !== '/' ? `${abs}/` : abs
      }
    }
  }
  file.env = {...env, ...file.env}
  if (wd && file.workdir === '/') file.workdir = wd
  if (!file.entrypoint && !file.cmd) {
    if (c.Entrypoint?.length) file.entrypoint = c.Entrypoint
    if (c.Cmd?.length) file.cmd = c.Cmd
  } else if (!file.entrypoint && c.Entrypoint?.length) {
    file.entrypoint = c.Entrypoint
  }
  for (const p of Object.keys(c.ExposedPorts ?? {})) if (/^[0-9]{1,5}(\/(tcp|udp))?$/.test(p) && !file.exposedPorts.includes(p)) file.exposedPorts.push(p)
  if (c.User && !file.user) file.user = c.User
}

/**
 * FROM REF: the base artifact's settings as the Ovmfile's defaults, as FROM
 * does in a Dockerfile: its bootstrap config (env, workdir, entrypoint, cmd,
 * ports, user: the same rules as a FROM image's config), its kernel command
 * line, MEMORY, CPUS and devices unless the Ovmfile gives its own, and its
 * labels under the Ovmfile's (but its title and version, which name it). Its RAM snapshot and the snapshot's annotations
 * are not inherited. The kernel itself is taken at build time when the
 * Ovmfile names none (baseArtifactKernel).
 */
/** Labels that name the base itself: the new artifact takes its name and version from its own tag or labels. */
const NOT_INHERITED = new Set(['org.opencontainers.image.title', 'org.opencontainers.image.version'])

export async function inheritBaseArtifact(store: LayoutStore, file: Ovmfile, digest: string): Promise<void> {
  const {loadArtifact} = await import('../artifact/load.js')
  const {ResourceAnnotation, resourcesFromAnnotations} = await import('../artifact/media-types.js')
  const base = await loadArtifact(store, digest)
  const boot = base.layers.find((l) => l.role === 'bootstrap')
  if (boot) {
    let cfg: BootstrapConfig
    try {
      cfg = JSON.parse((await store.fetchBytes(boot.descriptor)).toString('utf8')) as BootstrapConfig
    } catch (err) {
      throw new AbortError({
        code: 'BASE_INVALID',
        message: `FROM ${file.from?.kind === 'artifact' ? file.from.ref : digest}: the base artifact's bootstrap config is not JSON (${(err as Error).message})`,
        hint: 'Rebuild or pull the base artifact again; `ovm store verify` checks the stored blobs.',
        exitCode: ExitCode.integrity,
        ref: digest,
      })
    }
    inheritImageConfig(file, {
      config: {
        ...(cfg.env ? {Env: cfg.env} : {}),
        ...(cfg.workdir ? {WorkingDir: cfg.workdir} : {}),
        ...(cfg.entrypoint ? {Entrypoint: cfg.entrypoint} : {}),
        ...(cfg.cmd ? {Cmd: cfg.cmd} : {}),
        ...(cfg.exposedPorts ? {ExposedPorts: Object.fromEntries(cfg.exposedPorts.map((p) => [p, {}]))} : {}),
        ...(cfg.user ? {User: cfg.user} : {}),
      },
    } as ImageConfig)
  }
  const {ovms} = base
  if (file.cmdline === undefined && ovms.kernel?.args) file.cmdline = ovms.kernel.args
  const res = resourcesFromAnnotations(ovms.annotations)
  if (file.memory === undefined && res.memoryMiB) file.memory = res.memoryMiB * 1024 * 1024
  if (file.cpus === undefined && res.cpus) file.cpus = res.cpus
  if (file.devices.length === 0 && ovms.devices?.length) file.devices = ovms.devices.map((d) => ({...d}))
  const labels = Object.entries(ovms.annotations ?? {}).filter(
    ([k]) => !k.startsWith('dev.ovm.snapshot.') && !NOT_INHERITED.has(k) && k !== ResourceAnnotation.memoryMiB && k !== ResourceAnnotation.cpus,
  )
  file.labels = {...Object.fromEntries(labels), ...file.labels}
}
