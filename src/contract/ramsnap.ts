/**
 * RAM snapshots as OVMS artifacts.
 *
 * Publishing: the engine's snapshot folder (snapshot.json, state.bin,
 * memory.raw) becomes one `application/vnd.ovms.ramsnap.v1+lz4` layer (an
 * lz4-compressed sparse tar), the disk overlay captured at the same instant
 * becomes one more qcow2 disk layer on top of the chain, and the new
 * artifact's `subject` is the artifact the instance started from. The
 * snapshot's signature (engine, version, machine, CPU model) is also written
 * as OVMS manifest annotations, so a runtime can refuse it before unpacking.
 *
 * Restoring: the layer is unpacked once into `<store>/cache/ramsnap/<hex>/`
 * (a temporary folder, then renamed) and restored from there; the engine
 * never writes those files.
 */
import {spawn} from 'node:child_process'
import {createReadStream} from 'node:fs'
import {mkdir, readdir, rename, rm, stat} from 'node:fs/promises'
import {basename, join} from 'node:path'
import {PassThrough, type Readable} from 'node:stream'

import type {OvmsManifest} from '../artifact/manifest.js'
import type {LoadedArtifact} from '../artifact/load.js'
import {OvmsAnnotation, OvmsMediaType, layerTitle} from '../artifact/media-types.js'
import {buildArtifact} from '../artifact/oci.js'
import {singleFileTar, singleFileTarSize} from '../disk/tar.js'
import {SNAPSHOT_FORMAT_VERSION} from '../engine/qemu/engine.js'
import type {SnapshotInfo, SnapshotSignature} from '../engine/types.js'
import {AbortError, ExitCode, isErrno} from '../errors/index.js'
import {Annotation, type Descriptor} from '../oci/descriptor.js'
import {digestHex} from '../oci/digest.js'
import type {LayoutStore} from '../oci/layout.js'

/** OVMS manifest annotations carrying the snapshot's signature (extension, rfc/runtime.md). */
export const SnapshotAnnotation = {
  engine: 'dev.ovm.snapshot.engine',
  engineVersion: 'dev.ovm.snapshot.engine-version',
  machine: 'dev.ovm.snapshot.machine',
  cpuModel: 'dev.ovm.snapshot.cpu-model',
  accel: 'dev.ovm.snapshot.accel',
  memoryMiB: 'dev.ovm.snapshot.memory-mib',
  cpus: 'dev.ovm.snapshot.cpus',
} as const

export function signatureAnnotations(sig: SnapshotSignature): Record<string, string> {
  return {
    [SnapshotAnnotation.engine]: sig.engine,
    [SnapshotAnnotation.engineVersion]: sig.engineVersion,
    [SnapshotAnnotation.machine]: sig.machine,
    [SnapshotAnnotation.cpuModel]: sig.cpuModel,
    [SnapshotAnnotation.accel]: sig.accel,
    [SnapshotAnnotation.memoryMiB]: String(sig.memoryMiB),
    [SnapshotAnnotation.cpus]: String(sig.cpus),
  }
}

/** The signature recorded in an artifact's annotations, when all of it is there. */
export function signatureFromAnnotations(a: Record<string, string> | undefined): SnapshotSignature | undefined {
  if (!a) return undefined
  const get = (k: string): string | undefined => a[k]
  const engine = get(SnapshotAnnotation.engine)
  const accel = get(SnapshotAnnotation.accel)
  const fields = [engine, get(SnapshotAnnotation.engineVersion), get(SnapshotAnnotation.machine), get(SnapshotAnnotation.cpuModel), accel, get(SnapshotAnnotation.memoryMiB), get(SnapshotAnnotation.cpus)]
  if (fields.some((f) => f === undefined)) return undefined
  if ((engine !== 'qemu' && engine !== 'kvm') || (accel !== 'kvm' && accel !== 'tcg')) return undefined
  return {
    formatVersion: SNAPSHOT_FORMAT_VERSION,
    engine,
    engineVersion: get(SnapshotAnnotation.engineVersion) as string,
    machine: get(SnapshotAnnotation.machine) as string,
    cpuModel: get(SnapshotAnnotation.cpuModel) as string,
    accel,
    memoryMiB: Number(get(SnapshotAnnotation.memoryMiB)),
    cpus: Number(get(SnapshotAnnotation.cpus)),
    arch: 'x86_64',
  }
}

