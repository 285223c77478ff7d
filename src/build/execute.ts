import {execFile} from 'node:child_process'
import {createReadStream} from 'node:fs'
import {chmod, copyFile, cp, mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile} from 'node:fs/promises'
import {connect, type Socket} from 'node:net'
import {join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {promisify} from 'node:util'
import {gzipSync} from 'node:zlib'

import type {BootstrapConfig, OvmsManifest} from '../artifact/manifest.js'
import {OvmsAnnotation, OvmsMediaType, ResourceAnnotation, layerTitle} from '../artifact/media-types.js'
import {buildArtifact} from '../artifact/oci.js'
import {splitInitramfs} from '../disk/cpio.js'
import {probeDiskImage} from '../disk/image.js'
import {singleFileTar, singleFileTarSize} from '../disk/tar.js'
import {type ChainFormat, createOverlay, unpackDiskChain} from '../disk/unpack.js'
import type {Engine, EngineName, VmHandle} from '../engine/types.js'
import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {Annotation, type Descriptor, jsonBytes} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import {sha256} from '../oci/digest.js'
import type {Ovmfile, Step} from '../ovmfile/types.js'
import {buildInitramfs, ovmsInitramfs} from './initramfs.js'
import {type ResolvedKernel, baseArtifactKernel, looksLikePath, resolveKernel} from './kernel.js'
import type {BuildPlan, CacheEntry, CacheIndex, PlannedStep} from './plan.js'
import {readCacheIndex, updateCacheIndex} from './prepare.js'
import {shellQuote} from '../util/shell.js'

const MiB = 1024 * 1024

const run = promisify(execFile)

export type BuildEvent =
  | {type: 'step-start'; step: PlannedStep}
  | {type: 'step-cached'; step: PlannedStep}
  | {type: 'step-output'; step: PlannedStep; line: string}
  | {type: 'step-done'; step: PlannedStep; ms: number; layer?: Descriptor}
  | {type: 'phase'; phase: string}
  | {type: 'boot'; ms: number}
  /** Builder console lines outside any step (boot messages, agent errors). */
  | {type: 'console'; line: string}

export interface ExecuteOptions {
  store: LayoutStore
  /** The builder's engine, asked for only when a step has to run. */
  engine: () => Promise<Engine>
  file: Ovmfile
  plan: BuildPlan
  context: string
  sources: ReadonlyMap<string, {source: string; digest: string}>
  tags: string[]
  /** Boot the builder once per step instead of once per build (for comparison). */
  bootPerStep?: boolean
  memoryMiB?: number
  onEvent?: (e: BuildEvent) => void
}

export interface BuildResult {
  references: string[]
  digest: string
  /** Disk layers in the artifact: the base chain and one per step that produced a diff. */
  diskLayers: number
  /** Builder VMs booted (0 when every step was cached). */
  boots: number
  /** The engine the builder ran on; absent when every step was cached. */
  engine?: EngineName
  stepsRun: number
  stepsCached: number
  ovms: OvmsManifest
}

/**
 * Step layers use 4 KiB clusters, ext4's block size: with qemu-img's 64 KiB
 * a step that changes one inode still copies up 64 KiB around it (and every
 * step touches the superblock, bitmaps and journal), which made a no-op step
 * ~0.4 MiB and an 8 MiB write a 9 MiB layer.
 */
const STEP_OVERLAY = {clusterSize: 4096}

/** The cache entry of a base disk also records its format and virtual size. */
interface BaseCacheEntry extends CacheEntry {
  format: ChainFormat
  diskSize: string
}

interface DiskLayer {
  descriptor: Descriptor
  format: ChainFormat
}

/**
 * gzip through the build cache: an initramfs archive compressed before (the
 * same cpio bytes, by digest) is read back from its blob instead of being
 * compressed again, which was most of a no-op rebuild's time.
 */
function cachedGzip(store: LayoutStore, cache: CacheIndex): (cpio: Buffer) => Promise<Buffer> {
  return async (cpio) => {
    const key = `gzip:${sha256(cpio)}`
    const hit = cache[key]?.layer
    if (hit) {
      const bytes = await readFile(store.blobPath(hit)).catch(() => undefined)
      if (bytes && sha256(bytes) === hit) return bytes
    }
    const gz = gzipSync(cpio, {level: 6})
    const d = await store.pushBytes(OvmsMediaType.initrd, gz)
    await updateCacheIndex(store, (c) => {
      c[key] = {layer: d.digest, createdAt: new Date().toISOString()}
    })
    return gz
  }
}

/** Store a disk image file as a one-file tar layer. */
async function ingestDisk(store: LayoutStore, path: string, index: number): Promise<DiskLayer> {
  const info = await probeDiskImage(path)
  const tar = singleFileTar(`disk.${info.format}`, info.fileSize, createReadStream(path))
  const {digest, size} = await store.ingest(tar, singleFileTarSize(info.fileSize))
  return {
    descriptor: {
      mediaType: OvmsMediaType.diskLayer,
      digest,
      size,
      annotations: {[Annotation.title]: layerTitle('disk', index), [OvmsAnnotation.format]: info.format, [OvmsAnnotation.diskSize]: String(info.virtualSize)},
    },
    format: info.format,
  }
}

/** The base disk of the build: a cached layer, made once. */
async function baseLayer(store: LayoutStore, file: Ovmfile, plan: BuildPlan, context: string, cache: CacheIndex, work: string): Promise<DiskLayer[]> {
  const from = file.from!
  if (from.kind === 'artifact') {
    const {loadArtifact} = await import('../artifact/load.js')
    const a = await loadArtifact(store, from.ref)
    return a.layers.filter((l) => l.role === 'disk').map((l) => ({descriptor: l.descriptor, format: l.descriptor.annotations?.[OvmsAnnotation.format] as ChainFormat}))
  }
  const key = `base:${plan.base.key}`
  const hit = cache[key] as BaseCacheEntry | undefined
  const st = hit?.layer ? await stat(store.blobPath(hit.layer)).catch(() => undefined) : undefined
  if (hit?.layer && st) {
    const annotations = {[Annotation.title]: layerTitle('disk', 0), [OvmsAnnotation.format]: hit.format, [OvmsAnnotation.diskSize]: hit.diskSize}
    return [{descriptor: {mediaType: OvmsMediaType.diskLayer, digest: hit.layer, size: st.size, annotations}, format: hit.format}]
  }
  let path: string
  if (from.kind === 'scratch') {
    const raw = join(work, 'base.raw')
    await writeFile(raw, '')
    await truncate(raw, from.size)
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'root_owner=0:0', '-L', 'ovm-root', raw]).catch((err: unknown) => {
      throw new AbortError({code: 'MKFS_FAILED', message: `mke2fs failed: ${(err as {stderr?: string}).stderr ?? err}`, hint: 'Install e2fsprogs.', exitCode: ExitCode.engine})
    })
    path = join(work, 'base.qcow2')
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path])
    await rm(raw, {force: true})
  } else if (from.kind === 'disk') {
    path = resolve(context, from.path)
  } else {
    throw new AbortError({code: 'BASE_NOT_PREPARED', message: `FROM ${from.source}: the image base is not in the build cache`, hint: 'Build again: prepareBuild converts the image first.', exitCode: ExitCode.engine})
  }
  const layer = await ingestDisk(store, path, 0)
  const entry: BaseCacheEntry = {
    layer: layer.descriptor.digest,
    createdAt: new Date().toISOString(),
    format: layer.format,
    diskSize: layer.descriptor.annotations?.[OvmsAnnotation.diskSize] as string,
  }
  await updateCacheIndex(store, (c) => {
    c[key] = entry
  })
  return [layer]
}


