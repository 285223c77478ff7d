import {createReadStream} from 'node:fs'
import {readFile, stat} from 'node:fs/promises'
import {Transform, type Readable} from 'node:stream'

import type {BootstrapConfig, OvmsManifest} from '../artifact/manifest.js'
import {OvmsAnnotation, OvmsMediaType, type RamCompression, layerTitle, ramSnapshotMediaType} from '../artifact/media-types.js'
import {type BuiltArtifact, buildArtifact} from '../artifact/oci.js'
import {assertBootstrapConfig, assertManifest, parseJsonText} from '../artifact/validate.js'
import {type DiskImageInfo, probeDiskImage} from '../disk/image.js'
import {singleFileTar, singleFileTarSize} from '../disk/tar.js'
import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {Annotation, type Descriptor} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import {parseReference, refName} from '../oci/reference.js'
import {readHead} from '../util/fs.js'
import {probeKernel} from '../disk/kernel-image.js'

export interface PackOptions {
  name: string
  version: string
  kernel: string
  initrd?: string
  cmdline?: string
  /** Tar of /lib/modules/<version> (extension). */
  modules?: string
  disks: {path: string; format?: string}[]
  ramSnapshot?: {path: string; compression?: RamCompression}
  bootstrap?: string
  tags: string[]
  author?: string
  /** RFC 3339; defaults to SOURCE_DATE_EPOCH or now. */
  created?: string
  annotations?: Record<string, string>
}

export type PackEvent =
  | {type: 'layer-start'; role: string; path: string; total: number}
  | {type: 'layer-progress'; role: string; path: string; done: number; total: number}
  | {type: 'layer-done'; role: string; path: string; descriptor: Descriptor}
  | {type: 'tagged'; reference: string; digest: string}

export interface PackResult {
  references: string[]
  digest: string
  size: number
  manifest: BuiltArtifact['manifest']
  ovms: OvmsManifest
}

const PLACEHOLDER = `sha256:${'0'.repeat(64)}`

interface Input {
  role: 'kernel' | 'kernel-modules' | 'initrd' | 'disk' | 'bootstrap' | 'ram-snapshot'
  path: string
  size: number
  mediaType: string
  annotations: Record<string, string>
  disk?: DiskImageInfo
}

/** Check every input before anything is written, so a bad pack writes nothing. */
async function collectInputs(opts: PackOptions): Promise<{inputs: Input[]; compression?: RamCompression; bootstrap?: BootstrapConfig}> {
  const inputs: Input[] = []
  const file = async (path: string, what: string): Promise<number> => {
    try {
      const st = await stat(path)
      if (!st.isFile()) throw Object.assign(new Error('EISDIR'), {code: 'EISDIR'})
      return st.size
    } catch (err) {
      throw fileError(err, path, what)
    }
  }
  const title = (role: Input['role'], index = 0, c?: RamCompression): Record<string, string> => ({[Annotation.title]: layerTitle(role, index, c)})

  const kernelSize = await file(opts.kernel, 'kernel')
  await probeKernel(opts.kernel, 'Pass a bzImage such as /boot/vmlinuz-* or an uncompressed vmlinux.')
  inputs.push({role: 'kernel', path: opts.kernel, size: kernelSize, mediaType: OvmsMediaType.kernel, annotations: title('kernel')})
  if (opts.modules) {
    inputs.push({role: 'kernel-modules', path: opts.modules, size: await file(opts.modules, 'kernel modules tar'), mediaType: OvmsMediaType.kernelModules, annotations: title('kernel-modules')})
  }
  if (opts.initrd) {
    inputs.push({role: 'initrd', path: opts.initrd, size: await file(opts.initrd, 'initrd'), mediaType: OvmsMediaType.initrd, annotations: title('initrd')})
  }
  for (const d of opts.disks) {
    const info = await probeDiskImage(d.path, d.format)
    inputs.push({
      role: 'disk',
      path: d.path,
      size: singleFileTarSize(info.fileSize),
      mediaType: OvmsMediaType.diskLayer,
      annotations: {...title('disk', opts.disks.indexOf(d)), [OvmsAnnotation.format]: info.format, [OvmsAnnotation.diskSize]: String(info.virtualSize)},
      disk: info,
    })
  }
  let bootstrap: BootstrapConfig | undefined
  if (opts.bootstrap) {
    const size = await file(opts.bootstrap, 'bootstrap config')
    const text = await readFile(opts.bootstrap, 'utf8')
    bootstrap = assertBootstrapConfig(parseJsonText(text, opts.bootstrap), opts.bootstrap)
    inputs.push({role: 'bootstrap', path: opts.bootstrap, size, mediaType: OvmsMediaType.bootstrapConfig, annotations: title('bootstrap')})
  }
  let compression: RamCompression | undefined
  if (opts.ramSnapshot) {
    const size = await file(opts.ramSnapshot.path, 'RAM snapshot')
    compression = await detectCompression(opts.ramSnapshot.path, opts.ramSnapshot.compression)
    inputs.push({role: 'ram-snapshot', path: opts.ramSnapshot.path, size, mediaType: ramSnapshotMediaType(compression), annotations: title('ram-snapshot', 0, compression)})
  }
  return {inputs, compression, bootstrap}
}

