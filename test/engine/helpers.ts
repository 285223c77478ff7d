/** Shared helpers for the VM tests: fixtures and a heartbeat initramfs. */
import {execFileSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {gzipSync} from 'node:zlib'

import {S_IFREG, cpioNewc} from '../../src/disk/cpio.js'
import {withFileLock} from '../../src/oci/lock.js'

export const FIXTURES = fileURLToPath(new URL('../.cache/fixtures/', import.meta.url))
export const KERNEL = join(FIXTURES, 'vmlinuz')
export const INITRAMFS = join(FIXTURES, 'initramfs.cpio.gz')

/** Whether the fixtures and QEMU are here; VM tests skip with this reason otherwise. */
export function vmSkipReason(): string | undefined {
  if (!existsSync(KERNEL) || !existsSync(INITRAMFS)) return `fixtures missing in ${FIXTURES} (run bash scripts/fixtures.sh)`
  try {
    execFileSync('qemu-system-x86_64', ['--version'], {stdio: 'ignore'})
  } catch {
    return 'qemu-system-x86_64 not installed'
  }
  return undefined
}


export function heartbeatInit(interval = '1'): string {
  return HEARTBEAT_INIT.replace('sleep 1', `sleep ${interval}`)
}

export const HEARTBEAT_INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo OVM-INIT-OK
i=0
while true; do
  echo "OVM-HEARTBEAT $i"
  i=$((i+1))
  sleep 1
done
`

/**
 * The fixture initramfs with its /init replaced by a loop that prints
 * OVM-INIT-OK then "OVM-HEARTBEAT n" every `interval` seconds (default 1). The kernel unpacks
 * concatenated cpio archives in order, so a second archive overrides /init.
 */
export function heartbeatInitramfs(dir = mkdtempSync(join(tmpdir(), 'ovm-hb-')), interval = '1'): string {
  mkdirSync(dir, {recursive: true})
  const out = join(dir, `heartbeat-${interval}.cpio.gz`)
  if (existsSync(out)) return out
  const cpio = cpioNewc([{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(heartbeatInit(interval))}])
  writeFileSync(out, Buffer.concat([readFileSync(INITRAMFS), gzipSync(cpio)]))
  return out
}

/** Wait until `pred` holds (polling), or fail with `what`. */
export async function until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

export function lastHeartbeat(lines: string[]): number {
  for (let i = lines.length - 1; i >= 0; i--) {
    const m = /OVM-HEARTBEAT (\d+)/.exec(lines[i] as string)
    if (m) return Number(m[1])
  }
  return -1
}

/**
 * Hold a machine-wide lock while a file's VM tests run: vitest runs test
 * files in parallel, and two TCG guests on a 2-core machine slow each other
 * past their timeouts. Returns the release function (call it in afterAll).
 */
export async function holdVmLock(): Promise<() => void> {
  let release!: () => void
  const held = new Promise<void>((r) => {
    release = r
  })
  await new Promise<void>((acquired, failed) => {
    withFileLock(
      join(tmpdir(), 'ovm-vm-tests.lock'),
      async () => {
        acquired()
        await held
      },
      {timeoutMs: 1_200_000},
    ).catch(failed)
  })
  return release
}

/** Stop the daemon `ovm run` started for a store (its pid is in the first line of serve.log). */
export async function stopDaemon(home: string): Promise<void> {
  let pid: number | undefined
  try {
    const m = /pid (\d+)\)/.exec(readFileSync(join(home, 'serve.log'), 'utf8'))
    pid = m ? Number(m[1]) : undefined
  } catch {
    return
  }
  if (!pid) return
  try {
    process.kill(pid, 'SIGTERM')
  } catch {
    return // already gone
  }
  const alive = (): boolean => {
    try {
      process.kill(pid, 0)
      return true
    } catch {
      return false
    }
  }
  await until(() => !alive(), 10_000, 'the daemon to exit').catch(() => undefined)
}
