import {randomBytes} from 'node:crypto'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ExitCode, OvmError} from '../../src/errors/index.js'
import {copy} from '../../src/oci/copy.js'
import {MediaType} from '../../src/oci/descriptor.js'
import {sha256} from '../../src/oci/digest.js'
import {Registry} from '../../src/oci/remote/client.js'
import {listReferrers, referrersTag} from '../../src/oci/remote/referrers.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {type Fault, FakeRegistry} from './fake-registry.js'
import {FaultProxy} from './proxy.js'
import {fastRetry, packFixture, randomDisk, referrerManifest, tempStore} from './util.js'

const blob = (n: number): {bytes: Buffer; desc: {mediaType: string; digest: string; size: number}} => {
  const bytes = randomBytes(n)
  return {bytes, desc: {mediaType: 'application/octet-stream', digest: sha256(bytes), size: n}}
}

describe('retries and resumes against a fault-injecting fake registry', () => {
  it('retries 429 (honouring Retry-After) and 503, never a 400', async () => {
    let n429 = 0
    let n503 = 0
    const fake = await new FakeRegistry({
      fault: (r): Fault => {
        if (r.method === 'HEAD' && n429 < 1) {
          n429++
          return {status: 429, headers: {'retry-after': '1'}}
        }
        if (r.method === 'POST' && n503 < 2) {
          n503++
          return {status: 503}
        }
        if (r.path.includes('/bad/')) return {status: 400, headers: {'content-type': 'application/json'}, body: '{"errors":[{"code":"NAME_INVALID","message":"bad name"}]}'}
        return undefined
      },
    }).start()
    try {
      const r = new Registry(fake.host, {retry: fastRetry})
      const b = blob(1000)
      const t0 = Date.now()
      await r.repository('x/y').push(b.desc, b.bytes)
      // Retry-After: 1 s is honoured, capped by maxDelayMs (50 ms here).
      expect(Date.now() - t0).toBeGreaterThanOrEqual(40)
      expect(n429).toBe(1)
      expect(n503).toBe(2)
      expect(fake.blobs.get(b.desc.digest)?.equals(b.bytes)).toBe(true)
      expect(r.stats.retries).toBe(3)
      const before = fake.log.length
      const err = await r.repository('x/bad').tags().catch((e: unknown) => e)
      expect(fake.log.length - before).toBe(1)
      expect((err as OvmError).message).toContain('NAME_INVALID')
    } finally {
      await fake.stop()
    }
  })

  it('gives up after the retry budget on a registry that keeps failing', async () => {
    const fake = await new FakeRegistry({fault: () => ({status: 502})}).start()
    try {
      const r = new Registry(fake.host, {retry: {...fastRetry, maxAttempts: 3}})
      const err = await r.repository('x/y').resolve('1').catch((e: unknown) => e)
      expect((err as OvmError).exitCode).toBe(ExitCode.network)
      expect(fake.log.length).toBe(3)
    } finally {
      await fake.stop()
    }
  })

  it('resumes a chunked upload from the session Range after a cut mid-PATCH', async () => {
    let cuts = 0
    const fake = await new FakeRegistry({
      fault: (r) => (r.method === 'PATCH' && cuts++ < 2 ? {cutAfter: 300_000} : undefined),
    }).start()
    try {
      const r = new Registry(fake.host, {retry: fastRetry, monolithicMax: 1024 * 1024, chunkSize: 1024 * 1024})
      const b = blob(3 * 1024 * 1024 + 5)
      await r.repository('x/y').push(b.desc, b.bytes)
      expect(fake.blobs.get(b.desc.digest)?.equals(b.bytes)).toBe(true)
      expect(r.stats.resumedUploads).toBe(2)
      // A resumed PATCH starts where the session stood, not at the chunk start.
      expect(fake.count('GET', /uploads/)).toBe(2)
    } finally {
      await fake.stop()
    }
  })

  it('resumes a download with a Range request after a cut', async () => {
    let cuts = 0
    const fake = await new FakeRegistry({fault: (r) => (r.method === 'GET' && r.path.includes('/blobs/sha256') && cuts++ < 2 ? {cutAfter: 200_000} : undefined)}).start()
    try {
      const b = blob(1024 * 1024)
      fake.blobs.set(b.desc.digest, b.bytes)
      const r = new Registry(fake.host, {retry: fastRetry})
      const parts: Buffer[] = []
      for await (const c of await r.repository('x/y').fetch(b.desc)) parts.push(c as Buffer)
      expect(Buffer.concat(parts).equals(b.bytes)).toBe(true)
      expect(r.stats.resumedDownloads).toBe(2)
      expect(fake.log.filter((q) => q.headers.range === 'bytes=200000-').length).toBe(1)
      expect(fake.log.filter((q) => q.headers.range === 'bytes=400000-').length).toBe(1)
    } finally {
      await fake.stop()
    }
  })

  it('uses a native referrers API when the registry has one (OCI-Subject, filters)', async () => {
    const fake = await new FakeRegistry({referrersApi: true}).start()
    try {
      const r = new Registry(fake.host, {retry: fastRetry})
      const repo = r.repository('x/y')
      const subjectBytes = Buffer.from(JSON.stringify({schemaVersion: 2, mediaType: MediaType.imageManifest, config: {}, layers: []}))
      const subject = {mediaType: MediaType.imageManifest, digest: sha256(subjectBytes), size: subjectBytes.length}
      await repo.push(subject, subjectBytes)
      const layer = {mediaType: 'application/octet-stream', digest: sha256('x'), size: 1}
      const a = referrerManifest(subject, 'application/vnd.example.a', layer)
      const b = referrerManifest(subject, 'application/vnd.example.b', layer)
      await repo.push(a.desc, a.bytes)
      await repo.push(b.desc, b.bytes)
      expect(repo.referrersApi).toBe(true)
      expect([...fake.tags.keys()].some((t) => t.endsWith(referrersTag(subject.digest)))).toBe(false)
      expect((await listReferrers(repo, subject.digest)).length).toBe(2)
      const onlyB = await listReferrers(repo, subject.digest, 'application/vnd.example.b')
      expect(onlyB.map((d) => d.digest)).toEqual([b.desc.digest])
      expect(fake.log.some((q) => q.query.get('artifactType') === 'application/vnd.example.b')).toBe(true)
    } finally {
      await fake.stop()
    }
  })
})