function manifestFor(opts: PackOptions, digests: Map<Input, string>, inputs: Input[], compression?: RamCompression): OvmsManifest {
  const ref = (role: Input['role']): string | undefined => {
    const i = inputs.find((x) => x.role === role)
    return i ? (digests.get(i) ?? PLACEHOLDER) : undefined
  }
  const m: OvmsManifest = {
    schemaVersion: 1,
    mediaType: OvmsMediaType.manifest,
    name: opts.name,
    version: opts.version,
    kernel: {ref: ref('kernel') as string, ...(opts.cmdline ? {args: opts.cmdline} : {})},
  }
  const modules = ref('kernel-modules')
  if (modules) m.kernel!.modules = {ref: modules}
  const initrd = ref('initrd')
  if (initrd) m.initrd = {ref: initrd}
  const disks = inputs.filter((i) => i.role === 'disk')
  if (disks.length > 0) {
    m.diskLayers = disks.map((d) => ({ref: digests.get(d) ?? PLACEHOLDER, format: d.disk!.format, size: d.disk!.virtualSize}))
  }
  const snap = ref('ram-snapshot')
  if (snap) m.ramSnapshot = {ref: snap, compression: compression ?? 'lz4', preload_hint: false, mlock_required: false}
  const boot = ref('bootstrap')
  if (boot) m.bootstrap = {ref: boot}
  m.metadata = {
    ...(opts.author ? {author: opts.author} : {}),
    created: opts.created ?? defaultCreated(),
    platform: {arch: 'x86_64', uefi: false},
  }
  if (opts.annotations && Object.keys(opts.annotations).length > 0) m.annotations = opts.annotations
  return m
}

function defaultCreated(): string {
  const epoch = process.env.SOURCE_DATE_EPOCH
  const d = epoch && /^\d+$/.test(epoch) ? new Date(Number(epoch) * 1000) : new Date()
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z')
}

function progress(role: string, path: string, total: number, emit?: (e: PackEvent) => void): Transform {
  let done = 0
  let last = 0
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      done += chunk.length
      const now = Date.now()
      if (emit && (now - last > 100 || done === total)) {
        last = now
        emit({type: 'layer-progress', role, path, done, total})
      }
      cb(null, chunk)
    },
  })
}

/** Make an OVMS artifact from files on disk and tag it in the local store. */
export async function packArtifact(store: LayoutStore, opts: PackOptions, emit?: (e: PackEvent) => void): Promise<PackResult> {
  if (opts.tags.length === 0) {
    throw new AbortError({code: 'MISSING_TAG', message: 'no tag given', hint: 'Add -t NAME:TAG, e.g. -t example/busybox:1.0.', exitCode: ExitCode.usage})
  }
  const names = opts.tags.map((t) => {
    const n = refName(parseReference(t))
    if (n === undefined) {
      throw new AbortError({code: 'BAD_REFERENCE', message: `-t ${t}: a tag is needed, not a digest`, hint: 'Write -t NAME:TAG.', exitCode: ExitCode.invalid, ref: t})
    }
    return n
  })
  const {inputs, compression} = await collectInputs(opts)
  // Validate the manifest's own fields (name, version, cmdline...) before writing a byte.
  assertManifest(manifestFor(opts, new Map(), inputs, compression), '--name/--version and the other pack flags')

  const digests = new Map<Input, string>()
  const layers: Descriptor[] = []
  for (const input of inputs) {
    emit?.({type: 'layer-start', role: input.role, path: input.path, total: input.size})
    let source: Readable = createReadStream(input.path)
    if (input.disk) {
      source = singleFileTar(`disk.${input.disk.format}`, input.disk.fileSize, source)
    }
    const {digest, size} = await store.ingest(source.pipe(progress(input.role, input.path, input.size, emit)), input.size).catch((err: unknown) => {
      throw err instanceof AbortError ? err : fileError(err, input.path, input.role)
    })
    digests.set(input, digest)
    const desc: Descriptor = {mediaType: input.mediaType, digest, size, annotations: input.annotations}
    layers.push(desc)
    emit?.({type: 'layer-done', role: input.role, path: input.path, descriptor: desc})
  }
  const ovms = manifestFor(opts, digests, inputs, compression)
  const built = buildArtifact(ovms, layers)
  await store.push(built.config, built.configBytes)
  await store.push(built.descriptor, built.manifestBytes)
  for (const name of names) {
    await store.tag(built.descriptor, name)
    emit?.({type: 'tagged', reference: name, digest: built.descriptor.digest})
  }
  return {references: names, digest: built.descriptor.digest, size: built.descriptor.size, manifest: built.manifest, ovms: built.ovms}
}

async function detectCompression(path: string, declared?: RamCompression): Promise<RamCompression> {
  const head = await readHead(path, 4)
  const magic = head.length === 4 ? head.readUInt32LE(0) : 0
  const found: RamCompression = magic === 0x184d2204 ? 'lz4' : magic === 0xfd2fb528 ? 'zstd' : 'none'
  if (declared && declared !== found) {
    throw new AbortError({
      code: 'RAM_SNAPSHOT_COMPRESSION',
      message: `RAM snapshot ${path} was declared ${declared} but its content is ${found === 'none' ? 'not lz4 or zstd' : found}`,
      hint: 'Leave out --ram-snapshot-compression to detect it, or compress the file first (lz4 or zstd).',
      exitCode: ExitCode.invalid,
      ref: path,
    })
  }
  return found
}
