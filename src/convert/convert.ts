/**
 * `ovm convert`: a container image → a bare file system image, or an OVMS
 * artifact that boots it with OVMS-Init (rfc/convert.md).
 *
 *   openImage → flattenLayers (temp folder) → makeFileSystem → --output PATH
 *                                                            → kernel + OVMS-Init initramfs + disk + bootstrap → store
 *
 * Everything is made in one temp folder that is removed at the end, also on
 * failure; the output file appears by rename only once complete; the store
 * only receives verified blobs, and the tag is written last.
 */
import {execFile} from 'node:child_process'
import {createReadStream} from 'node:fs'
import {copyFile, mkdir, mkdtemp, rename, rm, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {basename, dirname, join, resolve} from 'node:path'
import {promisify} from 'node:util'

import type {BootstrapConfig, OvmsManifest} from '../artifact/manifest.js'
import {OvmsAnnotation, OvmsMediaType, layerTitle} from '../artifact/media-types.js'
import {buildArtifact} from '../artifact/oci.js'
import {assertBootstrapConfig} from '../artifact/validate.js'
import {ovmsInitramfs, safeHostname} from '../build/initramfs.js'
import {type ResolvedKernel, looksLikePath, resolveKernel} from '../build/kernel.js'
import {probeDiskImage} from '../disk/image.js'
import {singleFileTar, singleFileTarSize} from '../disk/tar.js'
import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {Annotation, type Descriptor, jsonBytes} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import {parseReference, refName} from '../oci/reference.js'
import type {RegistryOptions} from '../oci/remote/client.js'
import {type FlattenEvent, flattenLayers, removeTree} from './flatten.js'
import {MiB, type RootFs, makeFileSystem} from './mkfs.js'
import {type ImageConfig, type ImageSource, openImage} from './source.js'

const run = promisify(execFile)

export const DEFAULT_CMDLINE = 'console=ttyS0 panic=-1 quiet'
/** Where a default kernel for convert (and FROM docker://) comes from when --kernel is not given. */
export const KERNEL_ENV = 'OVM_KERNEL'

export interface ConvertOptions {
  /** docker://REF, oci:PATH[:TAG], docker-archive:PATH (or a .tar path), or a bare registry reference. */
  source: string
  fs?: RootFs
  /** Exact file system size in bytes (ext4). */
  size?: number
  /** Free space on top of the content in bytes (ext4; default 256 MiB). */
  sizeBuffer?: number
  /** Write the bare file system image here (no artifact). */
  output?: string
  /** Tag the artifact with these references (needs a kernel). */
  tags?: string[]
  /** A kernel artifact (`ovm kernel import`) or a kernel path (.deb, root folder); default $OVM_KERNEL. */
  kernel?: string
  /** With a kernel image path: its /lib/modules/VERSION folder. */
  modules?: string
  cmdline?: string
  registry?: RegistryOptions
  cwd?: string
  /** Set owners with chown while flattening (default: when root); otherwise with debugfs afterwards. */
  chown?: boolean
  onEvent?: (e: ConvertEvent) => void
}

export type ConvertEvent = {type: 'phase'; phase: 'fetch' | 'flatten' | 'mkfs' | 'assemble'; detail?: string} | FlattenEvent

export interface ConvertResult {
  source: string
  manifestDigest: string
  fs: RootFs
  /** Bytes of the file system image (ext4: its size, sparse on disk). */
  imageSize: number
  /** ext4: what the content alone needs. */
  contentSize?: number
  /** Sum of the file sizes in the root. */
  contentBytes: number
  files: number
  whiteouts: number
  bootstrap: BootstrapConfig
  ms: {flatten: number; mkfs: number; assemble: number; total: number}
  output?: string
  references?: string[]
  digest?: string
}

const ENV_RE = /^[^=\s]+=[^\n]*$/
const PORT_RE = /^[0-9]{1,5}(\/(tcp|udp))?$/

/** The bootstrap config (OVMS-Init profile) from an image config; what does not fit the schema is reported in `dropped`. */
export function bootstrapFromImage(config: ImageConfig): {bootstrap: BootstrapConfig; dropped: string[]} {
  const c = config.config ?? {}
  const dropped: string[] = []
  const env = (c.Env ?? []).filter((e) => ENV_RE.test(e) || (dropped.push(`Env ${JSON.stringify(e)}`), false))
  const ports = Object.keys(c.ExposedPorts ?? {}).filter((p) => PORT_RE.test(p) || (dropped.push(`ExposedPorts ${p}`), false))
  let workdir = c.WorkingDir || undefined
  if (workdir && !workdir.startsWith('/')) workdir = `/${workdir}`
  const bootstrap: BootstrapConfig = {
    ...(env.length ? {env} : {}),
    ...(workdir ? {workdir} : {}),
    ...(c.Entrypoint?.length ? {entrypoint: c.Entrypoint} : {}),
    ...(c.Cmd?.length ? {cmd: c.Cmd} : {}),
    ...(ports.length ? {exposedPorts: ports} : {}),
    ...(c.User ? {user: c.User} : {}),
    profile: 'ovms-init',
  }
  return {bootstrap: assertBootstrapConfig(bootstrap, 'the image config'), dropped}
}

function noKernel(): AbortError {
  return new AbortError({
    code: 'MISSING_KERNEL',
    message: 'an artifact needs a kernel, and none was given (--kernel) or configured ($OVM_KERNEL)',
    hint:
      'Import one first, e.g. `ovm kernel import /boot/vmlinuz-$(uname -r) --modules /lib/modules/$(uname -r) -t ovm/kernel:local`, ' +
      'then pass --kernel ovm/kernel:local (or export OVM_KERNEL=ovm/kernel:local). Or write a bare image with --output PATH.',
    exitCode: ExitCode.usage,
  })
}

/** The kernel for an artifact: --kernel, else $OVM_KERNEL; a path or a kernel artifact in the store. */
export async function kernelFor(store: LayoutStore, ref: string | undefined, opts: {modules?: string; cwd?: string} = {}): Promise<ResolvedKernel> {
  const k = ref ?? process.env[KERNEL_ENV]
  if (!k) throw noKernel()
  const cwd = opts.cwd ?? process.cwd()
  const isPath = Boolean(opts.modules) || looksLikePath(k) || (await stat(resolve(cwd, k)).then(() => true, () => false))
  return isPath ? resolveKernel(store, resolve(cwd, k), {modules: opts.modules ? resolve(cwd, opts.modules) : undefined, cwd}) : resolveKernel(store, k)
}

/** Flatten an opened image into `root` and make the file system `out`. */
export async function imageToFileSystem(
  src: ImageSource,
  root: string,
  out: string,
  work: string,
  opts: Pick<ConvertOptions, 'fs' | 'size' | 'sizeBuffer' | 'chown' | 'onEvent'>,
): Promise<{fs: RootFs; imageSize: number; contentSize?: number; contentBytes: number; files: number; whiteouts: number; ms: {flatten: number; mkfs: number}}> {
  const t0 = Date.now()
  opts.onEvent?.({type: 'phase', phase: 'flatten', detail: `${src.layers.length} layer(s)`})
  const flat = await flattenLayers(root, src.layers, {...(opts.chown !== undefined ? {chown: opts.chown} : {}), ...(opts.onEvent ? {onEvent: opts.onEvent} : {})})
  const t1 = Date.now()
  const fs = opts.fs ?? 'ext4'
  opts.onEvent?.({type: 'phase', phase: 'mkfs', detail: fs})
  if (fs !== 'ext4' && flat.owners.length > 0) {
    throw new AbortError({
      code: 'OWNERS_NEED_ROOT',
      message: `${src.name}: ${flat.owners.length} file(s) belong to other users, which --fs ${fs} can only record when ovm runs as root`,
      hint: 'Run ovm convert as root, or use --fs ext4 (it sets owners without root).',
      exitCode: ExitCode.usage,
    })
  }
  const made = await makeFileSystem(root, out, work, {
    fs,
    ...(opts.size !== undefined ? {size: opts.size} : {}),
    ...(opts.sizeBuffer !== undefined ? {sizeBuffer: opts.sizeBuffer} : {}),
    xattrs: flat.xattrs,
    owners: flat.owners,
  })
  return {
    fs,
    imageSize: made.size,
    ...(made.contentSize !== undefined ? {contentSize: made.contentSize} : {}),
    contentBytes: made.usage.apparentBytes,
    files: made.usage.inodes,
    whiteouts: flat.whiteouts,
    ms: {flatten: t1 - t0, mkfs: Date.now() - t1},
  }
}

function checkTags(tags: string[]): string[] {
  return tags.map((t) => {
    const n = refName(parseReference(t))
    if (n === undefined) {
      throw new AbortError({code: 'BAD_REFERENCE', message: `-t ${t}: a tag is needed, not a digest`, hint: 'Write -t NAME:TAG.', exitCode: ExitCode.invalid, ref: t})
    }
    return n
  })
}

/** Convert a container image (see the module comment). */
export async function convertImage(store: LayoutStore | undefined, opts: ConvertOptions): Promise<ConvertResult> {
  const t0 = Date.now()
  const tags = opts.tags ?? []
  if ((opts.output === undefined) === (tags.length === 0)) {
    throw new AbortError({
      code: 'CONVERT_TARGET',
      message: opts.output ? 'give either --output or -t, not both' : 'say where the result goes: --output PATH (a bare image) or -t REF (an artifact)',
      hint: 'ovm convert docker://alpine --output alpine.ext4, or ovm convert docker://alpine -t local/alpine:1 --kernel REF.',
      exitCode: ExitCode.usage,
    })
  }
  const names = checkTags(tags)
  const cwd = opts.cwd ?? process.cwd()
  // The kernel first: a missing one fails before anything is fetched.
  let kernel: ResolvedKernel | undefined
  if (tags.length > 0) {
    if (!store) throw new Error('convertImage: a store is needed for -t')
    kernel = await kernelFor(store, opts.kernel, {...(opts.modules ? {modules: opts.modules} : {}), cwd})
  }
  let workParent = tmpdir()
  if (store) {
    await store.init()
    workParent = join(store.root, 'cache')
    await mkdir(workParent, {recursive: true})
  }
  const work = await mkdtemp(join(workParent, store ? 'convert-' : 'ovm-convert-'))
  let src: ImageSource | undefined
  try {
    opts.onEvent?.({type: 'phase', phase: 'fetch', detail: opts.source})
    src = await openImage(opts.source, {...(opts.registry ? {registry: opts.registry} : {}), cwd})
    const {bootstrap} = bootstrapFromImage(src.config)
    const image = join(work, 'rootfs.img')
    const made = await imageToFileSystem(src, join(work, 'root'), image, work, opts)
    // The folder is no longer needed: free its space before the artifact copies.
    await removeTree(join(work, 'root'))
    const base = {
      source: src.name,
      manifestDigest: src.manifestDigest,
      fs: made.fs,
      imageSize: made.imageSize,
      ...(made.contentSize !== undefined ? {contentSize: made.contentSize} : {}),
      contentBytes: made.contentBytes,
      files: made.files,
      whiteouts: made.whiteouts,
      bootstrap,
    }
    const t2 = Date.now()
    if (opts.output !== undefined) {
      const out = resolve(cwd, opts.output)
      const tmp = join(dirname(out), `.${basename(out)}.ovm-${process.pid}`)
      try {
        await rename(image, tmp).catch(async () => copyFile(image, tmp))
        await rename(tmp, out)
      } catch (err) {
        await rm(tmp, {force: true})
        throw fileError(err, out, 'output image')
      }
      return {...base, output: out, ms: {...made.ms, assemble: Date.now() - t2, total: Date.now() - t0}}
    }
    opts.onEvent?.({type: 'phase', phase: 'assemble'})
    const a = await assembleArtifact(store as LayoutStore, {
      image,
      fs: made.fs,
      work,
      kernel: kernel as ResolvedKernel,
      bootstrap,
      names,
      cmdline: opts.cmdline ?? DEFAULT_CMDLINE,
      sourceName: src.name,
      sourceDigest: src.manifestDigest,
      labels: src.config.config?.Labels ?? {},
    })
    return {...base, references: names, digest: a.digest, ms: {...made.ms, assemble: Date.now() - t2, total: Date.now() - t0}}
  } finally {
    await src?.close()
    await removeTree(work)
    await kernel?.cleanup()
  }
}

interface AssembleInput {
  image: string
  fs: RootFs
  work: string
  kernel: ResolvedKernel
  bootstrap: BootstrapConfig
  names: string[]
  cmdline: string
  sourceName: string
  sourceDigest: string
  labels: Record<string, string>
}

/** Kernel, OVMS-Init initramfs, the disk and the bootstrap config → an artifact in the store, tagged last. */
async function assembleArtifact(store: LayoutStore, i: AssembleInput): Promise<{digest: string; ovms: OvmsManifest}> {
  // ext4 becomes qcow2 (its free space costs nothing); the read-only images stay raw.
  let disk = i.image
  if (i.fs === 'ext4') {
    disk = join(i.work, 'rootfs.qcow2')
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', i.image, disk]).catch((err: unknown) => {
      throw new AbortError({code: 'QEMU_IMG_FAILED', message: `qemu-img convert failed: ${(err as {stderr?: string}).stderr ?? err}`, hint: 'Install qemu-utils.', exitCode: ExitCode.engine})
    })
    await rm(i.image, {force: true})
  }
  const info = await probeDiskImage(disk)
  const d = await store.ingest(singleFileTar(`disk.${info.format}`, info.fileSize, createReadStream(disk)), singleFileTarSize(info.fileSize))
  const diskDesc: Descriptor = {
    mediaType: OvmsMediaType.diskLayer,
    digest: d.digest,
    size: d.size,
    annotations: {
      [Annotation.title]: layerTitle('disk', 0),
      [OvmsAnnotation.format]: info.format,
      [OvmsAnnotation.diskSize]: String(info.virtualSize),
      'dev.ovm.rootfs': i.fs,
    },
  }
  const kernelSize = (await stat(i.kernel.kernel)).size
  const k = await store.ingest(createReadStream(i.kernel.kernel), kernelSize)
  const imageName = i.names[0] as string
  const hostname = safeHostname(parseReference(imageName).repository.split('/').pop() ?? 'ovm')
  const initrd = await ovmsInitramfs({modulesDir: i.kernel.modulesDir, bootstrap: i.bootstrap, rootFs: i.fs, hostname})
  const initrdDesc = {...(await store.pushBytes(OvmsMediaType.initrd, initrd.bytes)), annotations: {[Annotation.title]: layerTitle('initrd')}}
  const bootDesc = {...(await store.pushBytes(OvmsMediaType.bootstrapConfig, jsonBytes(i.bootstrap))), annotations: {[Annotation.title]: layerTitle('bootstrap')}}
  const layers: Descriptor[] = [{mediaType: OvmsMediaType.kernel, digest: k.digest, size: k.size, annotations: {[Annotation.title]: layerTitle('kernel')}}, initrdDesc, diskDesc, bootDesc]
  const ref = parseReference(imageName)
  const annotations: Record<string, string> = {}
  for (const [key, v] of Object.entries(i.labels)) if (typeof v === 'string') annotations[key] = v
  annotations['dev.ovm.convert.source'] = i.sourceName
  annotations['dev.ovm.convert.source.digest'] = i.sourceDigest
  const ovms: OvmsManifest = {
    schemaVersion: 1,
    mediaType: OvmsMediaType.manifest,
    name: ref.repository,
    version: ref.tag ?? 'latest',
    kernel: {ref: k.digest, args: i.cmdline},
    initrd: {ref: initrdDesc.digest},
    diskLayers: [{ref: diskDesc.digest, format: info.format, size: info.virtualSize}],
    metadata: {created: createdNow(), platform: {arch: 'x86_64', uefi: false}},
    bootstrap: {ref: bootDesc.digest},
    annotations,
  }
  const built = buildArtifact(ovms, layers)
  await store.push(built.config, built.configBytes)
  await store.push(built.descriptor, built.manifestBytes)
  for (const n of i.names) await store.tag(built.descriptor, n)
  return {digest: built.descriptor.digest, ovms: built.ovms}
}

function createdNow(): string {
  const epoch = process.env.SOURCE_DATE_EPOCH
  const d = epoch && /^\d+$/.test(epoch) ? new Date(Number(epoch) * 1000) : new Date()
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z')
}

export {MiB}