/** The script the agent runs for one step (in the guest, target mounted at /mnt/target). */
export function stepScript(step: Step): string {
  const env = {...step.args, ...step.env}
  const lines = ['set -e', 'T=/mnt/target', `W=${shellQuote(step.workdir)}`]
  if (step.kind === 'COPY') {
    const dest = step.dest
    const dirDest = dest.endsWith('/') || step.sources.length > 1
    lines.push(dirDest ? `mkdir -p "$T"${shellQuote(dest)}` : `mkdir -p "$(dirname "$T"${shellQuote(dest)})"`)
    step.sources.forEach((_, i) => {
      const src = `/ctx/steps/${step.index}/files/${i}`
      lines.push(`for f in ${src}/* ${src}/.[!.]*; do [ -e "$f" ] || continue; ` + (dirDest ? `cp -a "$f" "$T"${shellQuote(dest.replace(/\/?$/, '/'))}; done` : `cp -a "$f" "$T"${shellQuote(dest)}; done`))
    })
    const targets = dirDest ? step.sources.map((s) => `"$T"${shellQuote(dest.replace(/\/?$/, '/') + s.replace(/\/+$/, '').split('/').pop())}`) : [`"$T"${shellQuote(dest)}`]
    if (step.chown) {
      const owner = shellQuote(step.chown.user + (step.chown.group ? `:${step.chown.group}` : ''))
      // Numeric owners need nothing from the target; names are looked up in its /etc/passwd and /etc/group.
      const numeric = /^\d+$/.test(step.chown.user) && (!step.chown.group || /^\d+$/.test(step.chown.group))
      lines.push(numeric ? `chown -R ${owner} ${targets.join(' ')}` : `chroot "$T" /bin/sh -c ${shellQuote(`chown -R ${owner} ${targets.map((t) => t.replace('"$T"', '')).join(' ')}`)}`)
    }
    if (step.chmod !== undefined) lines.push(`chmod -R ${step.chmod.toString(8)} ${targets.join(' ')}`)
    return [...lines, ''].join('\n')
  }
  // RUN: in a chroot of the target, with /proc /sys /dev, and busybox when the target has no shell.
  lines.push(
    'mkdir -p "$T/proc" "$T/sys" "$T/dev" "$T$W"',
    'mount -t proc proc "$T/proc"; mount -t sysfs sysfs "$T/sys"; mount -o bind /dev "$T/dev"',
    'SH=/bin/sh',
    'if [ ! -x "$T/bin/sh" ]; then mkdir -p "$T/.ovm"; touch "$T/.ovm/busybox"; mount -o bind /bin/busybox "$T/.ovm/busybox"; SH="/.ovm/busybox sh"; fi',
    'set +e',
  )
  // The command reaches the chroot's shell through the environment, so no quoting is nested;
  // the shell unsets OVM_* before running it.
  const inner =
    typeof step.command === 'string'
      ? 'cd "$OVM_WORKDIR" && c=$OVM_CMD && s=$OVM_SH && unset OVM_WORKDIR OVM_CMD OVM_SH && exec $s -c "$c"'
      : 'cd "$OVM_WORKDIR" && unset OVM_WORKDIR OVM_CMD OVM_SH && exec "$@"'
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)}`)
  const cmdEnv = typeof step.command === 'string' ? `OVM_CMD=${shellQuote(step.command)}` : ''
  const argv = typeof step.command === 'string' ? '' : ` ovm-step ${step.command.map(shellQuote).join(' ')}`
  lines.push(
    `env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root ${envArgs.join(' ')} OVM_WORKDIR="$W" OVM_SH="$SH" ${cmdEnv} chroot "$T" $SH -c ${shellQuote(inner)}${argv}`,
  )
  lines.push('rc=$?', 'umount "$T/.ovm/busybox" 2>/dev/null; rm -rf "$T/.ovm"', 'umount "$T/dev" "$T/sys" "$T/proc"', 'exit $rc', '')
  return lines.join('\n')
}

/** Lay out the context disk: each step's script and COPY sources, as a tar (a raw, read-only disk). */
async function contextDisk(work: string, file: Ovmfile, steps: PlannedStep[], context: string): Promise<string> {
  const root = join(work, 'ctx')
  for (const p of steps) {
    const step = file.steps[p.index] as Step
    const dir = join(root, 'steps', String(step.index))
    await mkdir(dir, {recursive: true})
    await writeFile(join(dir, 'run.sh'), stepScript(step))
    if (step.kind === 'COPY') {
      for (const [i, s] of step.sources.entries()) {
        const dst = join(dir, 'files', String(i))
        await mkdir(dst, {recursive: true})
        const src = resolve(context, s)
        const st = await stat(src).catch((err: unknown) => {
          throw fileError(err, src, 'COPY source')
        })
        if (st.isDirectory()) await cp(src, join(dst, s.replace(/\/+$/, '').split('/').pop() as string), {recursive: true, preserveTimestamps: true, verbatimSymlinks: true})
        else {
          await copyFile(src, join(dst, s.split('/').pop() as string))
          await chmod(join(dst, s.split('/').pop() as string), st.mode & 0o7777)
        }
      }
    }
  }
  const tar = join(work, 'ctx.tar')
  await run('tar', ['--numeric-owner', '--owner=0', '--group=0', '-cf', tar, '-C', root, '.'])
  const size = (await stat(tar)).size
  await truncate(tar, Math.ceil(size / 512) * 512 + 512)
  return tar
}

/** The agent's line channel over the builder's COM2 socket. */
class AgentChannel {
  private buf = ''
  private waiters: {match: (l: string) => boolean; resolve: (l: string) => void}[] = []
  private backlog: string[] = []

  constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8')
    sock.on('data', (d: string) => {
      this.buf += d
      let i: number
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).replace(/\r$/, '')
        this.buf = this.buf.slice(i + 1)
        const w = this.waiters.findIndex((x) => x.match(line))
        if (w >= 0) this.waiters.splice(w, 1)[0]!.resolve(line)
        else this.backlog.push(line)
      }
    })
  }

  static async connect(path: string, timeoutMs: number): Promise<AgentChannel> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        const sock = await new Promise<Socket>((res, rej) => {
          const s = connect(path)
          s.once('connect', () => res(s))
          s.once('error', rej)
        })
        return new AgentChannel(sock)
      } catch (err) {
        if (Date.now() > deadline) throw err
        await sleep(50)
      }
    }
  }

  send(line: string): void {
    this.sock.write(`${line}\n`)
  }

  /** The next line that `match`es; rejects on an agent ERROR line or when the VM ends first. */
  expect(match: (l: string) => boolean, vm: VmHandle, what: string): Promise<string> {
    const i = this.backlog.findIndex((l) => match(l) || l.startsWith('ERROR '))
    if (i >= 0) {
      const line = this.backlog.splice(i, 1)[0] as string
      return line.startsWith('ERROR ') && !match(line) ? Promise.reject(agentError(line, what)) : Promise.resolve(line)
    }
    return new Promise((res, rej) => {
      this.waiters.push({
        match: (l) => match(l) || l.startsWith('ERROR '),
        resolve: (l) => (match(l) ? res(l) : rej(agentError(l, what))),
      })
      vm.wait().then((st) => rej(new AbortError({code: 'BUILDER_DIED', message: `the builder VM ended (${st.reason}) while ${what}`, hint: 'Run with --debug to see the builder console.', exitCode: ExitCode.engine})))
    })
  }

  close(): void {
    this.sock.destroy()
  }
}

function agentError(line: string, what: string): AbortError {
  return new AbortError({code: 'BUILDER_AGENT', message: `the builder agent failed while ${what}: ${line.slice(6)}`, hint: 'Run with --debug to see the builder console.', exitCode: ExitCode.engine})
}

/** A step's overlay as a diff layer, or undefined when the step wrote nothing. */
async function stepLayer(store: LayoutStore, path: string, index: number): Promise<DiskLayer | undefined> {
  const {stdout} = await run('qemu-img', ['check', '--output=json', path]).catch((err: {stdout?: string; stderr?: string}) => {
    throw new AbortError({code: 'LAYER_CORRUPT', message: `qemu-img check failed on the step overlay ${path}: ${err.stderr ?? err.stdout}`, hint: 'This is a bug in the builder; run with --debug and report it.', exitCode: ExitCode.engine})
  })
  const allocated = (JSON.parse(stdout) as {'allocated-clusters'?: number})['allocated-clusters'] ?? 0
  if (allocated === 0) return undefined
  // The backing file name is the builder's temporary path: drop it; the chain is relinked when unpacked.
  await run('qemu-img', ['rebase', '-u', '-b', '', path])
  return ingestDisk(store, path, index)
}

async function buildKernel(store: LayoutStore, file: Ovmfile, plan: BuildPlan, context: string): Promise<ResolvedKernel> {
  const kref = file.kernel
  if (!kref) {
    if (file.from?.kind === 'artifact') return baseArtifactKernel(store, plan.base.key, file.from.ref)
    throw new AbortError({
      code: 'MISSING_KERNEL',
      message: `${file.source}: FROM ${file.from?.kind ?? '(none)'} needs a KERNEL`,
      hint: 'Add KERNEL REF (a kernel artifact from `ovm kernel import`) or KERNEL PATH MODULES DIR; only FROM REF takes its base artifact\'s kernel.',
      exitCode: ExitCode.invalid,
      ref: file.source,
    })
  }
  const asPath = resolve(context, kref.ref)
  const isPath = Boolean(kref.modules) || looksLikePath(kref.ref) || (await stat(asPath).then(() => true, () => false))
  return isPath
    ? resolveKernel(store, asPath, {modules: kref.modules ? resolve(context, kref.modules) : undefined, cwd: context})
    : resolveKernel(store, kref.ref)
}

/** Run the plan: boot the builder, run each uncached step, turn each into a diff layer, and assemble the artifact. */
export async function executePlan(opts: ExecuteOptions): Promise<BuildResult> {
  const {store, file, plan} = opts
  const emit = opts.onEvent ?? (() => undefined)
  await store.init()
  await mkdir(join(store.root, 'cache'), {recursive: true})
  const work = await mkdtemp(join(store.root, 'cache', 'build-'))
  const cache = await readCacheIndex(store)
  // KERNEL: a file in the context (with MODULES, or a .deb / unpacked root) or a kernel artifact (`ovm kernel import`);
  // without one, FROM REF takes the base artifact's kernel (and the modules its initramfs carries).
  const kernel = await buildKernel(store, file, plan, opts.context)
  try {
    emit({type: 'phase', phase: 'base'})
    const layers: DiskLayer[] = await baseLayer(store, file, plan, opts.context, cache, work)
    for (const s of plan.steps) {
      if (!s.cached) break
      emit({type: 'step-cached', step: s})
      if (s.layer) {
        const st = await stat(store.blobPath(s.layer))
        const diskSize = layers[0]?.descriptor.annotations?.[OvmsAnnotation.diskSize]
        const annotations = {[OvmsAnnotation.format]: 'qcow2', ...(diskSize ? {[OvmsAnnotation.diskSize]: diskSize} : {})}
        layers.push({descriptor: {mediaType: OvmsMediaType.diskLayer, digest: s.layer, size: st.size, annotations}, format: 'qcow2'})
      }
    }
    const toRun = plan.steps.filter((s) => !s.cached)
    let boots = 0
    const stepMs = new Map<number, number>()
    const gzip = cachedGzip(store, cache)
    let engine: Engine | undefined
    if (toRun.length > 0) {
      engine = await opts.engine()
      const initrd = join(work, 'builder-initrd.gz')
      await writeFile(initrd, (await buildInitramfs({modulesDir: kernel.modulesDir, gzip})).bytes)
      const ctx = await contextDisk(work, file, toRun, opts.context)
      const groups = opts.bootPerStep ? toRun.map((s) => [s]) : [toRun]
      for (const group of groups) {
        boots++
        const chain = await unpackDiskChain(store, layers)
        const overlays = group.map((_, i) => join(work, `step-${group[0]!.index + i}.qcow2`))
        await createOverlay(chain.at(-1)!, overlays[0]!, STEP_OVERLAY)
        const agentSock = join(work, `agent-${boots}.sock`)
        const t0 = Date.now()
        const vm = await engine.boot({
          kernel: kernel.kernel,
          initrd,
          cmdline: 'console=ttyS0 panic=-1 quiet',
          // The builder gets the Ovmfile's MEMORY when that is more than 512 MiB, and its CPUS.
          memoryMiB: opts.memoryMiB ?? Math.max(512, Math.ceil((file.memory ?? 0) / MiB)),
          cpus: file.cpus ?? 1,
          disks: [
            {chain: chain.map((c) => ({path: c.path, format: c.format})), overlay: overlays[0]!},
            {chain: [{path: ctx, format: 'raw'}], overlay: '', readOnly: true},
          ],
          devices: [],
          workDir: work,
          agentSocket: agentSock,
        })
        let current: PlannedStep | undefined
        const off = vm.on((e) => {
          if (e.type !== 'console' || e.line.startsWith('@@ovm-step-')) return
          if (current) emit({type: 'step-output', step: current, line: e.line})
          else emit({type: 'console', line: e.line})
        })
        let failed: {step: PlannedStep; rc: number} | undefined
        let done = 0
        try {
          const agent = await AgentChannel.connect(agentSock, 30_000)
          await agent.expect((l) => l === 'READY', vm, 'booting')
          emit({type: 'boot', ms: Date.now() - t0})
          for (const [i, step] of group.entries()) {
            current = step
            emit({type: 'step-start', step})
            const s0 = Date.now()
            agent.send(`STEP ${step.index}`)
            const exit = await agent.expect((l) => l.startsWith(`EXIT ${step.index} `), vm, `running line ${step.line}`)
            current = undefined
            const rc = Number(exit.split(' ')[2])
            if (rc !== 0) {
              failed = {step, rc}
              break
            }
            stepMs.set(step.index, Date.now() - s0)
            done++
            const next = overlays[i + 1]
            if (next) {
              agent.send('FREEZE')
              await agent.expect((l) => l === 'FROZEN', vm, 'freezing the file system')
              await vm.addOverlay!(0, next, STEP_OVERLAY)
              agent.send('THAW')
              await agent.expect((l) => l === 'THAWED', vm, 'thawing the file system')
            }
          }
          agent.send('POWEROFF')
          await agent.expect((l) => l === 'BYE', vm, 'powering off').catch(() => undefined)
          await vm.wait()
          agent.close()
        } finally {
          off()
          if (vm.state !== 'stopped') await vm.stop({graceMs: 2000}).catch(() => undefined)
        }
        // Every step that finished becomes a layer (and a cache entry), even when a later one failed.
        for (const [i, step] of group.slice(0, done).entries()) {
          const layer = await stepLayer(store, overlays[i] as string, layers.length)
          if (layer) layers.push(layer)
          await updateCacheIndex(store, (c) => {
            c[step.cacheKey] = {...(layer ? {layer: layer.descriptor.digest} : {}), createdAt: new Date().toISOString()}
          })
          emit({type: 'step-done', step, ms: stepMs.get(step.index) ?? 0, layer: layer?.descriptor})
        }
        if (failed) {
          throw new AbortError({
            code: 'STEP_FAILED',
            message: `${file.source}:${failed.step.line}: ${failed.step.text} failed with exit status ${failed.rc}`,
            hint: `Fix the step; the ${done + plan.steps.length - toRun.length} step(s) before it are cached, so the next build resumes here.`,
            exitCode: ExitCode.buildFailed,
            ref: `${file.source}:${failed.step.line}`,
          })
        }
      }
    }
    emit({type: 'phase', phase: 'assemble'})
    const result = await assemble(store, opts, layers, kernel, gzip, cache)
    return {...result, boots, stepsRun: toRun.length, stepsCached: plan.steps.length - toRun.length, diskLayers: layers.length, ...(engine ? {engine: engine.name} : {})}
  } finally {
    await kernel.cleanup()
    await rm(work, {recursive: true, force: true})
  }
}

/** Kernel, boot initramfs (OVMS-Init), disk layers and bootstrap config → an artifact in the store. */
async function assemble(store: LayoutStore, opts: ExecuteOptions, disks: DiskLayer[], kernel: ResolvedKernel, gzip: (cpio: Buffer) => Promise<Buffer>, cache: CacheIndex): Promise<Omit<BuildResult, 'boots' | 'stepsRun' | 'stepsCached' | 'diskLayers' | 'engine'>> {
  const {file} = opts
  const kernelPath = kernel.kernel
  const kernelSize = (await stat(kernelPath).catch((err: unknown) => {
    throw fileError(err, kernelPath, 'kernel')
  })).size
  const k = await ingestFile(store, cache, kernelPath, kernelSize)
  const layers: Descriptor[] = [{mediaType: OvmsMediaType.kernel, digest: k.digest, size: k.size, annotations: {[Annotation.title]: layerTitle('kernel')}}]
  const bootstrap: BootstrapConfig = {
    ...(Object.keys(file.env).length ? {env: Object.entries(file.env).map(([a, b]) => `${a}=${b}`)} : {}),
    workdir: file.workdir,
    ...(file.entrypoint ? {entrypoint: file.entrypoint} : {}),
    ...(file.cmd ? {cmd: file.cmd} : {}),
    ...(file.exposedPorts.length ? {exposedPorts: file.exposedPorts} : {}),
    ...(file.user ? {user: file.user} : {}),
    profile: 'ovms-init',
  }
  let initrdDesc: Descriptor | undefined
  {
    let bytes = (await ovmsInitramfs({modulesDir: kernel.modulesDir, bootstrap, gzip})).bytes
    // FROM REF: what the base's Ovmfile appended to its OVMS-Init (its INITRD) is appended here too.
    if (file.from?.kind === 'artifact') bytes = Buffer.concat([bytes, await baseInitrdExtras(store, opts.plan.base.key, file.from.ref)])
    if (file.initrd) {
      // INITRD: an extra initramfs appended to OVMS-Init's. Linux unpacks
      // concatenated (each possibly compressed) cpio archives in order, so
      // the extra one's files overlay OVMS-Init's.
      const extraPath = resolve(opts.context, file.initrd)
      const extra = await readFile(extraPath).catch((err: unknown) => {
        throw fileError(err, extraPath, 'INITRD')
      })
      bytes = Buffer.concat([bytes, extra])
    }
    initrdDesc = {...(await store.pushBytes(OvmsMediaType.initrd, bytes)), annotations: {[Annotation.title]: layerTitle('initrd')}}
    layers.push(initrdDesc)
  }
  // Title first, then the rest in their order: a layer taken from the cache and one made now give the same bytes.
  layers.push(
    ...disks.map((d, i) => {
      const {[Annotation.title]: _title, ...rest} = d.descriptor.annotations ?? {}
      return {...d.descriptor, annotations: {[Annotation.title]: layerTitle('disk', i), ...rest}}
    }),
  )
  const bootDesc = {...(await store.pushBytes(OvmsMediaType.bootstrapConfig, jsonBytes(bootstrap))), annotations: {[Annotation.title]: layerTitle('bootstrap')}}
  layers.push(bootDesc)
  // LABELs, and MEMORY and CPUS as the defaults `ovm run` boots with.
  const annotations: Record<string, string> = {
    ...file.labels,
    ...(file.memory ? {[ResourceAnnotation.memoryMiB]: String(Math.ceil(file.memory / MiB))} : {}),
    ...(file.cpus ? {[ResourceAnnotation.cpus]: String(file.cpus)} : {}),
  }
  const name = file.labels['org.opencontainers.image.title'] ?? nameFromTag(opts.tags[0])
  const ovms: OvmsManifest = {
    schemaVersion: 1,
    mediaType: OvmsMediaType.manifest,
    name,
    version: file.labels['org.opencontainers.image.version'] ?? tagOf(opts.tags[0]),
    kernel: {ref: k.digest, args: file.cmdline ?? 'console=ttyS0 panic=-1'},
    ...(initrdDesc ? {initrd: {ref: initrdDesc.digest}} : {}),
    diskLayers: disks.map((d) => ({ref: d.descriptor.digest, format: d.format, size: Number(d.descriptor.annotations?.[OvmsAnnotation.diskSize] ?? 0)})),
    ...(file.devices.length ? {devices: file.devices} : {}),
    metadata: {created: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'), platform: {arch: 'x86_64', uefi: false}},
    bootstrap: {ref: bootDesc.digest},
    ...(Object.keys(annotations).length ? {annotations} : {}),
  }
  // The same artifact as an earlier build, but for its creation time: that artifact (the same digest), so a
  // rebuild with nothing changed is the same artifact and a SNAPSHOT of it need not be baked again.
  const same = `artifact:${sha256(Buffer.from(JSON.stringify({ovms: {...ovms, metadata: {...ovms.metadata, created: undefined}}, layers})))}`
  const earlier = await storedArtifact(store, cache[same]?.layer)
  if (earlier) {
    for (const t of opts.tags) await store.tag(earlier.descriptor, t)
    if (opts.tags.length === 0) await store.addUntagged(earlier.descriptor)
    return {references: opts.tags, digest: earlier.descriptor.digest, ovms: earlier.ovms}
  }
  const built = buildArtifact(ovms, layers)
  await store.push(built.config, built.configBytes)
  await store.push(built.descriptor, built.manifestBytes)
  for (const t of opts.tags) await store.tag(built.descriptor, t)
  if (opts.tags.length === 0) await store.addUntagged(built.descriptor)
  await updateCacheIndex(store, (c) => {
    c[same] = {layer: built.descriptor.digest, createdAt: new Date().toISOString()}
  })
  return {references: opts.tags, digest: built.descriptor.digest, ovms: built.ovms}
}

/**
 * The archives a base artifact's initrd holds after its OVMS-Init one; none
 * when it has no initrd or its bootstrap profile is not OVMS-Init (then the
 * initrd is not one `ovm build` assembled).
 */
async function baseInitrdExtras(store: LayoutStore, digest: string, name: string): Promise<Buffer> {
  const {loadArtifact} = await import('../artifact/load.js')
  const base = await loadArtifact(store, digest)
  const initrd = base.layers.find((l) => l.role === 'initrd')
  const boot = base.layers.find((l) => l.role === 'bootstrap')
  if (!initrd || !boot) return Buffer.alloc(0)
  const profile = await store.fetchBytes(boot.descriptor).then((b) => (JSON.parse(b.toString('utf8')) as BootstrapConfig).profile, () => undefined)
  if (profile !== 'ovms-init') return Buffer.alloc(0)
  try {
    return splitInitramfs(await store.fetchBytes(initrd.descriptor)).rest
  } catch (err) {
    throw new AbortError({
      code: 'BASE_INVALID',
      message: `FROM ${name}: the base artifact's initrd cannot be read (${(err as Error).message})`,
      hint: 'Rebuild or pull the base artifact again; `ovm store verify` checks the stored blobs.',
      exitCode: ExitCode.invalid,
      ref: name,
    })
  }
}