/**
 * The output of a pipeline of processes (`a | b | …`) as a stream that ends
 * only when every process has exited 0, and fails otherwise: a tar that dies
 * halfway must not leave a short, well-formed-looking blob.
 */
function pipelineStream(cmds: {cmd: string; args: string[]; cwd?: string}[]): Readable {
  const out = new PassThrough()
  let prev: Readable | undefined
  const exits: Promise<void>[] = []
  const errors: string[] = []
  for (const c of cmds) {
    const p = spawn(c.cmd, c.args, {cwd: c.cwd, stdio: [prev ? 'pipe' : 'ignore', 'pipe', 'pipe']})
    if (prev) prev.pipe(p.stdin!)
    p.stdin?.on('error', () => undefined)
    p.stderr!.on('data', (d: Buffer) => errors.push(d.toString().trim()))
    exits.push(
      new Promise((resolve, reject) => {
        p.on('error', reject)
        p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${c.cmd} exited with ${code}${errors.length ? `: ${errors.join('; ')}` : ''}`))))
      }),
    )
    prev = p.stdout!
  }
  prev!.pipe(out, {end: false})
  const drained = new Promise<void>((resolve) => prev!.on('end', resolve))
  Promise.all([...exits, drained]).then(
    () => out.end(),
    (err: unknown) => out.destroy(err as Error),
  )
  return out
}

function runPipeline(cmds: {cmd: string; args: string[]; cwd?: string}[], stdin?: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    let prev: Readable | undefined = stdin
    const children: ReturnType<typeof spawn>[] = []
    // A blob that fails its digest check while read fails the unpack (and ends the processes).
    stdin?.on('error', (err) => {
      for (const c of children) c.kill('SIGKILL')
      reject(err)
    })
    let remaining = cmds.length
    const errors: string[] = []
    let failed = false
    for (const c of cmds) {
      const p = spawn(c.cmd, c.args, {cwd: c.cwd, stdio: [prev ? 'pipe' : 'ignore', 'pipe', 'pipe']})
      children.push(p)
      p.stdin?.on('error', () => undefined)
      if (prev) prev.pipe(p.stdin!)
      p.stderr!.on('data', (d: Buffer) => errors.push(d.toString().trim()))
      prev = p.stdout!
      p.on('error', reject)
      p.on('exit', (code) => {
        if (code !== 0) {
          failed = true
          errors.push(`${c.cmd} exited with ${code}`)
        }
        if (--remaining === 0) {
          if (failed) reject(new Error(errors.filter(Boolean).join('; ')))
          else resolve()
        }
      })
    }
    prev?.resume()
  })
}

export interface PublishResult {
  descriptor: Descriptor
  reference?: string
  newBytes: number
}

/** Turn an engine snapshot into an artifact in the store (tagged when `tag`), subject = the source artifact. */
export async function publishSnapshot(store: LayoutStore, source: LoadedArtifact, info: SnapshotInfo, tag?: string): Promise<PublishResult> {
  // 1. RAM snapshot layer: sparse tar of the folder, lz4-compressed.
  // Everything but the disk diffs, which become a disk layer of their own.
  const diffNames = new Set(info.diskDiffs.map((p) => basename(p)))
  const files = (await readdir(info.dir)).filter((f) => !diffNames.has(f)).sort()
  const tarLz4 = pipelineStream([
    {cmd: 'tar', args: ['-cSf', '-', '--owner=0', '--group=0', ...files], cwd: info.dir},
    {cmd: 'lz4', args: ['-1', '-q', '-c']},
  ])
  const ram = await store.ingest(tarLz4)
  const ramDesc: Descriptor = {mediaType: OvmsMediaType.ramSnapshotLz4, digest: ram.digest, size: ram.size, annotations: {[Annotation.title]: layerTitle('ram-snapshot', 0, 'lz4')}}
  let newBytes = ram.size

  // 2. The disk diff captured at the same instant: one more qcow2 layer.
  const keep = source.layers.filter((l) => l.role !== 'ram-snapshot')
  const layers: Descriptor[] = keep.map((l) => l.descriptor)
  const ovms: OvmsManifest = structuredClone(source.ovms)
  delete ovms.ramSnapshot
  const disks = [...(ovms.diskLayers ?? [])]
  for (const diff of info.diskDiffs) {
    const st = await stat(diff)
    const tar = singleFileTar('disk.qcow2', st.size, createReadStream(diff))
    const got = await store.ingest(tar, singleFileTarSize(st.size))
    const virtualSize = disks.at(-1)?.size
    const desc: Descriptor = {
      mediaType: OvmsMediaType.diskLayer,
      digest: got.digest,
      size: got.size,
      annotations: {
        [Annotation.title]: layerTitle('disk', disks.length),
        [OvmsAnnotation.format]: 'qcow2',
        ...(virtualSize ? {[OvmsAnnotation.diskSize]: String(virtualSize)} : {}),
      },
    }
    layers.push(desc)
    disks.push({ref: got.digest, format: 'qcow2', ...(virtualSize ? {size: virtualSize} : {})})
    newBytes += got.size
  }
  if (disks.length > 0) ovms.diskLayers = disks
  layers.push(ramDesc)
  ovms.ramSnapshot = {ref: ram.digest, compression: 'lz4', preload_hint: false, mlock_required: false}
  ovms.annotations = {...ovms.annotations, ...signatureAnnotations(info.signature)}
  const created = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z')
  ovms.metadata = {...ovms.metadata, created}

  const built = buildArtifact(ovms, layers, {created, subject: source.descriptor})
  await store.push(built.config, built.configBytes)
  await store.push(built.descriptor, built.manifestBytes)
  if (tag) await store.tag(built.descriptor, tag)
  else await store.addUntagged(built.descriptor)
  return {descriptor: built.descriptor, reference: tag, newBytes}
}

/** The digest/size error of a blob in the store, or undefined when it is intact. */
async function blobIntegrityError(store: LayoutStore, desc: Descriptor): Promise<Error | undefined> {
  try {
    for await (const _ of await store.fetch(desc)) {
      // drain: the stream fails at its end on a mismatch
    }
    return undefined
  } catch (err) {
    return err as Error
  }
}

export function ramSnapshotCacheDir(store: LayoutStore, digest: string): string {
  return join(store.root, 'cache', 'ramsnap', digestHex(digest))
}

/** Unpack a RAM snapshot layer once into the cache; returns the folder. */
export async function unpackRamSnapshot(store: LayoutStore, desc: Descriptor): Promise<string> {
  const final = ramSnapshotCacheDir(store, desc.digest)
  if (await stat(join(final, 'snapshot.json')).then(() => true, () => false)) return final
  if (desc.mediaType !== OvmsMediaType.ramSnapshotLz4 && desc.mediaType !== OvmsMediaType.ramSnapshotNone && desc.mediaType !== OvmsMediaType.ramSnapshotZstd) {
    throw new AbortError({code: 'UNKNOWN_MEDIA_TYPE', message: `RAM snapshot ${desc.digest} has media type ${desc.mediaType}`, hint: 'Take the snapshot again with `ovm snapshot`.', exitCode: ExitCode.invalid})
  }
  const tmp = `${final}.${process.pid}.${Date.now()}.tmp`
  await mkdir(tmp, {recursive: true})
  try {
    const src = await store.fetch(desc) // digest-verified while read
    const decompress =
      desc.mediaType === OvmsMediaType.ramSnapshotLz4 ? [{cmd: 'lz4', args: ['-d', '-q', '-c']}] : desc.mediaType === OvmsMediaType.ramSnapshotZstd ? [{cmd: 'zstd', args: ['-d', '-q', '-c']}] : []
    await runPipeline([...decompress, {cmd: 'tar', args: ['-xSf', '-', '--no-same-owner'], cwd: tmp}], src)
    if (!(await stat(join(tmp, 'snapshot.json')).then(() => true, () => false))) throw new Error('no snapshot.json inside')
    try {
      await rename(tmp, final)
    } catch (err) {
      // Another restore unpacked it first: keep theirs (a VM may be using it), drop ours.
      if (!isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'EEXIST')) throw err
      await rm(tmp, {recursive: true, force: true})
    }
  } catch (err) {
    await rm(tmp, {recursive: true, force: true})
    // Which came first, a tool's complaint or the digest check, is a race: on failure, check the blob itself.
    const integrity = await blobIntegrityError(store, desc)
    throw new AbortError({
      code: 'SNAPSHOT_INVALID',
      message: `cannot unpack RAM snapshot ${desc.digest}: ${(integrity ?? (err as Error)).message}`,
      hint: 'Take the snapshot again, or boot the artifact it came from (cold boot).',
      exitCode: ExitCode.engine,
      cause: err,
    })
  }
  return final
}
