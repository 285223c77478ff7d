import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {describe, expect, it} from 'vitest'

import {KvmEngine} from '../../src/engine/kvm/engine.js'
import {QemuEngine} from '../../src/engine/qemu/engine.js'
import {readSnapshotSignature, selectEngine} from '../../src/engine/select.js'

describe('engine selection (real engines on this host)', () => {
  it('auto picks kvm where it runs guests, else qemu with the reason kvm was passed over', async () => {
    const kvm = new KvmEngine()
    const why = await kvm.unavailable()
    const s = await selectEngine('auto', {kvm, qemu: new QemuEngine()})
    if (why) {
      expect(s.engine.name).toBe('qemu')
      expect(s.fallbackReason).toBe(`kvm: ${why}`)
    } else {
      expect(s.engine.name).toBe('kvm')
      expect(s.fallbackReason).toBeUndefined()
    }
  })

  it('refuses a named engine that cannot run, saying why', async () => {
    const kvm = new KvmEngine()
    const why = await kvm.unavailable()
    if (why) await expect(selectEngine('kvm', {kvm})).rejects.toThrow(`the kvm engine cannot run here: kvm: ${why}`)
    await expect(selectEngine('qemu', {})).rejects.toThrow('the qemu engine cannot run here: qemu: not in this runtime')
    const broken = new QemuEngine({binary: '/nonexistent/qemu'})
    await expect(selectEngine('auto', {qemu: broken})).rejects.toThrow(/no engine can run here \(kvm: not in this runtime; qemu: cannot run \/nonexistent\/qemu/)
  })
})

describe('readSnapshotSignature', () => {
  const sig = (engine: 'kvm' | 'qemu') => ({formatVersion: 1, engine, engineVersion: '1', machine: 'm', cpuModel: 'c', accel: 'kvm', memoryMiB: 256, cpus: 1, arch: 'x86_64'})

  it("reads either engine's snapshot.json by the maker it names, and refuses a folder that is not a snapshot", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ovm-sig-'))
    try {
      writeFileSync(join(dir, 'snapshot.json'), JSON.stringify({signature: sig('kvm'), createdAt: 'now', disks: 0}))
      expect((await readSnapshotSignature(dir)).engine).toBe('kvm')
      // the qemu engine's file needs its memory mode; a kvm file has none and must not be read as one
      writeFileSync(join(dir, 'snapshot.json'), JSON.stringify({signature: sig('qemu'), memory: 'file'}))
      expect((await readSnapshotSignature(dir)).engine).toBe('qemu')
      writeFileSync(join(dir, 'snapshot.json'), '{not json')
      await expect(readSnapshotSignature(dir)).rejects.toThrow(/snapshot\.json is not JSON/)
      rmSync(join(dir, 'snapshot.json'))
      await expect(readSnapshotSignature(dir)).rejects.toThrow(/is not a snapshot: snapshot\.json is missing/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})
