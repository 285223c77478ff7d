import {spawn, type ChildProcess} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdtempSync, readFileSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

export const ROOT = join(import.meta.dirname, '..', '..')
export const BIN = join(ROOT, 'bin', 'run.js')
export const FIXTURES = process.env.OVM_FIXTURES ?? join(ROOT, 'test', '.cache', 'fixtures')

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface RunOptions {
  home: string
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Written to the command's standard input (closed after). */
  stdin?: string
  /** Called with the pid once the process is spawned (for kill tests). */
  onSpawn?: (pid: number) => void
}

/** Run the built CLI with a private $OVM_HOME. */
export function ovm(args: string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawnOvm(args, opts)
    opts.onSpawn?.(child.pid!)
    let stdout = ''
    let stderr = ''
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({code, signal, stdout, stderr}))
    child.stdin!.end(opts.stdin ?? '')
  })
}

export function spawnOvm(args: string[], opts: {home: string; env?: NodeJS.ProcessEnv; cwd?: string}): ChildProcess {
  return spawn(process.execPath, [BIN, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: {...process.env, OVM_HOME: opts.home, NO_COLOR: '1', CI: 'true', ...opts.env},
    stdio: ['pipe', 'pipe', 'pipe'],
  })
}

export function tempDir(prefix = 'ovm-test-'): {path: string; cleanup: () => void} {
  const path = mkdtempSync(join(tmpdir(), prefix))
  return {path, cleanup: () => rmSync(path, {recursive: true, force: true})}
}

/** Every blob under blobs/sha256 with whether its content hashes to its name. */
export function hashAllBlobs(home: string): {digest: string; ok: boolean}[] {
  const dir = join(home, 'blobs', 'sha256')
  let names: string[] = []
  try {
    names = readdirSync(dir)
  } catch {
    return []
  }
  return names.map((n) => ({digest: `sha256:${n}`, ok: createHash('sha256').update(readFileSync(join(dir, n))).digest('hex') === n}))
}

/** The standard pack arguments over the real fixtures. */
export function packArgs(tag: string, extra: string[] = []): string[] {
  return [
    'pack',
    '--name', 'example/busybox',
    '--version', '1.0',
    '--kernel', join(FIXTURES, 'vmlinuz'),
    '--initrd', join(FIXTURES, 'initramfs.cpio.gz'),
    '--cmdline', 'console=ttyS0 panic=-1',
    '--disk', join(FIXTURES, 'disk.qcow2'),
    '--created', '2026-01-01T00:00:00Z',
    '-t', tag,
    ...extra,
  ]
}

/** The error a promise rejects with (fails the test when it resolves). */
export async function rejects<E = import('../../src/errors/index.js').OvmError>(p: Promise<unknown>): Promise<E> {
  try {
    await p
  } catch (e) {
    return e as E
  }
  throw new Error('expected a rejection')
}
