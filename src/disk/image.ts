import {open} from 'node:fs/promises'

import {AbortError, ExitCode, fileError} from '../errors/index.js'

export type ImageFormat = 'qcow2' | 'raw'

export interface DiskImageInfo {
  path: string
  format: ImageFormat
  /** Bytes of the file itself. */
  fileSize: number
  /** The disk's virtual size (what the guest sees). */
  virtualSize: number
}

const QCOW2_MAGIC = 0x514649fb // "QFI\xfb"

/** Identify a disk image by its content, and check it against a declared format. */
export async function probeDiskImage(path: string, declared?: string): Promise<DiskImageInfo> {
  if (declared !== undefined && declared !== 'qcow2' && declared !== 'raw') {
    throw new AbortError({
      code: 'UNKNOWN_DISK_FORMAT',
      message: `unknown disk format ${JSON.stringify(declared)} for ${path}`,
      hint: 'Write --disk FILE:qcow2 or --disk FILE:raw, or leave the format out to detect it.',
      exitCode: ExitCode.invalid,
      ref: path,
    })
  }
  let fh
  try {
    fh = await open(path, 'r')
  } catch (err) {
    throw fileError(err, path, 'disk image')
  }
  try {
    const st = await fh.stat()
    if (!st.isFile()) throw fileError(Object.assign(new Error('EISDIR'), {code: 'EISDIR'}), path, 'disk image')
    const head = Buffer.alloc(32)
    const {bytesRead} = await fh.read(head, 0, 32, 0)
    const isQcow2 = bytesRead >= 32 && head.readUInt32BE(0) === QCOW2_MAGIC
    const format: ImageFormat = isQcow2 ? 'qcow2' : 'raw'
    if (declared === 'qcow2' && !isQcow2) {
      throw new AbortError({
        code: 'DISK_FORMAT_MISMATCH',
        message: `${path} was declared qcow2 but has no qcow2 header`,
        hint: 'Drop the :qcow2 suffix (ovm detects the format) or convert the image with qemu-img convert -O qcow2.',
        exitCode: ExitCode.invalid,
        ref: path,
      })
    }
    if (declared === 'raw' && isQcow2) {
      throw new AbortError({
        code: 'DISK_FORMAT_MISMATCH',
        message: `${path} was declared raw but is a qcow2 image`,
        hint: 'Use --disk FILE:qcow2 (or no suffix) for qcow2 images.',
        exitCode: ExitCode.invalid,
        ref: path,
      })
    }
    if (st.size === 0) {
      throw new AbortError({code: 'DISK_EMPTY', message: `disk image ${path} is empty`, hint: 'Name a non-empty image.', exitCode: ExitCode.invalid, ref: path})
    }
    const virtualSize = isQcow2 ? Number(head.readBigUInt64BE(24)) : st.size
    return {path, format, fileSize: st.size, virtualSize}
  } finally {
    await fh.close()
  }
}
