import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'

const KERNEL_ROOT = join(FIXTURES, 'kernel-root')

describe('ovm init', () => {
  const tmp = tempDir('ovm-init-')
  const home = join(tmp.path, 'home')
  afterAll(() => tmp.cleanup())

  it('lists the templates', async () => {
    const r = await ovm(['init', '--list', '--json'], {home})
    expect(r.code).toBe(0)
    const names = JSON.parse(r.stdout).templates.map((t: {name: string}) => t.name)
    expect(names).toEqual(['busybox', 'container', 'debian', 'service'])
  })

  it('writes a template with busybox beside it, and never overwrites without --force', async () => {
    const dir = join(tmp.path, 'p1')
    const r = await ovm(['init', '--template', 'busybox', dir, '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).files.sort()).toEqual(['Ovmfile', 'busybox', 'hello.sh'])
    expect(readFileSync(join(dir, 'busybox')).equals(readFileSync('/bin/busybox'))).toBe(true)
    writeFileSync(join(dir, 'Ovmfile'), '# mine\n')
    const again = await ovm(['init', '--template', 'busybox', dir], {home})
    expect(again.code).toBe(6)
    expect(again.stderr).toContain('already has')
    expect(readFileSync(join(dir, 'Ovmfile'), 'utf8')).toBe('# mine\n')
    expect((await ovm(['init', '--template', 'busybox', dir, '--force'], {home})).code).toBe(0)
    expect(readFileSync(join(dir, 'Ovmfile'), 'utf8')).toContain('FROM scratch')
  })

  it('an unknown template or no template in a script is a clear error', async () => {
    const bad = await ovm(['init', '--template', 'nope', join(tmp.path, 'p2')], {home})
    expect(bad.code).toBe(3)
    expect(bad.stderr).toContain('busybox, container, debian, service')
    const none = await ovm(['init', join(tmp.path, 'p3')], {home})
    expect(none.code).toBe(2)
    expect(none.stderr).toContain('--template')
    expect(existsSync(join(tmp.path, 'p3', 'Ovmfile'))).toBe(false)
  })
})

describe.skipIf(vmSkipReason())('every template builds and boots (QEMU)', () => {
  const tmp = tempDir('ovm-tpl-')
  const home = join(tmp.path, 'home')
  let release: () => void
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  const build = async (name: string): Promise<void> => {
    const dir = join(tmp.path, name)
    expect((await ovm(['init', '--template', name, dir], {home})).code).toBe(0)
    const r = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', `tpl/${name}:1`], {home})
    expect(r.code, r.stderr).toBe(0)
  }

  it('busybox: prints its hello and powers off', async () => {
    await build('busybox')
    const r = await ovm(['run', 'tpl/busybox:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/hello from busybox-vm: Linux 6\.1\.0-56-amd64, \d+ MiB of memory/)
  })

  it('service: restores from its baked snapshot, already listening', async () => {
    await build('service')
    const r = await ovm(['run', '-d', 'tpl/service:1', '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    const st = JSON.parse(r.stdout)
    expect(st.metrics.restored).toBe(true)
    let logs = ''
    for (let i = 0; i < 150 && !/uptime tick [1-9]/.test(logs); i++) {
      await sleep(100)
      logs = (await ovm(['logs', st.instance_id], {home})).stdout
    }
    expect(logs).toMatch(/uptime tick [1-9]/)
    expect(logs).not.toContain('listening on') // printed before the snapshot, not again
    await ovm(['stop', st.instance_id], {home})
  })
})
