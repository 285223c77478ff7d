/**
 * The runtime and server against a scripted engine: the paths a real VMM
 * rarely takes (a crash, a failed start) without booting anything.
 */
import {chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadArtifact} from '../../src/artifact/load.js'
import {packArtifact} from '../../src/build/pack.js'
import {ContractClient} from '../../src/contract/client.js'
import {Runtime} from '../../src/contract/runtime.js'
import {ContractServer} from '../../src/contract/server.js'
import type {LogRecord} from '../../src/contract/types.js'
import {CONTRACT_DOC, contractProblems} from '../../src/contract/validate.js'
import type {BootSpec, Engine, ExitStatus, SnapshotInfo, VmEvent, VmHandle, VmState} from '../../src/engine/types.js'
import {AbortError, ExitCode} from '../../src/errors/index.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {FIXTURES, KERNEL} from '../engine/helpers.js'

class ScriptedVm implements VmHandle {
  readonly engine = 'qemu' as const
  readonly accel = 'tcg' as const
  state: VmState = 'running'
  readonly pid = 4242
  readonly startedAt = Date.now()
  private listeners = new Set<(e: VmEvent) => void>()
  private done!: (s: ExitStatus) => void
  private readonly exited = new Promise<ExitStatus>((r) => (this.done = r))
  on(l: (e: VmEvent) => void): () => void {
    this.listeners.add(l)
    return () => this.listeners.delete(l)
  }
  emit(e: VmEvent): void {
    for (const l of this.listeners) l(e)
  }
  print(line: string): void {
    this.emit({type: 'output', data: Buffer.from(`${line}\r\n`), at: Date.now()})
    this.emit({type: 'console', line, at: Date.now()})
  }
  end(status: ExitStatus): void {
    this.state = status.reason === 'crashed' ? 'error' : 'stopped'
    this.emit({type: 'exit', status, at: Date.now()})
    this.emit({type: 'state', state: this.state, at: Date.now()})
    this.done(status)
  }
  write(): void {}
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  snapshot(): Promise<SnapshotInfo> {
    return Promise.reject(new AbortError({code: 'SNAPSHOT_FAILED', message: 'scripted', exitCode: ExitCode.engine}))
  }
  async stop(): Promise<ExitStatus> {
    this.end({reason: 'stopped', code: 0, signal: null})
    return this.exited
  }
  wait(): Promise<ExitStatus> {
    return this.exited
  }
}

class ScriptedEngine implements Engine {
  readonly name = 'qemu' as const
  vms: ScriptedVm[] = []
  specs: BootSpec[] = []
  failNext?: string
  async unavailable(): Promise<string | undefined> {
    return undefined
  }
  async version(): Promise<string> {
    return 'scripted'
  }
  async boot(spec: BootSpec): Promise<VmHandle> {
    this.specs.push(spec)
    if (this.failNext) {
      const m = this.failNext
      this.failNext = undefined
      throw new AbortError({code: 'VM_START_FAILED', message: m, exitCode: ExitCode.engine})
    }
    const vm = new ScriptedVm()
    this.vms.push(vm)
    return vm
  }
  async checkSnapshot(): Promise<string | undefined> {
    return undefined
  }
  restore(): Promise<VmHandle> {
    throw new Error('not scripted')
  }
}

const home = mkdtempSync(join(tmpdir(), 'ovm-rt-'))
const socketPath = join(home, 'ovm.sock')
const store = new LayoutStore(join(home, 'store'))
const engine = new ScriptedEngine()
const runtime = new Runtime({store, runDir: join(home, 'run'), engines: {qemu: engine}})
const server = new ContractServer({runtime, socketPath, log: () => undefined})
const client = new ContractClient(socketPath)

beforeAll(async () => {
  await server.listen()
  await packArtifact(store, {name: 'test/x', version: '1', kernel: KERNEL, cmdline: 'console=ttyS0 quiet', disks: [{path: join(FIXTURES, 'disk.qcow2')}], tags: ['test/x:1']})
})
afterAll(async () => {
  await runtime.shutdown()
  await server.close()
  rmSync(home, {recursive: true, force: true})
})

describe('the contract document', () => {
  it('resolves every $ref and compiles every body schema', () => {
    const doc = JSON.parse(readFileSync(CONTRACT_DOC, 'utf8')) as Record<string, unknown>
    const refs: string[] = []
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk)
      else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) k === '$ref' ? refs.push(x as string) : walk(x)
    }
    walk(doc)
    expect(refs.length).toBeGreaterThan(20)
    for (const r of refs) {
      const target = r.replace(/^#\//, '').split('/').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], doc)
      expect(target, r).toBeDefined()
    }
    for (const name of ['StartRequest', 'StopRequest', 'StopResponse', 'SnapshotRequest', 'SnapshotResponse', 'InjectRequest', 'OkResponse', 'InstanceStatus', 'InstanceList', 'LogRecord', 'Error'] as const) {
      expect(() => contractProblems(name, {})).not.toThrow()
    }
  })
})

