/**
 * `ovm build --engine kvm`: the builder VM on ovm's own VMM against a real
 * /dev/kvm. One builder boot runs every step, the disk's top image being
 * switched live between steps (the native disk's pushDiskTop); each step's
 * layer holds what it wrote, the result boots on the same engine with the
 * files, owners and modes the steps made, a rebuild boots nothing, and a
 * SNAPSHOT build bakes a RAM snapshot that restores and carries on.
 *
 * Needs a working /dev/kvm: CI runs it inside the nested harness
 *   scripts/nested-kvm.sh -- npx vitest run test/kvm
 * Elsewhere it skips and says why.
 */
import {execFile} from 'node:child_process'
import {copyFileSync, existsSync, mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {KvmEngine} from '../../src/engine/kvm/engine.js'
import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'
import {holdVmLock, stopDaemon} from '../engine/helpers.js'

const run = promisify(execFile)
const MODULES = 'kernel-root/lib/modules/6.1.0-56-amd64'

async function skipReason(): Promise<string | undefined> {
  const why = await new KvmEngine().unavailable()
  if (why) return `kvm engine unavailable: ${why}`
  for (const f of ['vmlinuz', MODULES]) if (!existsSync(join(FIXTURES, f))) return `fixture ${f} missing (run scripts/fixtures.sh)`
  if (!existsSync('/bin/busybox')) return 'busybox-static is not installed'
  return undefined
}
const skip = await skipReason()
if (skip) console.warn(`test/kvm/build: SKIPPED: ${skip}`)

const OVMFILE = `ARG KERNEL_ROOT
FROM scratch 96M
KERNEL \${KERNEL_ROOT}/vmlinuz MODULES \${KERNEL_ROOT}/${MODULES}
CMDLINE "console=ttyS0 panic=-1 quiet"
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /srv/app
COPY --chown=1000:1000 --chmod=0640 data.txt ./
RUN mkdir -p /etc && echo "built on kvm" > /etc/motd && dd if=/dev/urandom of=/blob bs=1M count=8 2>/dev/null && sync
RUN true
ENTRYPOINT ["/bin/sh", "-c", "stat -c 'data %u:%g %a' data.txt; cat data.txt /etc/motd; stat -c 'blob %s' /blob"]
`

const SERVICE = `ARG KERNEL_ROOT
FROM scratch 64M
KERNEL \${KERNEL_ROOT}/vmlinuz MODULES \${KERNEL_ROOT}/${MODULES}
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENTRYPOINT ["/bin/sh", "-c", "echo service up; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
SNAPSHOT WHEN "^tick 2$" TIMEOUT 240s
`

/** Nested KVM inside TCG is slow: a build with its boot is about a minute, `ovm run` 40 s. */
const STEP_TIMEOUT = 300_000

interface Layer {
  role: string
  digest: string
  size: number
}

describe.skipIf(Boolean(skip))('ovm build --engine kvm (real /dev/kvm)', () => {
  const tmp = tempDir('ovm-kvm-build-')
  const home = join(tmp.path, 'home')
  const ctx = join(tmp.path, 'ctx')
  let release: () => void
  const build = (dir: string, tag: string, extra: string[] = []): ReturnType<typeof ovm> =>
    ovm(['build', dir, '--engine', 'kvm', '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', tag, '--json', ...extra], {home})

  beforeAll(async () => {
    release = await holdVmLock()
    mkdirSync(ctx, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    writeFileSync(join(ctx, 'data.txt'), 'made by COPY\n')
    writeFileSync(join(ctx, 'Ovmfile'), OVMFILE)
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('runs every step in one builder boot, one layer per step, and the result boots with the files the steps made', async () => {
    const r = await build(ctx, 'test/kvm-app:1')
    expect(r.code, r.stderr + r.stdout).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.result).toMatchObject({engine: 'kvm', boots: 1, stepsRun: 5, stepsCached: 0, diskLayers: 6})
    const info = JSON.parse((await ovm(['inspect', 'test/kvm-app:1', '--json'], {home})).stdout)
    const disks = (info.layers as Layer[]).filter((l) => l.role === 'disk')
    expect(disks).toHaveLength(6)
    // Each diff is a qcow2 that qemu-img accepts, written by our qcow2 code and switched live.
    const allocated: number[] = []
    for (const d of disks.slice(1)) {
      const blob = join(home, 'blobs', 'sha256', d.digest.slice(7))
      const {stdout} = await run('bash', ['-c', `tar -xOf ${blob} disk.qcow2 > ${tmp.path}/l.qcow2 && qemu-img check --output=json ${tmp.path}/l.qcow2`])
      const check = JSON.parse(stdout) as {corruptions?: number; leaks?: number; 'allocated-clusters'?: number}
      expect(check.corruptions ?? 0).toBe(0)
      expect(check.leaks ?? 0).toBe(0)
      allocated.push(check['allocated-clusters'] ?? 0)
    }
    // The step that wrote 8 MiB has a layer of about 8 MiB, not the disk's 96 MiB; `RUN true` has almost nothing.
    const big = disks[4]!.size
    expect(big).toBeGreaterThan(8 * 1024 * 1024)
    expect(big / (8 * 1024 * 1024)).toBeLessThan(1.1)
    expect(disks[5]!.size).toBeLessThan(1024 * 1024)
    expect(allocated[3]).toBeGreaterThan(allocated[4]! * 10)

    const boot = await ovm(['run', '--engine', 'kvm', 'test/kvm-app:1'], {home})
    expect(boot.code, boot.stderr).toBe(0)
    expect(boot.stdout).toContain('data 1000:1000 640')
    expect(boot.stdout).toContain('made by COPY')
    expect(boot.stdout).toContain('built on kvm')
    expect(boot.stdout).toContain(`blob ${8 * 1024 * 1024}`)
  }, STEP_TIMEOUT)

  it('a rebuild with nothing changed boots no VM; a changed COPY input rebuilds from that step on', async () => {
    const again = await build(ctx, 'test/kvm-app:1')
    expect(again.code, again.stderr).toBe(0)
    expect(JSON.parse(again.stdout).result).toMatchObject({boots: 0, stepsRun: 0, stepsCached: 5})
    writeFileSync(join(ctx, 'data.txt'), 'second version\n')
    const changed = await build(ctx, 'test/kvm-app:2')
    expect(changed.code, changed.stderr).toBe(0)
    expect(JSON.parse(changed.stdout).result).toMatchObject({boots: 1, stepsRun: 3, stepsCached: 2})
    // The layers before the changed step are the first build's (same digests); the changed one differs.
    const layers = async (ref: string): Promise<string[]> =>
      (JSON.parse((await ovm(['inspect', ref, '--json'], {home})).stdout).layers as Layer[]).filter((l) => l.role === 'disk').map((l) => l.digest)
    const [one, two] = [await layers('test/kvm-app:1'), await layers('test/kvm-app:2')]
    expect(two.slice(0, 3)).toEqual(one.slice(0, 3))
    expect(two[3]).not.toBe(one[3])
  }, STEP_TIMEOUT)

  it('SNAPSHOT: bakes a RAM snapshot on the kvm engine that restores and carries on', async () => {
    const svc = join(tmp.path, 'svc')
    mkdirSync(svc, {recursive: true})
    copyFileSync('/bin/busybox', join(svc, 'busybox'))
    writeFileSync(join(svc, 'Ovmfile'), SERVICE)
    const r = await build(svc, 'test/kvm-svc:1')
    expect(r.code, r.stderr + r.stdout).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'test/kvm-svc:1', '--json'], {home})).stdout)
    expect((info.layers as Layer[]).map((l) => l.role)).toContain('ram-snapshot')

    const started = await ovm(['run', '-d', 'test/kvm-svc:1', '--json'], {home})
    expect(started.code, started.stderr).toBe(0)
    const st = JSON.parse(started.stdout)
    expect(st.metrics).toMatchObject({engine: 'kvm', restored: true})
    let logs = ''
    for (let i = 0; i < 300 && !/tick [3-9]/.test(logs); i++) {
      await sleep(200)
      logs = (await ovm(['logs', st.instance_id], {home})).stdout
    }
    expect(logs).toMatch(/tick [3-9]/)
    expect(logs).not.toContain('service up') // restored, not booted
    expect(logs).not.toMatch(/^tick 0$/m)
    await ovm(['stop', st.instance_id], {home})
  }, STEP_TIMEOUT)
})