describe.skipIf(!registryAvailable())('a TCP proxy between client and docker-registry cuts and corrupts', () => {
  let reg: TestRegistry
  let tmp: Awaited<ReturnType<typeof tempStore>>
  let digest: string
  const [rhost, rport] = ['127.0.0.1', 0]

  beforeAll(async () => {
    reg = await startRegistry()
    tmp = await tempStore()
    digest = (await packFixture(tmp.store, 'example/busybox:1.0', await randomDisk(tmp.dir, 12))).digest
  })
  afterAll(async () => {
    await reg?.stop()
    await tmp?.cleanup()
  })

  const proxied = async (opts: ConstructorParameters<typeof FaultProxy>[1]): Promise<FaultProxy> =>
    new FaultProxy({host: rhost, port: reg.port || rport}, opts).start()

  it('push completes although connections are cut in the middle of blobs', async () => {
    const proxy = await proxied({cutUpAfter: 3_000_000, cuts: 3})
    try {
      const r = new Registry(proxy.host, {retry: fastRetry, monolithicMax: 2 * 1024 * 1024, chunkSize: 4 * 1024 * 1024})
      const res = await copy(tmp.store, 'example/busybox:1.0', r.repository('vm/cut'), '1.0', {}, {concurrency: 2})
      expect(proxy.cutsDone).toBe(3)
      expect(r.stats.retries).toBeGreaterThanOrEqual(3)
      expect(res.descriptor.digest).toBe(digest)
      // Read back directly (not through the proxy): every blob is intact.
      const direct = new Registry(reg.host)
      const dst = await tempStore()
      try {
        await copy(direct.repository('vm/cut'), '1.0', dst.store, 'x/y:1')
        expect((await dst.store.verify()).bad).toEqual([])
      } finally {
        await dst.cleanup()
      }
    } finally {
      await proxy.stop()
    }
  })

  it('pull completes although connections are cut mid-download', async () => {
    await copy(tmp.store, 'example/busybox:1.0', new Registry(reg.host).repository('vm/pullcut'), '1.0')
    const proxy = await proxied({cutDownAfter: 2_500_000, cuts: 3})
    const dst = await tempStore()
    try {
      const r = new Registry(proxy.host, {retry: fastRetry})
      const res = await copy(r.repository('vm/pullcut'), '1.0', dst.store, 'x/y:1')
      expect(proxy.cutsDone).toBe(3)
      expect(r.stats.resumedDownloads).toBeGreaterThanOrEqual(1)
      expect(res.descriptor.digest).toBe(digest)
      const v = await dst.store.verify()
      expect(v.bad).toEqual([])
      expect(v.checked).toBe(6)
    } finally {
      await dst.cleanup()
      await proxy.stop()
    }
  })

  it('a flipped byte is caught by the digest and nothing enters the store', async () => {
    await copy(tmp.store, 'example/busybox:1.0', new Registry(reg.host).repository('vm/flip'), '1.0')
    const proxy = await proxied({flipDownAt: 1_000_000})
    const dst = await tempStore()
    try {
      const r = new Registry(proxy.host, {retry: fastRetry})
      const err = await copy(r.repository('vm/flip'), '1.0', dst.store, 'x/y:1', {}, {concurrency: 1}).catch((e: unknown) => e)
      expect(proxy.flips).toBeGreaterThanOrEqual(1)
      expect(err).toBeInstanceOf(OvmError)
      expect((err as OvmError).exitCode).toBe(ExitCode.integrity)
      expect((err as OvmError).code).toBe('DIGEST_MISMATCH')
      // copy() settled what it had started before rejecting and started nothing after the failure:
      // the store does not change once it has returned.
      const right = (await dst.store.blobs()).length
      await new Promise((r) => setTimeout(r, 500))
      expect((await dst.store.blobs()).length).toBe(right)
      const v = await dst.store.verify()
      expect(v.bad).toEqual([])
      expect(await dst.store.list()).toEqual([])
      // The corrupted blob never got in, so not all six are there.
      expect((await dst.store.blobs()).length).toBeLessThan(6)
    } finally {
      await dst.cleanup()
      await proxy.stop()
    }
  })
})
