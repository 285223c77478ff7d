/**
 * A file system image from a flattened root folder, without mounting
 * anything (rfc/convert.md §3).
 *
 * - ext4 (default): `mke2fs -t ext4 -d DIR`, sized to the content plus a
 *   buffer (or an exact `--size`). mke2fs copies modes, owners, times,
 *   symlinks, hard links and the host folder's xattrs; extra xattrs from
 *   the layers' PAX records and, when the folder could not be chowned (not
 *   root), the owners are written afterwards with `debugfs -w`.
 * - erofs (`mkfs.erofs`, lz4hc) and squashfs (`mksquashfs`, gzip): read-only
 *   images; OVMS-Init puts a tmpfs overlay on top so the root is writable.
 */
import {execFile} from 'node:child_process'
import {lstat, readdir, rm, stat, truncate, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {AbortError, ExitCode} from '../errors/index.js'
import type {OwnerRecord, XattrRecord} from './flatten.js'

const run = promisify(execFile)

export type RootFs = 'ext4' | 'erofs' | 'squashfs'

export const MiB = 1024 * 1024
const BLOCK = 4096

export interface TreeUsage {
  /** Bytes of data rounded up to 4 KiB blocks (hard links counted once). */
  dataBytes: number
  inodes: number
  /** Plain sum of file sizes. */
  apparentBytes: number
}

/** Walk the tree without following symlinks. */
export async function treeUsage(root: string): Promise<TreeUsage> {
  const seen = new Set<number>()
  const u: TreeUsage = {dataBytes: BLOCK, inodes: 1, apparentBytes: 0}
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, {withFileTypes: true})) {
      const p = join(dir, e.name)
      const st = await lstat(p)
      if (st.nlink > 1 && !st.isDirectory()) {
        if (seen.has(st.ino)) continue
        seen.add(st.ino)
      }
      u.inodes++
      if (st.isDirectory()) {
        u.dataBytes += BLOCK
        await walk(p)
      } else if (st.isFile()) {
        u.apparentBytes += st.size
        u.dataBytes += Math.ceil(st.size / BLOCK) * BLOCK
        // Extent tree blocks of large, fragmented files.
        if (st.size > 128 * MiB) u.dataBytes += BLOCK * Math.ceil(st.size / (128 * MiB))
      } else if (st.isSymbolicLink() && st.size >= 60) {
        u.dataBytes += BLOCK
      }
    }
  }
  await walk(root)
  return u
}

/** ext4 journal mke2fs chooses for a size (ext2fs_default_journal_size, in bytes). */
function journalBytes(size: number): number {
  const blocks = size / BLOCK
  if (blocks < 2048) return 0
  if (blocks < 32768) return 1024 * BLOCK
  if (blocks < 256 * 1024) return 4096 * BLOCK
  if (blocks < 512 * 1024) return 8192 * BLOCK
  if (blocks < 4096 * 1024) return 16384 * BLOCK
  return 32768 * BLOCK
}

/** The smallest ext4 size (MiB-aligned) that holds `u`, before the buffer. */
export function ext4ContentSize(u: TreeUsage): number {
  const inodes = Math.ceil(u.inodes * 1.1) + 64
  let size = u.dataBytes + inodes * 256
  // Bitmaps, group descriptors, directory growth, reserved GDT: about 3 %, and at least 2 MiB.
  size += Math.max(2 * MiB, Math.ceil(size * 0.03))
  size += journalBytes(size * 1.2)
  return Math.ceil(size / MiB) * MiB
}

export interface MkfsOptions {
  fs: RootFs
  /** Exact size in bytes (ext4 only). */
  size?: number
  /** Free space on top of the content (ext4 only; default 256 MiB). */
  sizeBuffer?: number
  xattrs?: XattrRecord[]
  owners?: OwnerRecord[]
  label?: string
}

export interface MkfsResult {
  fs: RootFs
  /** The image file's size in bytes (ext4: the file system size). */
  size: number
  usage: TreeUsage
  /** ext4: the size the content alone needs. */
  contentSize?: number
}

function mkfsError(tool: string, err: unknown, hint: string): AbortError {
  const e = err as {code?: string; stderr?: string; message?: string}
  if (e.code === 'ENOENT') {
    return new AbortError({code: 'MKFS_MISSING', message: `${tool} is not installed`, hint, exitCode: ExitCode.engine})
  }
  return new AbortError({code: 'MKFS_FAILED', message: `${tool} failed: ${(e.stderr ?? e.message ?? String(err)).trim()}`, hint, exitCode: ExitCode.engine})
}

