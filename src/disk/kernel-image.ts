import {stat} from 'node:fs/promises'
import {resolve} from 'node:path'

import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {readHead} from '../util/fs.js'

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/

const KERNEL_HINT = 'Pass a bzImage such as /boot/vmlinuz-*, an uncompressed vmlinux, a Debian linux-image-*.deb, or a folder with boot/ and lib/modules/.'

/**
 * Check a kernel image and read its release when it says (a bzImage carries
 * it in the setup header's kernel_version string; a vmlinux does not here).
 */
export async function probeKernel(path: string, hint = KERNEL_HINT): Promise<{format: 'bzImage' | 'elf'; release?: string}> {
  let head: Buffer
  try {
    const st = await stat(path)
    if (!st.isFile()) throw Object.assign(new Error('EISDIR'), {code: 'EISDIR'})
    head = await readHead(path, 0x4000 + 0x200)
  } catch (err) {
    throw fileError(err, path, 'kernel')
  }
  if (head.length >= 0x206 && head.toString('latin1', 0x202, 0x206) === 'HdrS') {
    const off = head.readUInt16LE(0x20e)
    let release: string | undefined
    if (off > 0) {
      const full = head.length >= off + 0x200 + 64 ? head : await readHead(path, off + 0x200 + 256)
      const start = off + 0x200
      const end = full.indexOf(0, start)
      const text = full.toString('latin1', start, end < 0 ? Math.min(full.length, start + 256) : end)
      const first = text.split(' ')[0]
      if (first && VERSION_RE.test(first)) release = first
    }
    return {format: 'bzImage', release}
  }
  if (head.length >= 4 && head.readUInt32BE(0) === 0x7f454c46) return {format: 'elf'}
  throw new AbortError({
    code: 'NOT_A_KERNEL',
    message: `${resolve(path)} is not a Linux kernel (no bzImage header, not ELF)`,
    hint,
    exitCode: ExitCode.invalid,
    ref: path,
  })
}