/** An artifact the store still holds whole (manifest, config and every layer blob), or undefined. */
export async function storedArtifact(store: LayoutStore, digest: string | undefined): Promise<{descriptor: Descriptor; ovms: OvmsManifest} | undefined> {
  if (!digest) return undefined
  try {
    const {loadArtifact} = await import('../artifact/load.js')
    const a = await loadArtifact(store, digest)
    for (const l of a.manifest.layers) {
      const st = await stat(store.blobPath(l.digest)).catch(() => undefined)
      if (st?.size !== l.size) return undefined
    }
    return {descriptor: a.descriptor, ovms: a.ovms}
  } catch {
    return undefined
  }
}

/**
 * A file stored as a blob, read and hashed only when it changed since the last
 * build stored it: the build index keeps its digest under its path with its
 * size, inode, and change and modification times (as make and git do).
 */
async function ingestFile(store: LayoutStore, cache: CacheIndex, path: string, size: number): Promise<{digest: string; size: number}> {
  const st = await stat(path, {bigint: true})
  const sig = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`
  const key = `file:${resolve(path)}`
  const hit = cache[key] as (CacheEntry & {sig?: string}) | undefined
  if (hit?.layer && hit.sig === sig) {
    const blob = await stat(store.blobPath(hit.layer)).catch(() => undefined)
    if (blob?.size === size) return {digest: hit.layer, size}
  }
  const k = await store.ingest(createReadStream(path), size)
  await updateCacheIndex(store, (c) => {
    c[key] = {layer: k.digest, createdAt: new Date().toISOString(), sig} as CacheEntry
  })
  return k
}

function nameFromTag(tag?: string): string {
  if (!tag) return 'ovm/build'
  const noTag = tag.replace(/:[^/:]+$/, '')
  return noTag.split('/').filter((p) => !p.includes('.') && !p.includes(':')).join('/') || 'ovm/build'
}

function tagOf(tag?: string): string {
  const m = tag ? /:([^/:]+)$/.exec(tag) : null
  return m?.[1] ?? 'latest'
}
