/**
 * Retries with exponential back-off and full jitter, bounded in count and in
 * time. Retried: connection errors, 408, 429 and 5xx (not 501/505). Never
 * retried: any other 4xx, which will not change by asking again.
 */

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  maxAttempts: number
  baseDelayMs: number
  maxDelayMs: number
  /** No new attempt starts after this long since the first. */
  maxElapsedMs: number
}

export const defaultRetryPolicy: RetryPolicy = {maxAttempts: 6, baseDelayMs: 200, maxDelayMs: 10_000, maxElapsedMs: 120_000}

const RETRYABLE_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ENETDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
  'PREMATURE_END',
])

export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505)
}

export function isRetryableError(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const code = (err as {code?: unknown}).code
  if (typeof code === 'string' && RETRYABLE_CODES.has(code)) return true
  const msg = (err as {message?: unknown}).message
  return typeof msg === 'string' && /^(aborted|socket hang up|other side closed)$/i.test(msg)
}

/** `Retry-After` as milliseconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined
  const v = value.trim()
  if (/^\d+$/.test(v)) return Number.parseInt(v, 10) * 1000
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : Math.max(0, t - now)
}

/** Delay before attempt `attempt + 1` (attempt counts from 1). A server's Retry-After wins, capped at maxDelayMs. */
export function backoffDelay(attempt: number, policy: RetryPolicy, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxDelayMs)
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1))
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2)
}

/** Tracks one operation's attempts against a policy. */
export class RetryBudget {
  attempts = 0
  private readonly started = Date.now()

  constructor(readonly policy: RetryPolicy) {}

  /** Count an attempt; false when the budget is spent. */
  next(): boolean {
    if (this.attempts >= this.policy.maxAttempts) return false
    if (this.attempts > 0 && Date.now() - this.started > this.policy.maxElapsedMs) return false
    this.attempts++
    return true
  }

  get exhausted(): boolean {
    return this.attempts >= this.policy.maxAttempts || Date.now() - this.started > this.policy.maxElapsedMs
  }

  async wait(retryAfterMs?: number): Promise<void> {
    const ms = backoffDelay(Math.max(1, this.attempts), this.policy, retryAfterMs)
    const left = this.policy.maxElapsedMs - (Date.now() - this.started)
    await sleep(Math.max(0, Math.min(ms, left)))
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}
