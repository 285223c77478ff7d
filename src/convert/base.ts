/**
 * `FROM docker://IMAGE [SIZE]` and `FROM oci:PATH[:TAG] [SIZE]` in an
 * Ovmfile (rfc/convert.md §6): the image becomes the build's base disk layer
 * (ext4 in a qcow2, made once per image manifest digest and size, then taken
 * from the build cache), and its config supplies the defaults for env,
 * workdir, entrypoint, cmd, exposed ports and user.
 */
import {execFile} from 'node:child_process'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp} from 'node:fs/promises'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {probeDiskImage} from '../disk/image.js'
import {singleFileTar, singleFileTarSize} from '../disk/tar.js'
import {AbortError, ExitCode} from '../errors/index.js'
import type {LayoutStore} from '../oci/layout.js'
import type {RegistryOptions} from '../oci/remote/client.js'
import {flattenLayers, removeTree} from './flatten.js'
import {MiB, makeFileSystem} from './mkfs.js'
import {type ImageConfig, openImage} from './source.js'

const run = promisify(execFile)

/** Free space a FROM image base gets for the build's steps when the Ovmfile gives no size. */
export const FROM_IMAGE_BUFFER = 1024 * MiB

export interface ImageBase {
  /** The build cache key of the base: the image manifest digest and the size asked for. */
  key: string
  description: string
  config: ImageConfig
  /** Set when the disk was made now (not cached): the layer blob in the store. */
  made?: {digest: string; size: number; format: 'qcow2'; diskSize: number}
}

export async function imageBase(
  store: LayoutStore,
  source: string,
  opts: {size?: number; cwd: string; registry?: RegistryOptions; isCached: (key: string) => Promise<boolean>},
): Promise<ImageBase> {
  const src = await openImage(source, {cwd: opts.cwd, ...(opts.registry ? {registry: opts.registry} : {})})
  try {
    const key = `image:${src.manifestDigest}:${opts.size ?? 'auto'}:ext4`
    const description = `${src.name}@${src.manifestDigest}`
    if (await opts.isCached(key)) return {key, description, config: src.config}
    await store.init()
    await mkdir(join(store.root, 'cache'), {recursive: true})
    const work = await mkdtemp(join(store.root, 'cache', 'convert-'))
    try {
      const root = join(work, 'root')
      const flat = await flattenLayers(root, src.layers)
      const raw = join(work, 'base.raw')
      await makeFileSystem(root, raw, work, {fs: 'ext4', ...(opts.size !== undefined ? {size: opts.size} : {sizeBuffer: FROM_IMAGE_BUFFER}), xattrs: flat.xattrs, owners: flat.owners})
      await removeTree(root)
      const qcow2 = join(work, 'base.qcow2')
      await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2]).catch((err: unknown) => {
        throw new AbortError({code: 'QEMU_IMG_FAILED', message: `qemu-img convert failed: ${(err as {stderr?: string}).stderr ?? err}`, hint: 'Install qemu-utils.', exitCode: ExitCode.engine})
      })
      const info = await probeDiskImage(qcow2)
      const d = await store.ingest(singleFileTar(`disk.${info.format}`, info.fileSize, createReadStream(qcow2)), singleFileTarSize(info.fileSize))
      return {key, description, config: src.config, made: {digest: d.digest, size: d.size, format: 'qcow2', diskSize: info.virtualSize}}
    } finally {
      await removeTree(work)
    }
  } finally {
    await src.close()
  }
}
