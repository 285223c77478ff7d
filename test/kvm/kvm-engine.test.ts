/**
 * The native KVM engine against a real /dev/kvm: Debian's kernel with a
 * busybox initramfs boots to a marker, reads and writes a qcow2-overlaid
 * disk, is snapshotted, and is restored in a fresh process where it goes on
 * (answers console input, its counter keeps counting, writes a file to the
 * disk) and powers off cleanly; the overlay passes `qemu-img check`; a
 * damaged snapshot is refused with its reason.
 *
 * Needs a working /dev/kvm: run it inside the nested harness
 *   scripts/nested-kvm.sh -- npx vitest run test/kvm
 * Elsewhere it skips and says why (KvmEngine.unavailable()).
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {KvmEngine, readKvmSnapshotFile} from '../../src/engine/kvm/engine.js'
import type {BootSpec, VmHandle} from '../../src/engine/types.js'
import {FIXTURES, KERNEL, holdVmLock, until} from '../engine/helpers.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const engine = new KvmEngine()

function tool(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
}

async function skipReason(): Promise<string | undefined> {
  const why = await engine.unavailable()
  if (why) return `kvm engine unavailable: ${why}`
  for (const f of [KERNEL, join(FIXTURES, 'kernel-root'), join(FIXTURES, 'disk.raw')]) {
    if (!existsSync(f)) return `fixture ${f} missing (run scripts/fixtures.sh)`
  }
  for (const t of ['qemu-img', 'cpio', 'debugfs']) if (!tool(t)) return `${t} is not installed`
  return undefined
}

const skip = await skipReason()
if (skip) console.warn(`test/kvm: SKIPPED: ${skip}`)
const work = mkdtempSync(join(tmpdir(), 'ovm-kvm-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

const CMDLINE = 'console=ttyS0 reboot=k panic=-1 pci=conf1 i8042.noaux quiet'

describe.skipIf(Boolean(skip))('kvm engine (real /dev/kvm)', () => {
  let release: (() => void) | undefined
  let initrd: string
  let base: string
  let overlay: string
  const snap = join(work, 'snap')
  let spec: BootSpec

  beforeAll(async () => {
    release = await holdVmLock()
    initrd = join(work, 'initramfs.cpio.gz')
    execFileSync(join(ROOT, 'native/tools/mkinitramfs.sh'), [join(FIXTURES, 'kernel-root'), initrd])
    base = join(work, 'base.qcow2')
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(FIXTURES, 'disk.raw'), base])
    overlay = join(work, 'overlay.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', base, overlay])
    const wd = join(work, 'vm')
    mkdirSync(wd, {recursive: true})
    spec = {
      kernel: KERNEL,
      initrd,
      cmdline: CMDLINE,
      memoryMiB: 256,
      cpus: 1,
      disks: [{chain: [{path: base, format: 'qcow2'}], overlay}],
      devices: [],
      workDir: wd,
    }
  })
  afterAll(() => release?.())

  it('boots to its marker, uses its disk, snapshots; a fresh process restores it and it carries on', async () => {
    const lines: string[] = []
    const t0 = Date.now()
    const vm: VmHandle = await engine.boot(spec)
    vm.on((e) => {
      if (e.type === 'console') lines.push(e.line)
    })
    await until(() => lines.includes('OVM-READY') || vm.state === 'stopped', 200_000, 'OVM-READY')
    const bootMs = Date.now() - t0
    expect(lines).toContain('OVM-BOOTED')
    expect(lines).toContain('disk says: hello from the ovm fixture disk')
    expect(lines).toContain('OVM-DISK-WRITE-OK')
    expect(lines).toContain('OVM-READY')

    const info = await vm.snapshot(snap, {leavePaused: true})
    expect(vm.state).toBe('paused')
    expect(info.signature.engine).toBe('kvm')
    expect(info.diskDiffs).toEqual([join(snap, 'disk-0.qcow2')])
    expect((await readKvmSnapshotFile(snap)).signature.memoryMiB).toBe(256)
    expect(readFileSync(join(snap, 'state.bin')).subarray(0, 8).toString()).toBe('OVMSNAP1')
    const stopped = await vm.stop()
    expect(stopped.reason).toBe('stopped')
    console.log(`kvm: boot to OVM-READY ${bootMs} ms; snapshot ${info.totalMs} ms (paused ${info.pausedMs} ms), ${info.bytes} bytes on disk`)

    // The running VM wrote into `overlay` after the snapshot? No: it was stopped while paused. Restore onto the snapshot's disk diff.
    const restoredOverlay = join(work, 'restored.qcow2')
    copyFileSync(join(snap, 'disk-0.qcow2'), restoredOverlay)
    const rspec: BootSpec = {...spec, disks: [{chain: [{path: base, format: 'qcow2'}], overlay: restoredOverlay}]}
    const child = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'test/kvm/restore-child.ts'), JSON.stringify(rspec), snap, 'hello\n', 'OVM-AFTER-OK', '60000'],
      {cwd: ROOT, encoding: 'utf8', timeout: 120_000},
    )
    const out = child.stdout.trim().split('\n').at(-1) ?? ''
    const r = JSON.parse(out || '{}') as {error?: string; restoreMs: number; markerMs?: number; lines: string[]; status: {reason: string}}
    expect(r.error, child.stderr).toBeUndefined()
    expect(r.lines).toContain('got:hello')
    expect(r.lines).toContain('written after the restore')
    expect(r.lines).toContain('OVM-AFTER-OK')
    expect(r.lines.some((l) => /^tick \d+$/.test(l)), 'the counter started before the snapshot keeps counting').toBe(true)
    expect(r.status.reason).toBe('poweroff')
    console.log(`kvm: restore setup ${r.restoreMs.toFixed(1)} ms; restore to OVM-AFTER-OK ${r.markerMs?.toFixed(0)} ms`)

    // The overlay the VMM wrote is a valid qcow2 holding both files.
    execFileSync('qemu-img', ['check', restoredOverlay])
    const raw = join(work, 'after.raw')
    execFileSync('qemu-img', ['convert', '-O', 'raw', restoredOverlay, raw])
    expect(execFileSync('debugfs', ['-R', 'cat /before.txt', raw], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']})).toBe('written before the snapshot\n')
    expect(execFileSync('debugfs', ['-R', 'cat /after.txt', raw], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']})).toBe('written after the restore\n')
  }, 400_000)

  it('boots 2 vCPUs; pauses, resumes and stops a guest that spins without ever leaving KVM_RUN', async () => {
    const vm = await engine.boot({...spec, cpus: 2, cmdline: `${CMDLINE} ovm.spin`, disks: [], workDir: join(work, 'spin')})
    const lines: string[] = []
    vm.on((e) => {
      if (e.type === 'console') lines.push(e.line)
    })
    await until(() => lines.includes('OVM-SPINNING') || vm.state === 'stopped', 200_000, 'OVM-SPINNING')
    expect(lines).toContain('OVM-SPINNING')
    expect(lines, 'the guest sees both vCPUs (MP table)').toContain('cpus: 2')
    let t = Date.now()
    await vm.pause()
    expect(vm.state).toBe('paused')
    await vm.resume()
    expect(vm.state).toBe('running')
    const pauseResumeMs = Date.now() - t
    t = Date.now()
    const status = await vm.stop()
    const stopMs = Date.now() - t
    expect(status.reason).toBe('stopped')
    expect(vm.state).toBe('stopped')
    expect(stopMs).toBeLessThan(10_000) // a kick, not a timeout (generous for nested TCG)
    console.log(`kvm: pause+resume of a spinning guest ${pauseResumeMs} ms, stop ${stopMs} ms`)
  }, 300_000)

  it('snapshots a 2-vCPU guest; restored, its timers keep firing (TSC-deadline LAPIC timer)', async () => {
    const smpSnap = join(work, 'smp-snap')
    const s2: BootSpec = {...spec, cpus: 2, disks: [], workDir: join(work, 'smp')}
    mkdirSync(s2.workDir, {recursive: true})
    const lines: string[] = []
    const vm = await engine.boot(s2)
    vm.on((e) => {
      if (e.type === 'console') lines.push(e.line)
    })
    // Before the TSC-deadline bit was shown, Linux disabled the APIC timer and a 2-vCPU guest stopped after "tick 1".
    await until(() => lines.includes('tick 3') || vm.state === 'stopped', 200_000, 'tick 3')
    expect(lines).toContain('cpus: 2')
    await vm.snapshot(smpSnap, {leavePaused: true})
    const last = Math.max(...lines.filter((l) => /^tick \d+$/.test(l)).map((l) => Number(l.slice(5))))
    await vm.stop()
    const r = await engine.restore(s2, smpSnap)
    const after: string[] = []
    r.on((e) => {
      if (e.type === 'console') after.push(e.line)
    })
    await until(() => after.includes(`tick ${last + 3}`) || r.state === 'stopped', 60_000, `tick ${last + 3} after the restore`)
    expect(after).toContain(`tick ${last + 3}`)
    expect(after).not.toContain('OVM-BOOTED') // restored, not booted again
    await r.stop()
  }, 300_000)

  it('refuses a damaged snapshot, naming the reason', async () => {
    const bad = join(work, 'bad')
    mkdirSync(bad, {recursive: true})
    for (const f of ['snapshot.json', 'memory.raw']) copyFileSync(join(snap, f), join(bad, f))
    const state = readFileSync(join(snap, 'state.bin'))
    state[state.length - 10] ^= 0x20
    writeFileSync(join(bad, 'state.bin'), state)
    const overlay2 = join(work, 'bad.qcow2')
    copyFileSync(join(snap, 'disk-0.qcow2'), overlay2)
    await expect(engine.restore({...spec, disks: [{chain: [{path: base, format: 'qcow2'}], overlay: overlay2}]}, bad)).rejects.toThrow(
      /body checksum mismatch \(the file is damaged\)/,
    )
    await expect(engine.restore({...spec, memoryMiB: 512}, snap)).rejects.toThrow(/taken with 256 MiB/)
  }, 60_000)
})

describe('kvm engine (anywhere)', () => {
  it('says why it cannot run, or runs', async () => {
    const why = await engine.unavailable()
    if (why) expect(why).toMatch(/\/dev\/kvm|addon|KVM/)
    else expect(why).toBeUndefined()
  })
  it('refuses what it does not emulate, by name', async () => {
    const s: BootSpec = {kernel: '/k', cmdline: '', memoryMiB: 256, cpus: 2, disks: [], devices: [], workDir: work}
    await expect(engine.boot({...s, cpus: 9})).rejects.toThrow(/1 to 8 vCPUs, 9 asked for/)
    await expect(engine.boot({...s, cpus: 1, devices: [{type: 'ivshmem', name: 'm', size: 4096}]})).rejects.toThrow(/no ivshmem devices/)
    expect(await engine.checkSnapshot({formatVersion: 1, engine: 'qemu', engineVersion: '7.2.0', machine: 'pc', cpuModel: 'x', accel: 'tcg', memoryMiB: 1, cpus: 1, arch: 'x86_64'})).toMatch(
      /made by the qemu engine/,
    )
  })
})