describe('runtime with a scripted engine', () => {
  it('passes the artifact to the engine: blobs, cmdline, the disk chain with an overlay, overrides', async () => {
    const st = await client.start({manifest: 'test/x:1', overrides: {memory: '1G', cpus: 2}})
    expect(contractProblems('InstanceStatus', st)).toEqual([])
    const spec = engine.specs.at(-1)!
    expect(spec).toMatchObject({cmdline: 'console=ttyS0 quiet', memoryMiB: 1024, cpus: 2, devices: []})
    expect(spec.kernel).toMatch(/blobs\/sha256\/[a-f0-9]{64}$/)
    expect(spec.disks).toHaveLength(1)
    expect(spec.disks[0]!.chain[0]!.path).toContain(join('cache', 'disks'))
    expect(spec.disks[0]!.overlay).toBe(join(spec.workDir, 'disk-0.qcow2'))
    await client.stop(st.instance_id)
  })

  it('a VMM crash: state error with the reason, the exit recorded, the log stream ends, the work folder removed', async () => {
    const st = await client.start({manifest: 'test/x:1'})
    const vm = engine.vms.at(-1)!
    const workDir = engine.specs.at(-1)!.workDir
    const records: LogRecord[] = []
    const following = client.logs(st.instance_id, (r) => records.push(r))
    vm.print('hello')
    await new Promise((r) => setTimeout(r, 50))
    vm.end({reason: 'crashed', code: 1, signal: null, detail: 'qemu: something broke'})
    await following
    expect(records.map((r) => r.type)).toEqual(['state', 'state', 'console', 'exit', 'state'])
    expect(records.at(-1)).toMatchObject({type: 'state', state: 'error'})
    for (const r of records) expect(contractProblems('LogRecord', r)).toEqual([])
    const s = await client.status(st.instance_id)
    expect(contractProblems('InstanceStatus', s)).toEqual([])
    expect(s).toMatchObject({state: 'error', error: 'qemu: something broke', exit: {reason: 'crashed', code: 1}})
    await new Promise((r) => setTimeout(r, 50))
    expect(() => readFileSync(join(workDir, 'disk-0.qcow2'))).toThrow(/ENOENT/)
  })

  it('a failed start answers 500 with the engine error, records the instance as error, and the server keeps serving', async () => {
    engine.failNext = 'qemu did not start: no such machine'
    await expect(client.start({manifest: 'test/x:1'})).rejects.toMatchObject({code: 'VM_START_FAILED', message: 'qemu did not start: no such machine'})
    const list = await client.list()
    expect(list[0]).toMatchObject({state: 'error', error: 'qemu did not start: no such machine'})
    expect((await client.list()).length).toBeGreaterThan(0)
  })

  it('a failed snapshot answers with the error and the instance keeps running', async () => {
    const st = await client.start({manifest: 'test/x:1'})
    await expect(client.snapshot(st.instance_id, 'test/x:snap')).rejects.toMatchObject({code: 'SNAPSHOT_FAILED'})
    expect((await client.status(st.instance_id)).state).toBe('running')
    await expect(store.resolve('test/x:snap')).rejects.toMatchObject({code: 'REF_NOT_FOUND'})
    await client.stop(st.instance_id)
  })

  it('a RAM snapshot layer that is not ovm\'s, or fails its digest, is refused by name (no hang)', async () => {
    await packArtifact(store, {name: 'test/x', version: '2', kernel: KERNEL, ramSnapshot: {path: join(FIXTURES, 'ramsnap.bin')}, disks: [], tags: ['test/x:ram']})
    await expect(client.start({manifest: 'test/x:ram'})).rejects.toMatchObject({code: 'SNAPSHOT_INVALID', message: expect.stringContaining('cannot unpack RAM snapshot')})
    // Flip one byte of the blob: the digest check while reading fails the unpack.
    const a = await loadArtifact(store, 'test/x:ram')
    const blob = store.blobPath(a.ovms.ramSnapshot!.ref)
    const bytes = readFileSync(blob)
    bytes[100] = (bytes[100] as number) ^ 0xff
    chmodSync(blob, 0o644)
    writeFileSync(blob, bytes)
    await expect(client.start({manifest: 'test/x:ram'})).rejects.toMatchObject({code: 'SNAPSHOT_INVALID', message: expect.stringMatching(/blob sha256:[a-f0-9]{64}: content does not match its descriptor/)})
    expect((await client.list())[0]).toMatchObject({state: 'error'})
  })

  it('the kvm engine is refused by name until it exists', async () => {
    await expect(client.start({manifest: 'test/x:1', overrides: {engine: 'kvm'}})).rejects.toMatchObject({code: 'ENGINE_UNAVAILABLE', message: expect.stringContaining('kvm engine')})
  })
})
