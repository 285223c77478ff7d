/** A writer for the cpio "newc" format the Linux kernel unpacks as an initramfs. */

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string
  /** File type and permission bits, e.g. 0o100755 for an executable file. */
  mode: number
  data?: Buffer
  /** For symlinks: the target. */
  target?: string
  uid?: number
  gid?: number
  /** For device nodes. */
  rdevMajor?: number
  rdevMinor?: number
}

export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000
export const S_IFCHR = 0o020000

const hex = (n: number): string => n.toString(16).padStart(8, '0')
const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4)

function record(ino: number, e: CpioEntry): Buffer[] {
  const body = e.target !== undefined ? Buffer.from(e.target) : (e.data ?? Buffer.alloc(0))
  const name = Buffer.from(`${e.name}\0`)
  const header = Buffer.from(
    '070701' +
      [ino, e.mode, e.uid ?? 0, e.gid ?? 0, 1, 0, body.length, 0, 0, e.rdevMajor ?? 0, e.rdevMinor ?? 0, name.length, 0].map(hex).join(''),
    'ascii',
  )
  return [header, name, pad4(header.length + name.length), body, pad4(body.length)]
}

/**
 * A newc archive of `entries` (deterministic: fixed mtimes, inode numbers in
 * order, parents are the caller's business), ending with the trailer.
 */
export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = []
  entries.forEach((e, i) => parts.push(...record(i + 1, e)))
  parts.push(...record(0, {name: 'TRAILER!!!', mode: 0}))
  const out = Buffer.concat(parts)
  return Buffer.concat([out, Buffer.alloc((512 - (out.length % 512)) % 512)])
}
