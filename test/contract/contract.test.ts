import {spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, statSync} from 'node:fs'
import {request} from 'node:http'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadArtifact} from '../../src/artifact/load.js'
import {buildArtifact} from '../../src/artifact/oci.js'
import {packArtifact} from '../../src/build/pack.js'
import {ContractClient} from '../../src/contract/client.js'
import {Runtime} from '../../src/contract/runtime.js'
import {ContractServer, MAX_BODY_BYTES} from '../../src/contract/server.js'
import type {LogRecord} from '../../src/contract/types.js'
import {type ContractSchema, contractProblems} from '../../src/contract/validate.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {FIXTURES, KERNEL, heartbeatInitramfs, lastHeartbeat, until, vmSkipReason, holdVmLock} from '../engine/helpers.js'

const skip = vmSkipReason()
const home = mkdtempSync(join(tmpdir(), 'ovm-ct-'))
const socketPath = join(home, 'ovm.sock')
const store = new LayoutStore(join(home, 'store'))
const runtime = new Runtime({store, runDir: join(home, 'run')})
const server = new ContractServer({runtime, socketPath, log: () => undefined})
const client = new ContractClient(socketPath)

/** A raw HTTP exchange over the socket: status and parsed body. */
function raw(method: string, path: string, body?: string | Buffer, headers: Record<string, string | number> = {}): Promise<{status: number; body: unknown; text: string}> {
  return new Promise((resolve, reject) => {
    const req = request({socketPath, method, path, headers: body === undefined ? headers : {'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers}}, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let parsed: unknown
        try {
          parsed = JSON.parse(text)
        } catch {
          parsed = undefined
        }
        resolve({status: res.statusCode ?? 0, body: parsed, text})
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

function expectValid(schema: ContractSchema, body: unknown): void {
  expect(contractProblems(schema, body), JSON.stringify(body)).toEqual([])
}

async function stillServing(): Promise<void> {
  const r = await raw('GET', '/instances')
  expect(r.status).toBe(200)
  expectValid('InstanceList', r.body)
}

beforeAll(async () => {
  await server.listen()
})

afterAll(async () => {
  await runtime.shutdown()
  await server.close()
  rmSync(home, {recursive: true, force: true})
})

describe('contract server: socket and bad requests', () => {
  it('creates its socket with mode 0600 and refuses a second daemon on it', async () => {
    expect(statSync(socketPath).mode & 0o777).toBe(0o600)
    const second = new ContractServer({runtime, socketPath})
    await expect(second.listen()).rejects.toMatchObject({code: 'DAEMON_RUNNING'})
    await stillServing()
  })

  it.skipIf(process.getuid?.() !== 0)('does not let a second user connect', () => {
    const script = `require('net').connect(${JSON.stringify(socketPath)}).on('connect',()=>{console.log('CONNECTED');process.exit(0)}).on('error',(e)=>{console.log(e.code);process.exit(3)})`
    const r = spawnSync(process.execPath, ['-e', script], {uid: 65534, gid: 65534, encoding: 'utf8', cwd: '/'})
    expect(r.stdout.trim()).toMatch(/^(EACCES|EPERM)$/)
    expect(r.status).toBe(3)
  })

  const bad: [string, string, string | undefined, number, string][] = [
    ['malformed JSON', '/start', '{"manifest": ', 400, 'MALFORMED_JSON'],
    ['a missing field', '/start', '{}', 400, 'INVALID_REQUEST'],
    ['a wrong type', '/start', '{"manifest": 42}', 400, 'INVALID_REQUEST'],
    ['an unknown field', '/stop', '{"instance_id": "abcdefabcdef", "force": true}', 400, 'INVALID_REQUEST'],
    ['a bad override', '/start', '{"manifest": "x:1", "overrides": {"cpus": 0}}', 400, 'INVALID_REQUEST'],
    ['an unknown instance (stop)', '/stop', '{"instance_id": "abcdefabcdef"}', 404, 'INSTANCE_NOT_FOUND'],
    ['an unknown instance (snapshot)', '/snapshot', '{"instance_id": "abcdefabcdef", "tag": "x/y:1"}', 404, 'INSTANCE_NOT_FOUND'],
    ['an unknown instance (inject)', '/inject', '{"instance_id": "abcdefabcdef", "content": {"mmio": {"data": "hi"}}}', 404, 'INSTANCE_NOT_FOUND'],
    ['an unknown artifact', '/start', '{"manifest": "nothing/here:1"}', 404, 'REF_NOT_FOUND'],
  ]
  for (const [what, path, body, status, code] of bad) {
    it(`answers ${status} ${code} to ${what} and keeps serving`, async () => {
      const r = await raw('POST', path, body)
      expect(r.status).toBe(status)
      expectValid('Error', r.body)
      expect((r.body as {error: {code: string}}).error.code).toBe(code)
      await stillServing()
    })
  }

  it('details every problem of an invalid body', async () => {
    const r = await raw('POST', '/start', '{"overrides": {"cpus": "two"}, "extra": 1}')
    expect(r.status).toBe(400)
    const details = (r.body as {error: {details: {at: string}[]}}).error.details.map((d) => d.at)
    expect(details).toEqual(expect.arrayContaining(['/manifest', '/extra', '/overrides/cpus']))
  })

  it('answers 413 to a body over the limit and keeps serving', async () => {
    const big = JSON.stringify({manifest: 'x'.repeat(MAX_BODY_BYTES + 10)})
    const r = await raw('POST', '/start', big)
    expect(r.status).toBe(413)
    expectValid('Error', r.body)
    await stillServing()
  })

  it('answers 404 to unknown ids and paths, 405 to a wrong method', async () => {
    for (const [m, p, s] of [
      ['GET', '/status/abcdefabcdef', 404],
      ['GET', '/status/..%2Fetc', 404],
      ['GET', '/logs/abcdefabcdef', 404],
      ['GET', '/nope', 404],
      ['GET', '/start', 405],
      ['DELETE', '/instances', 405],
    ] as const) {
      const r = await raw(m, p)
      expect(r.status, `${m} ${p}`).toBe(s)
      expectValid('Error', r.body)
    }
    await stillServing()
  })

  it('answers a malformed HTTP request with 400 and keeps serving', async () => {
    const {connect} = await import('node:net')
    const answer = await new Promise<string>((resolve) => {
      const s = connect(socketPath)
      let got = ''
      s.on('data', (d) => (got += d.toString()))
      s.on('close', () => resolve(got))
      s.on('error', () => resolve(got))
      s.write('THIS IS NOT HTTP\r\n\r\n')
    })
    expect(answer).toMatch(/^HTTP\/1\.1 400/)
    await stillServing()
  })
})

describe.skipIf(skip)('contract server: instances (TCG)', () => {
  let release: () => void = () => undefined
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(() => release())
  let original = ''
  let id = ''
  let atSnapshot = -1

  beforeAll(async () => {
    const initrd = heartbeatInitramfs(join(home, 'initrd'))
    await packArtifact(store, {name: 'test/heartbeat', version: '1', kernel: KERNEL, initrd, cmdline: 'console=ttyS0 panic=-1', disks: [{path: join(FIXTURES, 'disk.qcow2')}], tags: ['test/heartbeat:plain']})
    // The same artifact with a shared-memory device (pack has no flag for devices).
    const a = await loadArtifact(store, 'test/heartbeat:plain')
    const ovms = {...a.ovms, devices: [{type: 'ivshmem', name: 'mmio0', size: 1 << 20}]}
    const built = buildArtifact(ovms, a.manifest.layers)
    await store.push(built.config, built.configBytes)
    await store.push(built.descriptor, built.manifestBytes)
    await store.tag(built.descriptor, 'test/heartbeat:1')
    original = built.descriptor.digest
  })

  it('starts an instance: running, the marker in /logs, status right', async () => {
    const r = await raw('POST', '/start', JSON.stringify({manifest: 'test/heartbeat:1', overrides: {memory: '256M', cpus: 1}}))
    expect(r.status, r.text).toBe(200)
    expectValid('InstanceStatus', r.body)
    const st = r.body as {instance_id: string; state: string; pid: number; metrics: {restored: boolean; accel: string}; artifact: {digest: string}}
    expect(st.state).toBe('running')
    expect(st.pid).toBeGreaterThan(0)
    expect(st.metrics).toMatchObject({restored: false, accel: 'tcg'})
    expect(st.artifact.digest).toBe(original)
    id = st.instance_id

    const lines: string[] = []
    const follower = client.logs(id, (rec) => {
      expectValid('LogRecord', rec)
      if (rec.type === 'console') lines.push(rec.line)
    })
    await until(() => lines.includes('OVM-INIT-OK'), 60_000, 'OVM-INIT-OK in /logs')
    await until(() => lastHeartbeat(lines) >= 1, 20_000, 'heartbeat 1')
    const s = await raw('GET', `/status/${id}`)
    expectValid('InstanceStatus', s.body)
    expect(s.body).toMatchObject({instance_id: id, state: 'running'})
    expect((s.body as {uptime_ms: number}).uptime_ms).toBeGreaterThan(0)
    const list = (await raw('GET', '/instances')).body as {instances: {instance_id: string}[]}
    expect(list.instances.map((i) => i.instance_id)).toContain(id)
    // The follower is still streaming: it ends only when the instance stops.
    expect(await Promise.race([follower.then(() => 'ended'), new Promise((r) => setTimeout(() => r('open'), 200))])).toBe('open')
  })

  it('injects content into the shared-memory device', async () => {
    const r = await raw('POST', '/inject', JSON.stringify({instance_id: id, content: {mmio: {offset: 16, data: 'hello guest'}}}))
    expect(r.status, r.text).toBe(200)
    expectValid('OkResponse', r.body)
    const path = runtime.get(id).devices[0]!.path!
    expect(readFileSync(path).subarray(16, 27).toString()).toBe('hello guest')
    const tooFar = await raw('POST', '/inject', JSON.stringify({instance_id: id, content: {mmio: {offset: 1 << 20, data: 'x'}}}))
    expect(tooFar.status).toBe(400)
    const noDev = await raw('POST', '/inject', JSON.stringify({instance_id: id, content: {mmio: {device: 'nope', data: 'x'}}}))
    expect(noDev.status).toBe(409)
  })

  it('snapshots with a tag: a new artifact whose subject is the original', async () => {
    const r = await raw('POST', '/snapshot', JSON.stringify({instance_id: id, tag: 'test/heartbeat:snap'}))
    expect(r.status, r.text).toBe(200)
    expectValid('SnapshotResponse', r.body)
    const body = r.body as {snapshot_ref: string; digest: string; subject: string; size: number; paused_ms: number}
    atSnapshot = lastHeartbeat(runtime.get(id).log.flatMap((l) => (l.type === 'console' ? [l.line] : [])))
    console.log(`snapshot: paused ${body.paused_ms} ms, ${(body.size / 1048576).toFixed(1)} MiB published`)
    expect(body.snapshot_ref).toBe('test/heartbeat:snap')
    expect(body.subject).toBe(original)
    const snap = await loadArtifact(store, 'test/heartbeat:snap')
    expect(snap.descriptor.digest).toBe(body.digest)
    expect(snap.manifest.subject?.digest).toBe(original)
    expect(snap.ovms.ramSnapshot?.compression).toBe('lz4')
    expect(snap.ovms.diskLayers).toHaveLength(2) // the base and the overlay captured with the RAM
    expect(snap.ovms.devices).toEqual([{type: 'ivshmem', name: 'mmio0', size: 1 << 20}])
    expect(snap.ovms.annotations?.['dev.ovm.snapshot.engine']).toBe('qemu')
    expect((await raw('GET', `/status/${id}`)).body).toMatchObject({state: 'running'})
  })

  it('stops: stopped, with the exit recorded, and the log stream ends', async () => {
    const records: LogRecord[] = []
    const follower = client.logs(id, (rec) => records.push(rec))
    const r = await raw('POST', '/stop', JSON.stringify({instance_id: id}))
    expect(r.status, r.text).toBe(200)
    expectValid('StopResponse', r.body)
    expect(r.body).toMatchObject({status: 'ok', exit: {reason: 'stopped'}})
    await follower // ends because the instance stopped
    expect(records.at(-1)).toMatchObject({type: 'state', state: 'stopped'})
    expect(records.some((x) => x.type === 'exit')).toBe(true)
    const states = records.flatMap((x) => (x.type === 'state' ? [x.state] : []))
    expect(states).toEqual(['starting', 'running', 'paused', 'running', 'stopping', 'stopped'])
    const s = await raw('GET', `/status/${id}`)
    expectValid('InstanceStatus', s.body)
    expect(s.body).toMatchObject({state: 'stopped', exit: {reason: 'stopped'}})
    expect((s.body as {pid?: number}).pid).toBeUndefined()
    // Stopping again is harmless; snapshotting a stopped instance is a conflict.
    expect((await raw('POST', '/stop', JSON.stringify({instance_id: id}))).status).toBe(200)
    const snap = await raw('POST', '/snapshot', JSON.stringify({instance_id: id}))
    expect(snap.status).toBe(409)
    expectValid('Error', snap.body)
  })

  it('restores the snapshot artifact: the counter continues, not from zero', async () => {
    const t0 = Date.now()
    const st = await client.start({manifest: 'test/heartbeat:snap'})
    const startMs = Date.now() - t0
    expectValid('InstanceStatus', st)
    expect(st.state).toBe('running')
    expect(st.metrics?.restored).toBe(true)
    const lines: string[] = []
    const follower = client.logs(st.instance_id, (rec) => {
      if (rec.type === 'console') lines.push(rec.line)
    })
    await until(() => lastHeartbeat(lines) >= 0, 20_000, 'a heartbeat after restore')
    console.log(`restore: start request ${startMs} ms (first use unpacks the layer), first heartbeat ${Date.now() - t0} ms`)
    expect(lines).not.toContain('OVM-INIT-OK')
    // The shared-memory device came back with what was injected before the snapshot.
    expect(readFileSync(runtime.get(st.instance_id).devices[0]!.path!).subarray(16, 27).toString()).toBe('hello guest')
    expect(atSnapshot).toBeGreaterThanOrEqual(1)
    expect(lastHeartbeat(lines)).toBeGreaterThanOrEqual(atSnapshot - 1)
    expect(lastHeartbeat(lines)).toBeLessThanOrEqual(atSnapshot + 3)
    await client.stop(st.instance_id)
    await follower
    // A second restore uses the unpacked cache.
    const t1 = Date.now()
    const again = await client.start({manifest: 'test/heartbeat:snap'})
    console.log(`second restore: start request ${Date.now() - t1} ms`)
    await client.stop(again.instance_id)
  })

  it('refuses a snapshot made by another QEMU release before unpacking it, naming why', async () => {
    const snap = await loadArtifact(store, 'test/heartbeat:snap')
    const ovms = {...snap.ovms, annotations: {...snap.ovms.annotations, 'dev.ovm.snapshot.engine-version': '6.0.0'}}
    const built = buildArtifact(ovms, snap.manifest.layers, {subject: snap.manifest.subject})
    await store.push(built.config, built.configBytes)
    await store.push(built.descriptor, built.manifestBytes)
    await store.tag(built.descriptor, 'test/heartbeat:old-qemu')
    const r = await raw('POST', '/start', JSON.stringify({manifest: 'test/heartbeat:old-qemu'}))
    expect(r.status).toBe(409)
    expectValid('Error', r.body)
    expect(r.body).toMatchObject({error: {code: 'SNAPSHOT_INCOMPATIBLE', hint: expect.stringContaining('cold')}})
    expect((r.body as {error: {message: string}}).error.message).toMatch(/made by QEMU 6\.0\.0, this host has QEMU \d+\.\d+/)
    await stillServing()
  })

  it('refuses a device type the engine does not support; the instance is recorded as error', async () => {
    const a = await loadArtifact(store, 'test/heartbeat:plain')
    const built = buildArtifact({...a.ovms, devices: [{type: 'gpu', name: 'gpu0'}]}, a.manifest.layers)
    await store.push(built.config, built.configBytes)
    await store.push(built.descriptor, built.manifestBytes)
    await store.tag(built.descriptor, 'test/heartbeat:gpu')
    const r = await raw('POST', '/start', JSON.stringify({manifest: 'test/heartbeat:gpu'}))
    expect(r.status).toBe(409)
    expect(r.body).toMatchObject({error: {code: 'DEVICE_UNSUPPORTED', message: expect.stringContaining('gpu0')}})
    const list = (await raw('GET', '/instances')).body as {instances: {state: string; error?: string; artifact: {reference: string}}[]}
    expectValid('InstanceList', list)
    expect(list.instances.find((i) => i.artifact.reference === 'test/heartbeat:gpu')).toMatchObject({state: 'error', error: expect.stringContaining('gpu')})
  })

  it('refuses to restore with other memory, naming why', async () => {
    const r = await raw('POST', '/start', JSON.stringify({manifest: 'test/heartbeat:snap', overrides: {memory: 512}}))
    expect(r.status).toBe(400)
    expect((r.body as {error: {message: string}}).error.message).toMatch(/256 MiB/)
    await stillServing()
  })
})
