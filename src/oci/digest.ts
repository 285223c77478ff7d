import {createHash, type Hash} from 'node:crypto'
import {Transform, type TransformCallback} from 'node:stream'

import {AbortError, ExitCode} from '../errors/index.js'

export const DIGEST_RE = /^sha256:[a-f0-9]{64}$/

export function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s)
}

/** Hex part of a sha256 digest; throws a clear error on anything else. */
export function digestHex(digest: string): string {
  if (!isDigest(digest)) {
    throw new AbortError({
      code: 'BAD_DIGEST',
      message: `not a sha256 digest: ${JSON.stringify(digest)}`,
      hint: 'A digest looks like sha256: followed by 64 lowercase hex characters.',
      exitCode: ExitCode.invalid,
      ref: digest,
    })
  }
  return digest.slice('sha256:'.length)
}

/**
 * A pass-through stream that hashes and counts what flows through it.
 * With `expected`, it fails at the end when digest or size disagree, and
 * fails early as soon as more bytes than expected arrive.
 */
export class HashingStream extends Transform {
  private readonly hash: Hash = createHash('sha256')
  size = 0
  digest?: string

  constructor(private readonly expected?: {digest?: string; size?: number}, private readonly label = 'blob') {
    super()
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.size += chunk.length
    if (this.expected?.size !== undefined && this.size > this.expected.size) {
      cb(mismatch(this.label, `more than the expected ${this.expected.size} bytes`))
      return
    }
    this.hash.update(chunk)
    cb(null, chunk)
  }

  override _flush(cb: TransformCallback): void {
    this.digest = `sha256:${this.hash.digest('hex')}`
    const exp = this.expected
    if (exp?.size !== undefined && exp.size !== this.size) {
      cb(mismatch(this.label, `size ${this.size}, expected ${exp.size}`))
      return
    }
    if (exp?.digest !== undefined && exp.digest !== this.digest) {
      cb(mismatch(this.label, `digest ${this.digest}, expected ${exp.digest}`))
      return
    }
    cb()
  }
}

export function mismatch(label: string, what: string): AbortError {
  return new AbortError({
    code: 'DIGEST_MISMATCH',
    message: `${label}: content does not match its descriptor (${what})`,
    hint: 'The content is corrupt or was changed. Fetch it again; for the local store run `ovm store verify`.',
    exitCode: ExitCode.integrity,
    ref: label,
  })
}
