import {describe, expect, it} from 'vitest'

import {KvmEngine} from '../../src/engine/kvm/engine.js'
import {QemuEngine} from '../../src/engine/qemu/engine.js'
import {selectEngine} from '../../src/engine/select.js'

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
