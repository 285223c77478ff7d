/**
 * The debian template for real: its make-rootfs.sh runs debootstrap
 * --variant=minbase against the Debian mirror this host's apt uses, `ovm
 * build` runs its RUN step in a TCG builder VM, and `ovm run` boots the result
 * and shows /etc/debian_version and the RUN step's effect.
 * (debootstrap takes about 1.5 to 2.5 minutes here, so the root file system is
 * made fresh each run, not cached.)
 */
import {execFile} from 'node:child_process'
import {existsSync, readFileSync, readdirSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, describe, expect, it} from 'vitest'

import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'

const run = promisify(execFile)
const KERNEL_ROOT = join(FIXTURES, 'kernel-root')
const DEBOOTSTRAP = ['/usr/sbin/debootstrap', '/usr/bin/debootstrap'].find((p) => existsSync(p))
/** bookworm: the suite of the fixture kernel (6.1.0-*-amd64). */
const SUITE = process.env.OVM_DEBIAN_SUITE ?? 'bookworm'

/** The Debian mirror apt uses here (deb822 `URIs:` or one-line `deb URL`), else deb.debian.org. */
function aptMirror(): string {
  if (process.env.OVM_DEBIAN_MIRROR) return process.env.OVM_DEBIAN_MIRROR
  const files = ['/etc/apt/sources.list']
  try {
    for (const f of readdirSync('/etc/apt/sources.list.d')) if (/\.(list|sources)$/.test(f)) files.push(join('/etc/apt/sources.list.d', f))
  } catch {
    // no sources.list.d
  }
  for (const f of files) {
    let text = ''
    try {
      text = readFileSync(f, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n')) {
      const m = /^\s*URIs:\s*(\S+)/.exec(line) ?? /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s/.exec(line)
      // The main archive, not debian-security or a third-party repository.
      if (m && /\/debian\/?$/.test(m[1] as string)) return (m[1] as string).replace(/\/$/, '')
    }
  }
  return 'http://deb.debian.org/debian'
}

function skipReason(): string | undefined {
  const vm = vmSkipReason()
  if (vm) return vm
  if (!DEBOOTSTRAP) return 'debootstrap not installed (apt-get install debootstrap)'
  if (process.getuid?.() !== 0) return 'debootstrap needs root'
  return undefined
}

describe.skipIf(skipReason())('templates/debian: debootstrap, build, boot (QEMU)', () => {
  const tmp = tempDir('ovm-debian-')
  const home = join(tmp.path, 'home')
  const dir = join(tmp.path, 'debian')
  let release: (() => void) | undefined
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('makes the root file system, builds the Ovmfile on it, and boots Debian with the RUN step applied', async () => {
    const init = await ovm(['init', '--template', 'debian', dir, '--json'], {home})
    expect(init.code, init.stderr).toBe(0)
    expect((JSON.parse(init.stdout) as {files: string[]}).files.sort()).toEqual(['Ovmfile', 'hello.sh', 'make-rootfs.sh'])

    // The base disk: debootstrap --variant=minbase (no VM, so no VM lock yet).
    const mirror = aptMirror()
    const t0 = performance.now()
    const made = await run(join(dir, 'make-rootfs.sh'), ['rootfs.qcow2'], {cwd: dir, env: {...process.env, SUITE, MIRROR: mirror}, timeout: 900_000})
    const seconds = (performance.now() - t0) / 1000
    process.stderr.write(`make-rootfs.sh (${SUITE} from ${mirror}): ${seconds.toFixed(0)} s\n`)
    const version = /wrote rootfs\.qcow2 \(Debian (\S+),/.exec(made.stderr)?.[1]
    expect(version, made.stderr).toMatch(/^12\.\d+$/)
    expect(readdirSync(dir).filter((f) => f.includes('.tmp.'))).toEqual([]) // written under a temporary name, renamed
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', join(dir, 'rootfs.qcow2')])).stdout) as {format: string; 'virtual-size': number}
    expect(info.format).toBe('qcow2')
    expect(info['virtual-size']).toBe(1024 ** 3)

    release = await holdVmLock()
    const build = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'tpl/debian:1', '--json'], {home})
    expect(build.code, build.stderr).toBe(0)
    const built = JSON.parse(build.stdout) as {result: {stepsRun: number; boots: number; diskLayers: number}}
    expect(built.result).toMatchObject({stepsRun: 2, boots: 1, diskLayers: 3}) // the debootstrap base, then RUN and COPY

    const r = await ovm(['run', 'tpl/debian:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    // /etc/debian_version in the guest is the one debootstrap installed; the hostname and user are the RUN step's.
    expect(r.stdout).toContain(`hello from debian-vm: Debian ${version}, Linux ${readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()}`)
    expect(r.stdout).toMatch(/user app: uid=1000\(app\) gid=1000\(app\)/)
    const packages = Number(/packages: (\d+)/.exec(r.stdout)?.[1])
    expect(packages).toBeGreaterThan(50) // minbase: the required packages and apt
    expect(r.stdout).toContain('@@ovm-exit 0')

    // A rebuild with nothing changed boots no VM.
    const again = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'tpl/debian:1', '--json'], {home})
    expect(again.code, again.stderr).toBe(0)
    expect((JSON.parse(again.stdout) as {result: {boots: number; stepsCached: number}}).result).toMatchObject({boots: 0, stepsCached: 2})
  }, 1_200_000)
})
