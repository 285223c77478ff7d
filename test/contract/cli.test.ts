import {spawn} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadArtifact} from '../../src/artifact/load.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {INITRAMFS, KERNEL, heartbeatInitramfs, holdVmLock, lastHeartbeat, stopDaemon, until, vmSkipReason} from '../engine/helpers.js'
import {BIN, ovm} from '../helpers/cli.js'

const home = mkdtempSync(join(tmpdir(), 'ovm-cli-'))
const skip = vmSkipReason()

afterAll(async () => {
  await stopDaemon(home)
  rmSync(home, {recursive: true, force: true})
})

describe('commands without a daemon', () => {
  for (const args of [['ps'], ['stop', 'abcdefabcdef'], ['logs', 'abcdefabcdef'], ['snapshot', 'abcdefabcdef', '-t', 'x/y:1']]) {
    it(`ovm ${args[0]} says clearly that none is running`, async () => {
      const r = await ovm(args, {home})
      expect(r.code).toBe(4)
      expect(r.stderr).toContain(`no ovm daemon is running at ${join(home, 'ovm.sock')}`)
      expect(r.stderr).toContain('ovm serve')
    })
  }
})

describe.skipIf(skip)('ovm run / ps / logs / snapshot / stop (TCG)', () => {
  let release: () => void = () => undefined
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(() => release())
  let id = ''

  beforeAll(async () => {
    const initrd = heartbeatInitramfs(join(home, 'initrd'))
    const r = await ovm(['pack', '--name', 'test/hb', '--version', '1', '--kernel', KERNEL, '--initrd', initrd, '--cmdline', 'console=ttyS0 panic=-1', '-t', 'test/hb:1'], {home})
    expect(r.code, r.stderr).toBe(0)
  })

  it('run attaches to the console until the guest powers off (early output replayed)', async () => {
    const p = await ovm(['pack', '--name', 'test/fixture', '--version', '1', '--kernel', KERNEL, '--initrd', INITRAMFS, '--cmdline', 'console=ttyS0 panic=-1', '-t', 'test/fixture:1'], {home})
    expect(p.code, p.stderr).toBe(0)
    const r = await ovm(['run', 'test/fixture:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toContain('started an ovm daemon')
    expect(r.stdout).toContain('Linux version') // printed before the console attached
    expect(r.stdout).toContain('OVM-INIT-OK')
    expect(r.stderr).toMatch(/instance [a-f0-9]{12} stopped \(poweroff\)/)
  })

  it('run -d starts a daemon itself and prints the instance id', async () => {
    const r = await ovm(['run', '-d', 'test/hb:1', '--memory', '256M'], {home})
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout.trim()).toMatch(/^[a-f0-9]{12}$/)
    id = r.stdout.trim()
    expect(readFileSync(join(home, 'serve.log'), 'utf8')).toMatch(/pid \d+\)/)
    const ps = await ovm(['ps', '--json'], {home})
    expect(JSON.parse(ps.stdout).instances).toEqual([expect.objectContaining({instance_id: id, state: 'running'}), expect.objectContaining({state: 'stopped'})])
  })

  it('logs shows the console; snapshot -t publishes an artifact with the subject', async () => {
    let out = ''
    const poll = async (): Promise<void> => {
      out = (await ovm(['logs', id], {home})).stdout
    }
    for (let i = 0; i < 600 && lastHeartbeat(out.split('\n')) < 1; i++) {
      await poll()
      if (lastHeartbeat(out.split('\n')) < 1) await new Promise((r) => setTimeout(r, 250))
    }
    expect(out).toContain('OVM-INIT-OK')
    const snap = await ovm(['snapshot', id, '-t', 'test/hb:warm', '--json'], {home})
    expect(snap.code, snap.stderr).toBe(0)
    const body = JSON.parse(snap.stdout) as {snapshot_ref: string; digest: string}
    expect(body.snapshot_ref).toBe('test/hb:warm')
    const store = new LayoutStore(home)
    const a = await loadArtifact(store, 'test/hb:warm')
    expect(a.manifest.subject?.digest).toBe((await store.resolve('test/hb:1')).digest)
    const stop = await ovm(['stop', id], {home})
    expect(stop.code).toBe(0)
    expect(stop.stdout).toContain('stopped')
  }, 120_000)

  it('run of the snapshot restores and attaches; Ctrl-] detaches and the instance runs on', async () => {
    const before = lastHeartbeat((await ovm(['logs', id], {home})).stdout.split('\n'))
    const child = spawn(process.execPath, [BIN, 'run', 'test/hb:warm'], {env: {...process.env, OVM_HOME: home, NO_COLOR: '1'}, stdio: ['pipe', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const exited = new Promise<number | null>((r) => child.on('close', r))
    await until(() => lastHeartbeat(stdout.split('\n')) >= 0, 30_000, 'a heartbeat on the attached console')
    child.stdin.write(Buffer.from([0x1d]))
    expect(await exited).toBe(0)
    expect(stderr).toContain('restored in')
    expect(stderr).toContain('detached')
    expect(stdout).not.toContain('OVM-INIT-OK')
    expect(lastHeartbeat(stdout.split('\n'))).toBeGreaterThanOrEqual(before - 1)
    const ps = JSON.parse((await ovm(['ps', '--json'], {home})).stdout) as {instances: {instance_id: string; state: string; metrics: {restored: boolean}}[]}
    const restored = ps.instances.find((i) => i.metrics.restored)
    expect(restored?.state).toBe('running')
    expect((await ovm(['stop', restored!.instance_id], {home})).code).toBe(0)
  }, 60_000)
})
