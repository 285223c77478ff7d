/** A writer (and a small reader) for the cpio "newc" format the Linux kernel unpacks as an initramfs. */
import {inflateRawSync} from 'node:zlib'

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

/**
 * The entries of a newc archive up to its trailer (what follows, such as a
 * second archive appended to an initramfs, is not read). Throws on anything
 * that is not newc.
 */
export function readCpioNewc(buf: Buffer): CpioEntry[] {
  const out: CpioEntry[] = []
  let at = 0
  const align = (n: number): number => n + ((4 - (n % 4)) % 4)
  for (;;) {
    if (at + 110 > buf.length) throw new Error(`cpio: archive ends at byte ${at} without a trailer`)
    const magic = buf.toString('ascii', at, at + 6)
    if (magic !== '070701' && magic !== '070702') throw new Error(`cpio: no newc header at byte ${at}`)
    const field = (i: number): number => Number.parseInt(buf.toString('ascii', at + 6 + i * 8, at + 14 + i * 8), 16)
    const mode = field(1)
    const size = field(6)
    const nameSize = field(11)
    const nameAt = at + 110
    const name = buf.toString('utf8', nameAt, nameAt + nameSize - 1)
    const dataAt = align(nameAt + nameSize)
    if (dataAt + size > buf.length) throw new Error(`cpio: ${name} runs past the end of the archive`)
    if (name === 'TRAILER!!!') return out
    const data = buf.subarray(dataAt, dataAt + size)
    out.push({name, mode, uid: field(2), gid: field(3), ...((mode & 0o170000) === S_IFLNK ? {target: data.toString()} : {data})})
    at = align(dataAt + size)
  }
}

/**
 * The first archive of an initramfs, uncompressed: a gzip member is inflated
 * (whatever follows it, such as an appended INITRD, is left alone); an
 * uncompressed newc archive is returned as it is.
 */
export function firstInitramfsArchive(bytes: Buffer): Buffer {
  return splitInitramfs(bytes).first
}

/**
 * An initramfs split after its first archive: `first` uncompressed, `rest`
 * the bytes that follow it as they are (archives appended to it, such as an
 * Ovmfile's INITRD). An uncompressed first archive ends with its trailer
 * record, padded to 512 bytes as cpioNewc pads it.
 */
export function splitInitramfs(bytes: Buffer): {first: Buffer; rest: Buffer} {
  const magic = bytes.length >= 6 ? bytes.toString('ascii', 0, 6) : ''
  if (magic === '070701' || magic === '070702') {
    const trailer = bytes.indexOf('TRAILER!!!\0')
    if (trailer < 0) return {first: bytes, rest: Buffer.alloc(0)}
    let end = trailer + 11
    end += (4 - (end % 4)) % 4
    end += (512 - (end % 512)) % 512
    end = Math.min(end, bytes.length)
    return {first: bytes.subarray(0, end), rest: bytes.subarray(end)}
  }
  if (bytes.length < 18 || bytes[0] !== 0x1f || bytes[1] !== 0x8b || bytes[2] !== 8) throw new Error('initramfs: neither gzip nor a newc cpio archive')
  const flags = bytes[3] as number
  let at = 10
  if (flags & 4) at += 2 + bytes.readUInt16LE(at) // FEXTRA
  for (const bit of [8, 16]) if (flags & bit) at = bytes.indexOf(0, at) + 1 // FNAME, FCOMMENT
  if (flags & 2) at += 2 // FHCRC
  // Raw inflate stops at the end of the deflate stream; then come CRC-32 and size (8 bytes).
  const {buffer, engine} = inflateRawSync(bytes.subarray(at), {info: true}) as unknown as {buffer: Buffer; engine: {bytesWritten: number}}
  return {first: buffer, rest: bytes.subarray(Math.min(bytes.length, at + engine.bytesWritten + 8))}
}
