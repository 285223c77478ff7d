import {open, readFile, stat, unlink} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import {AbortError, ExitCode, isErrno} from '../errors/index.js'

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return isErrno(err, 'EPERM')
  }
}

export interface LockOptions {
  /** Give up after this long (default 30 s). */
  timeoutMs?: number
}

/**
 * Run `fn` holding an exclusive lock file at `path` (created with O_EXCL,
 * holding our pid). A lock left by a dead process is taken over; a live
 * holder is waited for, up to the timeout.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000)
  const token = `${process.pid} ${Date.now()} ${Math.random().toString(36).slice(2)}\n`
  let delay = 2
  for (;;) {
    try {
      const fh = await open(path, 'wx', 0o644)
      try {
        await fh.writeFile(token)
      } finally {
        await fh.close()
      }
      break
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err
    }
    const holder = await readFile(path, 'utf8').catch(() => '')
    const pid = Number.parseInt(holder.split(' ')[0] ?? '', 10)
    if (holder !== '' && !pidAlive(pid)) {
      // Stale: its owner died. Remove it only if it is still the same lock.
      const again = await readFile(path, 'utf8').catch(() => '')
      if (again === holder) await unlink(path).catch(() => undefined)
      continue
    }
    if (holder === '') {
      // Being written right now, or left empty by a crash between open and write.
      const st = await stat(path).catch(() => undefined)
      if (st && Date.now() - st.mtimeMs > 5000) await unlink(path).catch(() => undefined)
    }
    if (Date.now() > deadline) {
      throw new AbortError({
        code: 'STORE_LOCKED',
        message: `the store is locked by another ovm process (pid ${Number.isNaN(pid) ? '?' : pid}): ${path}`,
        hint: 'Wait for the other ovm command to finish. If no ovm is running, delete the lock file.',
        exitCode: ExitCode.conflict,
        ref: path,
      })
    }
    await sleep(delay + Math.random() * delay)
    delay = Math.min(delay * 2, 100)
  }
  try {
    return await fn()
  } finally {
    const cur = await readFile(path, 'utf8').catch(() => '')
    if (cur === token) await unlink(path).catch(() => undefined)
  }
}
