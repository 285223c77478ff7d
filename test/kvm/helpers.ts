/**
 * Shared helpers for the KVM tests (test/kvm/*.test.ts).
 *
 * These tests need a /dev/kvm that really runs guest code. CI runs them inside
 * the nested harness (scripts/nested-kvm.sh, `npm run test:kvm`); anywhere
 * else they skip with the reason kvmSkipReason() gives. Use it like this:
 *
 *   const skip = await kvmSkipReason()
 *   describe.skipIf(skip !== undefined)(kvmTitle('my engine', skip), () => { ... })
 */
import {execFile, execFileSync} from 'node:child_process'
import {closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

export const REPO = fileURLToPath(new URL('../../', import.meta.url))
export const PROBE_SRC = join(REPO, 'test', 'nested', 'kvm-probe.c')
/** Where scripts/nested-kvm.sh also builds it. */
export const PROBE = join(REPO, 'test', '.cache', 'nested', 'kvm-probe')
/** Seconds the probe gives each of its guests; a working KVM needs well under one. */
export const PROBE_TIMEOUT_S = 5

/** Whether we run inside the nested harness's guest. */
export const IN_NESTED = process.env.OVM_NESTED === '1'

/** Build the probe if it is missing or older than its source; returns its path. */
export function buildProbe(): string {
  if (existsSync(PROBE) && statSync(PROBE).mtimeMs >= statSync(PROBE_SRC).mtimeMs) return PROBE
  mkdirSync(join(PROBE, '..'), {recursive: true})
  const tmp = `${PROBE}.tmp.${process.pid}`
  try {
    execFileSync(process.env.CC ?? 'cc', ['-static', '-O2', '-Wall', '-o', tmp, PROBE_SRC], {stdio: 'pipe'})
  } catch (error) {
    const err = error as {code?: string; stderr?: Buffer}
    if (err.code === 'ENOENT') throw new Error(`no C compiler to build ${PROBE_SRC} (install gcc and libc6-dev)`)
    throw new Error(`cannot build ${PROBE_SRC}: ${String(err.stderr ?? error).trim().split('\n').slice(-3).join(' ')}`)
  }
  renameSync(tmp, PROBE)
  return PROBE
}

export interface ProbeResult {
  /** exit status, or null when it had to be killed */
  code: number | null
  stdout: string
  stderr: string
  /** true when the probe outlived its own timeout and was abandoned */
  hung: boolean
}

/**
 * Run the probe: `kvm-probe COUNT SEED TIMEOUT_S`. A probe stuck in the kernel
 * (a broken KVM can ignore even SIGKILL for a while) is abandoned after
 * `TIMEOUT_S * 4 + 10` seconds rather than waited for.
 */
export function runProbe(count = 8, seed = 0x42, timeoutS = PROBE_TIMEOUT_S): Promise<ProbeResult> {
  const probe = buildProbe()
  return new Promise((resolve) => {
    let done = false
    const child = execFile(probe, [String(count), String(seed), String(timeoutS)], {encoding: 'utf8'}, (error, stdout, stderr) => {
      if (done) return
      done = true
      clearTimeout(timer)
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0
      resolve({code, stdout, stderr, hung: false})
    })
    const timer = setTimeout(() => {
      if (done) return
      done = true
      child.kill('SIGKILL')
      resolve({code: null, stdout: '', stderr: `kvm-probe did not end ${timeoutS * 4 + 10} s after it started`, hung: true})
    }, (timeoutS * 4 + 10) * 1000)
  })
}

/** The bytes the probe's guests must write: SEED, SEED+7, ... (mod 256), COUNT of them. */
export function expectedBytes(count: number, seed: number): string {
  return Array.from({length: count}, (_, i) => ((seed + 7 * i) & 0xff).toString(16).padStart(2, '0')).join(' ')
}

/** The guest modes the probe runs, in order. */
export const PROBE_MODES = ['real mode', 'long mode', 'boot (real to long mode)', 'work (long mode)']

async function detect(): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.arch !== 'x64') return `KVM tests need Linux on x86_64, this is ${process.platform}/${process.arch}`
  if (!existsSync('/dev/kvm')) return 'no /dev/kvm on this host (run them in the nested harness: npm run test:kvm)'
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR))
  } catch (error) {
    return `cannot open /dev/kvm read-write: ${(error as NodeJS.ErrnoException).code ?? String(error)}`
  }
  let r: ProbeResult
  try {
    r = await runProbe()
  } catch (error) {
    return `cannot run the KVM probe: ${(error as Error).message}`
  }
  if (r.code === 0) return undefined
  const why = r.stderr.split('\n').find((l) => l.includes('FAIL')) ?? r.stderr.trim()
  return `/dev/kvm opens but does not run guest code (${why.replace(/^kvm-probe: FAIL: /, '')}); run them in the nested harness: npm run test:kvm`
}

let cached: Promise<string | undefined> | undefined

/**
 * Why the KVM tests cannot run here, or undefined when /dev/kvm works. The
 * answer is kept for an hour per boot in the temp folder, so that each test
 * file does not wait for the probe to time out again on a broken KVM.
 */
export function kvmSkipReason(): Promise<string | undefined> {
  cached ??= (async () => {
    let key = 'unknown-boot'
    try {
      key = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
    } catch {}
    const file = join(tmpdir(), `ovm-kvm-probe-${key}.json`)
    try {
      const c = JSON.parse(readFileSync(file, 'utf8')) as {at: number; probe: number; reason: string | null}
      if (Date.now() - c.at < 3_600_000 && existsSync(PROBE) && c.probe === statSync(PROBE_SRC).mtimeMs) return c.reason ?? undefined
    } catch {}
    const reason = await detect()
    try {
      writeFileSync(`${file}.${process.pid}`, JSON.stringify({at: Date.now(), probe: statSync(PROBE_SRC).mtimeMs, reason: reason ?? null}))
      renameSync(`${file}.${process.pid}`, file)
    } catch {}
    return reason
  })()
  return cached
}

/** A describe title that carries the skip reason into every report. */
export function kvmTitle(title: string, skip: string | undefined): string {
  if (skip === undefined) return title
  console.warn(`test/kvm: ${title} skipped: ${skip}`)
  return `${title} (skipped: ${skip})`
}
