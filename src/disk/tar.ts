import {PassThrough, type Readable} from 'node:stream'

const BLOCK = 512
/** Largest size the 11 octal digits of a ustar header hold; beyond it, base-256. */
const MAX_OCTAL_SIZE = 0o77777777777

function writeOctal(buf: Buffer, offset: number, length: number, value: number): void {
  buf.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'ascii')
}

/** The ustar header for one regular file (GNU base-256 size above 8 GiB). */
export function tarHeader(name: string, size: number, opts: {mode?: number; mtime?: number} = {}): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name longer than 100 bytes: ${name}`)
  const h = Buffer.alloc(BLOCK)
  h.write(name, 0, 100, 'utf8')
  writeOctal(h, 100, 8, opts.mode ?? 0o644)
  writeOctal(h, 108, 8, 0)
  writeOctal(h, 116, 8, 0)
  if (size <= MAX_OCTAL_SIZE) {
    writeOctal(h, 124, 12, size)
  } else {
    h[124] = 0x80
    let v = BigInt(size)
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn)
      v >>= 8n
    }
  }
  writeOctal(h, 136, 12, opts.mtime ?? 0)
  h.write('        ', 148, 8, 'ascii')
  h.write('0', 156, 1, 'ascii')
  h.write('ustar\0', 257, 6, 'ascii')
  h.write('00', 263, 2, 'ascii')
  h.write('root', 265, 32, 'ascii')
  h.write('root', 297, 32, 'ascii')
  let sum = 0
  for (const b of h) sum += b
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii')
  return h
}

/** Bytes a one-file tar of `size` content bytes takes: header, padded data, two zero blocks. */
export function singleFileTarSize(size: number): number {
  return BLOCK + Math.ceil(size / BLOCK) * BLOCK + 2 * BLOCK
}

/**
 * A tar stream holding exactly one regular file whose bytes come from
 * `content` (which must yield exactly `size` bytes).
 */
export function singleFileTar(name: string, size: number, content: Readable, opts: {mode?: number; mtime?: number} = {}): Readable {
  const out = new PassThrough({highWaterMark: 1 << 20})
  const pump = async (): Promise<void> => {
    const write = async (chunk: Buffer): Promise<void> => {
      if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', resolve))
    }
    await write(tarHeader(name, size, opts))
    let seen = 0
    for await (const chunk of content) {
      const b = chunk as Buffer
      seen += b.length
      if (seen > size) throw new Error(`${name}: more than the ${size} bytes announced (file changed while read?)`)
      await write(b)
    }
    if (seen !== size) throw new Error(`${name}: read ${seen} bytes, expected ${size} (file changed while read?)`)
    const pad = (BLOCK - (size % BLOCK)) % BLOCK
    await write(Buffer.alloc(pad + 2 * BLOCK))
    out.end()
  }
  pump().catch((err: unknown) => out.destroy(err as Error))
  return out
}
