/**
 * scripts/nested-kvm.sh, run from the host: argument checks without a guest,
 * then real TCG guests (under the machine-wide VM lock) for the exit status,
 * output, mounts, a hang and a guest that dies without reporting.
 */
import {spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {holdVmLock, vmSkipReason} from '../engine/helpers.js'

const REPO = fileURLToPath(new URL('../../', import.meta.url))
const SCRIPT = join(REPO, 'scripts', 'nested-kvm.sh')

interface Run {
  code: number | null
  stdout: string
  stderr: string
  seconds: number
}

function harness(args: string[], timeoutMs = 600_000): Promise<Run> {
  const t0 = Date.now()
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [SCRIPT, ...args], {cwd: REPO, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({code, stdout, stderr, seconds: (Date.now() - t0) / 1000})
    })
  })
}

describe('nested-kvm.sh without a guest', () => {
  let dir: string
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ovm-nested-'))
  })
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it('refuses a call without a command, exit 2', async () => {
    const r = await harness(['--mem', '1024'])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/no command given \(put it after --\)/)
  })

  it('refuses a bad --timeout, naming the option, exit 2', async () => {
    const r = await harness(['--timeout', 'soon', '--', 'true'])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/--timeout needs a whole number >= 1, got 'soon'/)
  })

  it('names the missing kernel, exit 3, without booting', async () => {
    const r = await harness(['--fixtures', dir, '--', 'true'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain(`kernel ${dir}/vmlinuz is missing (run bash scripts/fixtures.sh)`)
  })

  it('names the missing modules folder when only the kernel is there, exit 3', async () => {
    writeFileSync(join(dir, 'vmlinuz'), 'not really a kernel')
    writeFileSync(join(dir, 'kernel-version'), '6.1.0-0-amd64\n')
    const r = await harness(['--fixtures', dir, '--', 'true'])
    expect(r.code).toBe(3)
    expect(r.stderr).toContain(`kernel modules ${dir}/kernel-root/lib/modules/6.1.0-0-amd64/kernel are missing`)
  })
})

const skip = vmSkipReason()

describe.skipIf(skip !== undefined)(`nested-kvm.sh with a guest${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let release: (() => void) | undefined
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(() => release?.())

  it(
    'runs the command in the checkout with a working /dev/kvm and node, passes its output and exit status back; the checkout is writable, the host root is not changed',
    async () => {
      const token = `t${process.pid}x${Date.now()}`
      const mark = join('test', '.cache', 'nested', `mark-${token}`)
      const script = [
        'echo "pwd=$(pwd)"',
        'echo "arg=[$1]"',
        'echo "nested=$OVM_NESTED"',
        '[ -c /dev/kvm ] && echo kvm=char',
        `echo "$1" > ${mark}`,
        `touch /etc/ovm-guest-${token}`,
        'node -e "console.log(\'node=\' + process.version); process.exit(23)"',
      ].join('\n')
      const r = await harness(['--timeout', '400', '--', 'bash', '-c', script, 'argv0', `it's "${token}" with spaces`])
      expect(r.stderr).toMatch(/nested-kvm: command exited 23 after [\d.]+ s/)
      expect(r.code).toBe(23)
      expect(r.stdout).toContain(`pwd=${REPO.replace(/\/$/, '')}\n`)
      expect(r.stdout).toContain(`arg=[it's "${token}" with spaces]\n`)
      expect(r.stdout).toContain('nested=1\n')
      expect(r.stdout).toContain('kvm=char\n')
      expect(r.stdout).toContain(`node=${process.version}\n`)
      expect(readFileSync(join(REPO, mark), 'utf8')).toBe(`it's "${token}" with spaces\n`)
      rmSync(join(REPO, mark))
      expect(existsSync(`/etc/ovm-guest-${token}`)).toBe(false)
      const console = readFileSync(join(REPO, 'test', '.cache', 'nested', 'console.log'), 'utf8')
      expect(console).toMatch(/kvm-probe: ok: work \(long mode\), api 12, 8 bytes/)
      expect(console).toMatch(/OVM-NESTED-EXIT 23/)
    },
    600_000,
  )

  it(
    'kills a guest that runs past --timeout, exit 124 with a clear message',
    async () => {
      const r = await harness(['--timeout', '20', '--', 'sleep', '1000'])
      expect(r.code).toBe(124)
      expect(r.stderr).toMatch(/timed out: the guest was still running after --timeout 20 s and was killed/)
      expect(r.seconds).toBeLessThan(60)
    },
    600_000,
  )

  it(
    'reports a guest that powers off without reporting the status, exit 125',
    async () => {
      const r = await harness(['--timeout', '400', '--', 'bash', '-c', 'echo o > /proc/sysrq-trigger; sleep 60'])
      expect(r.code).toBe(125)
      expect(r.stderr).toMatch(/the guest ended without reporting the command's exit status/)
    },
    600_000,
  )
})