function debugfsQuote(path: string): string {
  if (/["\n\\]/.test(path)) {
    throw new AbortError({
      code: 'PATH_UNSUPPORTED',
      message: `cannot set owner or xattrs on ${JSON.stringify(path)} (a quote, backslash or line break in the name)`,
      hint: 'Convert as root so owners are set on the folder directly, or rename the file in the image.',
      exitCode: ExitCode.invalid,
      ref: path,
    })
  }
  return `"${path}"`
}

/** Write owners and xattrs into an ext4 image with one `debugfs -w -f` script. */
async function debugfsFixups(image: string, work: string, owners: OwnerRecord[], xattrs: XattrRecord[]): Promise<void> {
  if (owners.length === 0 && xattrs.length === 0) return
  const lines: string[] = []
  for (const o of owners) {
    const p = debugfsQuote(o.path)
    lines.push(`sif ${p} uid ${o.uid}`, `sif ${p} gid ${o.gid}`)
  }
  for (const [i, x] of xattrs.entries()) {
    const vf = join(work, `xattr-${i}`)
    await writeFile(vf, x.value)
    lines.push(`ea_set -f ${vf} ${debugfsQuote(x.path === '/' ? '/' : x.path)} ${x.name}`)
  }
  const script = join(work, 'debugfs.cmds')
  await writeFile(script, `${lines.join('\n')}\n`)
  const {stderr} = await run('debugfs', ['-w', '-f', script, image], {maxBuffer: 64 * MiB}).catch((err: unknown) => {
    throw mkfsError('debugfs', err, 'Install e2fsprogs.')
  })
  // debugfs reports per-command failures on stderr and still exits 0.
  const failures = stderr.split('\n').filter((l) => l.trim() !== '' && !/^debugfs \d/.test(l))
  if (failures.length > 0) {
    throw new AbortError({code: 'MKFS_FAILED', message: `debugfs could not set owners/xattrs: ${failures.slice(0, 3).join('; ')}`, hint: 'Convert as root, or report this with the image name.', exitCode: ExitCode.engine})
  }
}

/** Make `out` (a new file) from `root`. `work` is a scratch folder. */
export async function makeFileSystem(root: string, out: string, work: string, opts: MkfsOptions): Promise<MkfsResult> {
  const usage = await treeUsage(root)
  if (opts.fs === 'erofs') {
    if (opts.size !== undefined) throw sizeNotFor('erofs')
    await run('mkfs.erofs', ['-zlz4hc', '-T0', ...(opts.label ? ['-L', opts.label] : []), out, root], {maxBuffer: 64 * MiB}).catch((err: unknown) => {
      throw mkfsError('mkfs.erofs', err, "Install Debian's erofs-utils, or use --fs ext4.")
    })
    return {fs: 'erofs', size: (await stat(out)).size, usage}
  }
  if (opts.fs === 'squashfs') {
    if (opts.size !== undefined) throw sizeNotFor('squashfs')
    await run('mksquashfs', [root, out, '-noappend', '-no-progress', '-quiet', '-comp', 'gzip', '-mkfs-time', '0', '-all-time', '0'], {maxBuffer: 64 * MiB}).catch((err: unknown) => {
      throw mkfsError('mksquashfs', err, "Install Debian's squashfs-tools, or use --fs ext4.")
    })
    return {fs: 'squashfs', size: (await stat(out)).size, usage}
  }
  const contentSize = ext4ContentSize(usage)
  let size = opts.size ?? contentSize + Math.ceil((opts.sizeBuffer ?? 256 * MiB) / MiB) * MiB
  if (opts.size !== undefined && opts.size < contentSize) {
    throw new AbortError({
      code: 'SIZE_TOO_SMALL',
      message: `--size ${Math.round(opts.size / MiB)}M is smaller than the image's content needs (about ${Math.round(contentSize / MiB)}M)`,
      hint: `Give --size ${Math.ceil((contentSize * 1.1) / MiB)}M or more, or leave --size out and use --size-buffer.`,
      exitCode: ExitCode.invalid,
    })
  }
  for (let attempt = 0; ; attempt++) {
    await rm(out, {force: true})
    await writeFile(out, '')
    await truncate(out, size)
    const inodes = Math.max(Math.ceil(size / 16384), Math.ceil(usage.inodes * 1.2) + 256)
    try {
      await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', String(BLOCK), '-m', '0', '-N', String(inodes), '-L', opts.label ?? 'ovm-root', '-E', 'root_owner=0:0', '-d', root, out], {
        maxBuffer: 64 * MiB,
      })
      break
    } catch (err) {
      const text = String((err as {stderr?: string}).stderr ?? '')
      const full = /Could not allocate|No space left|allocating|too small/i.test(text)
      if (full && opts.size === undefined && attempt < 3) {
        size = Math.ceil((size * 1.5) / MiB) * MiB
        continue
      }
      if (full) {
        throw new AbortError({
          code: 'SIZE_TOO_SMALL',
          message: `the image's content does not fit in --size ${Math.round(size / MiB)}M`,
          hint: 'Give a larger --size, or leave --size out and use --size-buffer.',
          exitCode: ExitCode.invalid,
        })
      }
      throw mkfsError('mke2fs', err, 'Install e2fsprogs (1.43 or later, for -d).')
    }
  }
  await debugfsFixups(out, work, opts.owners ?? [], opts.xattrs ?? [])
  return {fs: 'ext4', size, usage, contentSize}
}

function sizeNotFor(fs: string): AbortError {
  return new AbortError({
    code: 'SIZE_NOT_APPLICABLE',
    message: `--size does not apply to ${fs}: it is a read-only image as large as its content`,
    hint: 'Leave --size out (the VM writes to a tmpfs overlay), or use --fs ext4.',
    exitCode: ExitCode.usage,
  })
}
