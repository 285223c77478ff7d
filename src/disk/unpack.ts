/**
 * From disk layers in the store to files a VMM can open.
 *
 * A disk layer is a one-file tar (src/disk/tar.ts). Each layer is unpacked
 * once into `<store>/cache/disks/<layer-digest-hex>.<format>` (written to a
 * temporary name, then renamed) and shared by every instance. The layers of
 * an artifact form one disk: base first, each later qcow2 backing onto the
 * one below, its backing-file name rewritten to point at the cache file of
 * that layer. A VM writes only to its own throw-away qcow2 overlay.
 */
import {execFile} from 'node:child_process'
import {createWriteStream} from 'node:fs'
import {chmod, mkdir, open, rename, rm, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {Transform} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {promisify} from 'node:util'

import {AbortError, ExitCode} from '../errors/index.js'
import type {Descriptor} from '../oci/descriptor.js'
import {digestHex} from '../oci/digest.js'
import type {LayoutStore} from '../oci/layout.js'

const run = promisify(execFile)

export type ChainFormat = 'qcow2' | 'raw'

export interface DiskLayerRef {
  descriptor: Descriptor
  format: ChainFormat
}

/** The cache folder for unpacked disk layers. */
export function diskCacheDir(store: LayoutStore): string {
  return join(store.root, 'cache', 'disks')
}

export function diskCachePath(store: LayoutStore, digest: string, format: ChainFormat): string {
  return join(diskCacheDir(store), `${digestHex(digest)}.${format}`)
}

/** Parse the size field of a ustar header: octal, or GNU base-256 for large files. */
export function tarEntrySize(header: Buffer): number {
  if (header.length < 512) throw new Error('short tar header')
  const field = header.subarray(124, 136)
  if ((field[0] as number) & 0x80) {
    let v = 0n
    for (let i = 1; i < 12; i++) v = (v << 8n) | BigInt(field[i] as number)
    return Number(v)
  }
  const text = field.toString('ascii').replace(/\0.*$/s, '').trim()
  if (!/^[0-7]+$/.test(text)) throw new Error(`bad tar size field ${JSON.stringify(text)}`)
  return Number.parseInt(text, 8)
}

function layerError(desc: Descriptor, why: string): AbortError {
  return new AbortError({
    code: 'DISK_LAYER_INVALID',
    message: `disk layer ${desc.digest} is not a one-file tar of a disk image: ${why}`,
    hint: 'Repack the artifact with `ovm pack`; `ovm store verify` checks the blobs.',
    exitCode: ExitCode.invalid,
    ref: desc.digest,
  })
}

/** Keep bytes [start, start+length) of a stream. */
function slice(start: number, length: number): Transform {
  let pos = 0
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      const from = Math.max(0, start - pos)
      const to = Math.min(chunk.length, start + length - pos)
      pos += chunk.length
      cb(null, from < to ? chunk.subarray(from, to) : undefined)
    },
  })
}

/**
 * Unpack one disk layer into the cache (once) and return the file's path.
 * `below` is the cache path of the layer under it, which a qcow2 diff is
 * rebased onto (without touching data); a base layer loses any backing file.
 */
export async function unpackDiskLayer(store: LayoutStore, layer: DiskLayerRef, below?: {path: string; format: ChainFormat}): Promise<string> {
  const final = diskCachePath(store, layer.descriptor.digest, layer.format)
  if (await stat(final).then((s) => s.isFile(), () => false)) return final
  await mkdir(diskCacheDir(store), {recursive: true})
  const blob = store.blobPath(layer.descriptor.digest)
  const fh = await open(blob, 'r').catch(() => {
    throw new AbortError({
      code: 'BLOB_NOT_FOUND',
      message: `disk layer ${layer.descriptor.digest} is not in the local store (${store.root})`,
      hint: 'Pull or pack the artifact again.',
      exitCode: ExitCode.notFound,
      ref: layer.descriptor.digest,
    })
  })
  const header = Buffer.alloc(512)
  try {
    await fh.read(header, 0, 512, 0)
  } finally {
    await fh.close()
  }
  if (header.toString('ascii', 257, 262) !== 'ustar') throw layerError(layer.descriptor, 'no ustar header')
  const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '')
  const size = tarEntrySize(header)
  if (name !== `disk.${layer.format}`) throw layerError(layer.descriptor, `its entry is ${JSON.stringify(name)}, expected disk.${layer.format}`)
  if (512 + size > layer.descriptor.size) throw layerError(layer.descriptor, `entry of ${size} bytes overruns the ${layer.descriptor.size}-byte blob`)
  const tmp = `${final}.${process.pid}.${Date.now()}.tmp`
  try {
    // The blob is verified against its digest while read.
    const src = await store.fetch(layer.descriptor)
    await pipeline(src, slice(512, size), createWriteStream(tmp, {mode: 0o644}))
    if (layer.format === 'qcow2') {
      const args = below ? ['rebase', '-u', '-f', 'qcow2', '-b', below.path, '-F', below.format, tmp] : ['rebase', '-u', '-f', 'qcow2', '-b', '', tmp]
      await run('qemu-img', args).catch((err: unknown) => {
        throw layerError(layer.descriptor, `qemu-img rebase failed: ${(err as {stderr?: string}).stderr?.trim() || (err as Error).message}`)
      })
    }
    await chmod(tmp, 0o444)
    await rename(tmp, final)
  } catch (err) {
    await rm(tmp, {force: true})
    throw err
  }
  return final
}

/** Unpack a whole chain (base first); returns the files, base first. */
export async function unpackDiskChain(store: LayoutStore, layers: DiskLayerRef[]): Promise<{path: string; format: ChainFormat}[]> {
  const chain: {path: string; format: ChainFormat}[] = []
  for (const [i, layer] of layers.entries()) {
    if (i > 0 && layer.format !== 'qcow2') {
      throw layerError(layer.descriptor, `layer ${i} of the chain is ${layer.format}; only the base may be raw, diffs must be qcow2`)
    }
    const path = await unpackDiskLayer(store, layer, chain.at(-1))
    chain.push({path, format: layer.format})
  }
  return chain
}

export interface OverlayOptions {
  /**
   * qcow2 cluster size in bytes (qemu-img's default: 64 KiB). A write copies
   * up a whole cluster, so layers meant to hold only what a step wrote use
   * the file system's block size (4 KiB).
   */
  clusterSize?: number
}

/** A qcow2 overlay on top of a chain's top file. */
export async function createOverlay(top: {path: string; format: ChainFormat}, overlay: string, opts: OverlayOptions = {}): Promise<void> {
  const o = opts.clusterSize ? ['-o', `cluster_size=${opts.clusterSize}`] : []
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', ...o, '-b', top.path, '-F', top.format, overlay]).catch((err: unknown) => {
    throw new AbortError({
      code: 'OVERLAY_FAILED',
      message: `cannot create the disk overlay ${overlay} on ${top.path}: ${(err as {stderr?: string}).stderr?.trim() || (err as Error).message}`,
      hint: 'Check free disk space and that qemu-utils is installed.',
      exitCode: ExitCode.engine,
      cause: err,
    })
  })
}
