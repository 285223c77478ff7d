import {execFileSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {qemuArgs} from '../../src/engine/qemu/args.js'
import {QemuEngine, readSnapshotFile} from '../../src/engine/qemu/engine.js'
import type {BootSpec, VmHandle, VmState} from '../../src/engine/types.js'
import {FIXTURES, INITRAMFS, KERNEL, heartbeatInitramfs, lastHeartbeat, until, vmSkipReason, holdVmLock} from './helpers.js'

const skip = vmSkipReason()
const work = mkdtempSync(join(tmpdir(), 'ovm-eng-'))
afterAll(() => rmSync(work, {recursive: true, force: true}))

function spec(name: string, initrd: string): BootSpec {
  const dir = join(work, name)
  rmSync(dir, {recursive: true, force: true})
  mkdirSync(dir, {recursive: true})
  return {kernel: KERNEL, initrd, cmdline: 'console=ttyS0 panic=-1', memoryMiB: 256, cpus: 1, disks: [], devices: [], workDir: dir}
}

function record(vm: VmHandle): {lines: string[]; states: VmState[]} {
  const r = {lines: [] as string[], states: [] as VmState[]}
  vm.on((e) => {
    if (e.type === 'console') r.lines.push(e.line)
    if (e.type === 'state') r.states.push(e.state)
  })
  return r
}

describe('qemu args', () => {
  it('builds the same machine for boot and restore, with RAM in a file', () => {
    const s: BootSpec = {kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0', memoryMiB: 256, cpus: 2, disks: [{chain: [], overlay: '/o,x.qcow2'}], devices: [{type: 'ivshmem', name: 'mmio0', size: 1 << 20, path: '/shm'}], workDir: '/w'}
    const base = {machine: 'pc-i440fx-7.2', accel: 'tcg' as const, cpuModel: 'qemu64', ramPath: '/w/ram', ramShared: true, qmpSocket: '/w/qmp.sock'}
    const a = qemuArgs(s, base)
    const b = qemuArgs(s, {...base, incoming: true})
    expect(b.slice(0, a.length)).toEqual(a)
    expect(b.slice(a.length)).toEqual(['-incoming', 'defer'])
    expect(a).toContain('pc-i440fx-7.2,accel=tcg,memory-backend=ram0')
    expect(a).toContain('memory-backend-file,id=ram0,size=256M,mem-path=/w/ram,share=on')
    expect(a.join(' ')).toContain('file.filename=/o,,x.qcow2')
    expect(a).toContain('ivshmem-plain,memdev=shm0,id=mmio0,master=on')
  })
})

describe.skipIf(skip)('qemu engine (TCG)', () => {
  let release: () => void = () => undefined
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(() => release())
  const engine = new QemuEngine({accel: 'tcg'})

  it('boots the fixture to its marker and reports a guest power-off', async () => {
    const t0 = Date.now()
    const vm = await engine.boot(spec('poweroff', INITRAMFS))
    const r = record(vm)
    expect(vm.pid).toBeGreaterThan(0)
    expect(vm.accel).toBe('tcg')
    const status = await vm.wait()
    console.log(`cold boot to power-off: ${Date.now() - t0} ms`)
    expect(r.lines).toContain('OVM-INIT-OK')
    expect(status.reason).toBe('poweroff')
    expect(vm.state).toBe('stopped')
  })

  it('pauses, resumes, snapshots, restores (counter continues) and stops', async () => {
    const initrd = heartbeatInitramfs(join(work, 'initrd'))
    const vm = await engine.boot(spec('hb', initrd))
    const r = record(vm)
    await until(() => lastHeartbeat(r.lines) >= 2, 60_000, 'heartbeat 2')
    expect(vm.state).toBe('running')

    await vm.pause()
    expect(vm.state).toBe('paused')
    const atPause = lastHeartbeat(r.lines)
    await new Promise((res) => setTimeout(res, 1500))
    expect(lastHeartbeat(r.lines)).toBe(atPause) // nothing runs while paused
    await vm.resume()
    expect(vm.state).toBe('running')
    await until(() => lastHeartbeat(r.lines) > atPause, 10_000, 'heartbeat after resume')

    const snapDir = join(work, 'snap1')
    const info = await vm.snapshot(snapDir)
    const atSnap = lastHeartbeat(r.lines)
    console.log(`snapshot: ${info.totalMs} ms (paused ${info.pausedMs} ms), ${(info.bytes / 1048576).toFixed(1)} MiB on disk`)
    expect(vm.state).toBe('running')
    expect(statSync(join(snapDir, 'state.bin')).size).toBeLessThan(4 << 20) // device state only
    expect((await readSnapshotFile(snapDir)).signature).toMatchObject({engine: 'qemu', accel: 'tcg', memoryMiB: 256})

    const st = await vm.stop()
    expect(st.reason).toBe('stopped')
    expect(vm.state).toBe('stopped')
    expect(r.states).toEqual(['paused', 'running', 'paused', 'running', 'stopping', 'stopped'])
    await expect(vm.pause()).rejects.toThrow(/has stopped/)

    const t1 = Date.now()
    const vm2 = await engine.restore(spec('hb2', initrd), snapDir)
    const restoredMs = Date.now() - t1
    const r2 = record(vm2)
    expect(vm2.state).toBe('running')
    await until(() => lastHeartbeat(r2.lines) >= 0, 10_000, 'heartbeat after restore')
    console.log(`restore to running: ${restoredMs} ms, to first heartbeat: ${Date.now() - t1} ms`)
    expect(r2.lines).not.toContain('OVM-INIT-OK')
    const first = lastHeartbeat(r2.lines)
    expect(first).toBeGreaterThanOrEqual(atSnap - 1)
    expect(first).toBeLessThanOrEqual(atSnap + 3)

    // A restored VM maps the snapshot's RAM privately: its own snapshot carries RAM in the stream.
    await until(() => lastHeartbeat(r2.lines) >= first + 1, 10_000, 'a second heartbeat after restore')
    const snap2 = join(work, 'snap2')
    await vm2.snapshot(snap2)
    const atSnap2 = lastHeartbeat(r2.lines)
    expect((await readSnapshotFile(snap2)).memory).toBe('stream')
    await vm2.stop()
    const vm3 = await engine.restore(spec('hb3', initrd), snap2)
    const r3 = record(vm3)
    await until(() => lastHeartbeat(r3.lines) >= 0, 10_000, 'heartbeat after the second restore')
    expect(lastHeartbeat(r3.lines)).toBeGreaterThanOrEqual(atSnap2 - 1)
    expect(lastHeartbeat(r3.lines)).toBeLessThanOrEqual(atSnap2 + 3)
    await vm3.stop()
  })

  it('attaches a read-only disk and an agent port, and cuts a new overlay while running', async () => {
    const s = spec('disks', heartbeatInitramfs(join(work, 'initrd')))
    const overlay = join(s.workDir, 'o0.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(FIXTURES, 'disk.qcow2'), '-F', 'qcow2', overlay])
    s.disks = [
      {chain: [{path: join(FIXTURES, 'disk.qcow2'), format: 'qcow2'}], overlay},
      {chain: [{path: join(FIXTURES, 'disk.raw'), format: 'raw'}], overlay: '', readOnly: true},
    ]
    s.agentSocket = join(s.workDir, 'agent.sock')
    const vm = await engine.boot(s)
    const r = record(vm)
    await until(() => r.lines.includes('OVM-INIT-OK'), 60_000, 'OVM-INIT-OK')
    const {createConnection} = await import('node:net')
    await new Promise<void>((res, rej) => createConnection(s.agentSocket!).once('connect', function (this: import('node:net').Socket) {
      this.destroy()
      res()
    }).once('error', rej))
    const next = join(s.workDir, 'o1.qcow2')
    await vm.addOverlay!(0, next)
    const info = JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', next], {encoding: 'utf8'})) as {'backing-filename': string}
    expect(info['backing-filename']).toBe(overlay)
    await expect(vm.addOverlay!(1, join(s.workDir, 'x.qcow2'))).rejects.toThrow(/read-only/)
    expect(vm.state).toBe('running')
    await vm.stop()
  })

  it('reports a failed start with QEMU\'s own words, and copes with a work folder too long for a socket path', async () => {
    const s = spec(`long-${'x'.repeat(120)}`, '/nonexistent/initrd.img')
    await expect(engine.boot(s)).rejects.toMatchObject({code: 'VM_START_FAILED', message: expect.stringContaining('/nonexistent/initrd.img')})
  })

  it('refuses a snapshot from another engine version, with the reason', async () => {
    const why = await engine.checkSnapshot({formatVersion: 1, engine: 'qemu', engineVersion: '6.0.0', machine: 'pc', cpuModel: 'qemu64', accel: 'tcg', memoryMiB: 256, cpus: 1, arch: 'x86_64'})
    expect(why).toMatch(/QEMU 6\.0\.0/)
    expect(await engine.checkSnapshot({formatVersion: 1, engine: 'kvm', engineVersion: '1', machine: 'ovm', cpuModel: 'host', accel: 'kvm', memoryMiB: 256, cpus: 1, arch: 'x86_64'})).toMatch(/kvm engine/)
  })
})
