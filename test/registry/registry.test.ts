import {readFile, readdir} from 'node:fs/promises'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ExitCode, OvmError} from '../../src/errors/index.js'
import {copy, referrersOf} from '../../src/oci/copy.js'
import {type ImageIndex, MediaType} from '../../src/oci/descriptor.js'
import {sha256} from '../../src/oci/digest.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {Registry} from '../../src/oci/remote/client.js'
import {listReferrers, localReferrers, readFallbackIndex, referrersTag} from '../../src/oci/remote/referrers.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {fastRetry, packFixture, randomDisk, referrerManifest, run, tempStore} from './util.js'

const SIG_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json'
const SBOM_TYPE = 'application/spdx+json'

describe.skipIf(!registryAvailable())('remote client against docker-registry 2.8.2', () => {
  let reg: TestRegistry
  let tmp: Awaited<ReturnType<typeof tempStore>>
  let digest: string
  let bigDisk: string

  beforeAll(async () => {
    reg = await startRegistry()
    tmp = await tempStore()
    bigDisk = await randomDisk(tmp.dir, 24)
    digest = (await packFixture(tmp.store, 'example/busybox:1.0', bigDisk)).digest
  })
  afterAll(async () => {
    await reg?.stop()
    await tmp?.cleanup()
  })

  it('pushes an artifact that skopeo reads byte for byte, and pulls it back verified', async () => {
    const r = new Registry(reg.host, {retry: fastRetry})
    const repo = r.repository('vm/busybox')
    const res = await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    expect(res.descriptor.digest).toBe(digest)
    expect(res.blobs.copied).toBe(5) // config, kernel, initrd, two disks
    expect(res.manifests.copied).toBe(1)

    const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/vm/busybox:1.0`])
    expect(sha256(Buffer.from(raw.stdout))).toBe(digest)
    expect(Buffer.from(raw.stdout).equals(await tmp.store.fetchBytes(res.descriptor))).toBe(true)

    // skopeo copies it to an oci: layout with identical digests.
    const ociDir = join(tmp.dir, 'skopeo-oci')
    await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${reg.host}/vm/busybox:1.0`, `oci:${ociDir}:1.0`])
    const idx = JSON.parse(await readFile(join(ociDir, 'index.json'), 'utf8')) as ImageIndex
    expect(idx.manifests[0]?.digest).toBe(digest)
    const local = new Set(await tmp.store.blobs())
    for (const name of await readdir(join(ociDir, 'blobs', 'sha256'))) expect(local.has(`sha256:${name}`)).toBe(true)

    // Pull into a fresh store.
    const dst = await tempStore()
    try {
      const pulled = await copy(repo, '1.0', dst.store, `${reg.host}/vm/busybox:1.0`)
      expect(pulled.blobs.copied).toBe(5)
      expect((await dst.store.resolve(`${reg.host}/vm/busybox:1.0`)).digest).toBe(digest)
      const v = await dst.store.verify()
      expect(v.bad).toEqual([])
      expect(v.missing).toEqual([])
      expect(v.checked).toBe(6) // manifest, config, kernel, initrd, two disks
      // A second pull moves nothing.
      const again = await copy(repo, '1.0', dst.store, `${reg.host}/vm/busybox:1.0`)
      expect(again.blobs.copied + again.manifests.copied).toBe(0)
    } finally {
      await dst.cleanup()
    }
  })

  it('uploads large blobs in chunks and skips everything on an unchanged re-push', async () => {
    const r = new Registry(reg.host, {retry: fastRetry, monolithicMax: 4 * 1024 * 1024, chunkSize: 4 * 1024 * 1024})
    const repo = r.repository('vm/chunked')
    await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    // 24 MiB disk (tar) and 8 MiB kernel go in 4 MiB chunks: at least 6 + 2 PATCHes.
    expect(r.stats.byMethod.PATCH ?? 0).toBeGreaterThanOrEqual(8)
    const before = {...r.stats.byMethod}
    const t0 = performance.now()
    const again = await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    const ms = performance.now() - t0
    expect(again.blobs.copied).toBe(0)
    expect(again.manifests.skipped).toBe(1)
    expect((r.stats.byMethod.PATCH ?? 0) - (before.PATCH ?? 0)).toBe(0)
    expect((r.stats.byMethod.POST ?? 0) - (before.POST ?? 0)).toBe(0)
    expect(ms).toBeLessThan(1000)
    // What the chunks made is what skopeo reads.
    const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/vm/chunked:1.0`])
    expect(sha256(Buffer.from(raw.stdout))).toBe(digest)
  })

  it('mounts blobs across repositories of the same registry instead of copying them', async () => {
    const r = new Registry(reg.host, {retry: fastRetry})
    const a = r.repository('vm/mount-a')
    const b = r.repository('vm/mount-b')
    await copy(tmp.store, 'example/busybox:1.0', a, '1.0')
    const patchesBefore = r.stats.byMethod.PUT ?? 0
    const res = await copy(a, '1.0', b, '1.0')
    expect(res.blobs.mounted).toBe(5)
    expect(res.blobs.copied).toBe(0)
    expect(r.stats.mounts).toBe(5)
    // Only the manifest and the tag were PUT.
    expect((r.stats.byMethod.PUT ?? 0) - patchesBefore).toBe(2)
    expect((await b.resolve('1.0')).digest).toBe(digest)
  })

  it('keeps referrers in the sha256-<hex> tag index (no referrers API in 2.8.2), merging and cleaning up', async () => {
    const r = new Registry(reg.host, {retry: fastRetry})
    const repo = r.repository('vm/signed')
    const res = await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    const subject = res.descriptor
    const blob = Buffer.from('{"fake":"bundle"}')
    const layer = {mediaType: SIG_TYPE, digest: sha256(blob), size: blob.length}
    await repo.push(layer, blob)
    await repo.push({mediaType: MediaType.empty, digest: sha256('{}'), size: 2}, Buffer.from('{}'))
    const sig = referrerManifest(subject, SIG_TYPE, layer, 'sig')
    await repo.push(sig.desc, sig.bytes)
    expect(repo.referrersApi).toBe(false)
    const first = await readFallbackIndex(repo, subject.digest)
    expect(first?.index.manifests.map((m) => m.digest)).toEqual([sig.desc.digest])
    expect(first?.index.manifests[0]?.artifactType).toBe(SIG_TYPE)

    const sbom = referrerManifest(subject, SBOM_TYPE, layer, 'sbom')
    await repo.push(sbom.desc, sbom.bytes)
    const all = await listReferrers(repo, subject.digest)
    expect(all.map((d) => d.digest).sort()).toEqual([sig.desc.digest, sbom.desc.digest].sort())
    expect((await listReferrers(repo, subject.digest, SBOM_TYPE)).map((d) => d.digest)).toEqual([sbom.desc.digest])
    // The first index was deleted once replaced.
    expect(await repo.exists(first!.desc)).toBe(false)
    // Pushing the same referrer again changes nothing.
    const before = (await readFallbackIndex(repo, subject.digest))!.desc.digest
    await repo.push(sig.desc, sig.bytes)
    expect((await readFallbackIndex(repo, subject.digest))!.desc.digest).toBe(before)
    // The fallback tag is a real tag skopeo sees.
    const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/vm/signed:${referrersTag(subject.digest)}`])
    expect((JSON.parse(raw.stdout) as ImageIndex).manifests).toHaveLength(2)

    // copy() with referrers carries both to another repository and into a local store.
    const other = r.repository('vm/signed-copy')
    const copied = await copy(repo, '1.0', other, '1.0', {}, {referrers: referrersOf})
    expect(copied.referrers).toHaveLength(2)
    expect((await listReferrers(other, subject.digest)).length).toBe(2)
    const dst = await tempStore()
    try {
      const pulled = await copy(other, '1.0', dst.store, `${reg.host}/vm/signed-copy:1.0`, {}, {referrers: referrersOf})
      expect(pulled.referrers).toHaveLength(2)
      expect((await localReferrers(dst.store, subject.digest)).map((d) => d.artifactType).sort()).toEqual([SBOM_TYPE, SIG_TYPE].sort())
    } finally {
      await dst.cleanup()
    }
  })

  it('lists tags, deletes manifests, and names the reference in not-found errors', async () => {
    const r = new Registry(reg.host, {retry: fastRetry})
    const repo = r.repository('vm/tags')
    const res = await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    await repo.tag(res.descriptor, 'latest')
    expect((await repo.tags()).sort()).toEqual(['1.0', 'latest'])
    const listed = await repo.list()
    expect(listed.every((t) => t.descriptor.digest === digest)).toBe(true)
    await repo.delete(res.descriptor)
    const err = await repo.resolve('1.0').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(OvmError)
    expect((err as OvmError).exitCode).toBe(ExitCode.notFound)
    expect((err as OvmError).message).toContain(`${reg.host}/vm/tags:1.0`)
    expect((err as OvmError).hint).toBeTruthy()
  })

  it('pulls what skopeo pushed', async () => {
    const ociDir = join(tmp.dir, 'skopeo-src')
    // Write the artifact with skopeo from an oci: export of our store.
    await run('skopeo', ['copy', `oci:${tmp.store.root}:example/busybox:1.0`, `oci:${ociDir}:x`]).catch(async () => {
      // skopeo wants the ref name as stored; fall back to copying the digest.
      await run('skopeo', ['copy', `oci:${tmp.store.root}@${digest}`, `oci:${ociDir}:x`])
    })
    await run('skopeo', ['copy', '--dest-tls-verify=false', `oci:${ociDir}:x`, `docker://${reg.host}/vm/from-skopeo:2`])
    const dst = await tempStore()
    try {
      const r = new Registry(reg.host, {retry: fastRetry})
      const pulled = await copy(r.repository('vm/from-skopeo'), '2', dst.store, `${reg.host}/vm/from-skopeo:2`)
      expect(pulled.descriptor.digest).toBe(digest)
      expect((await dst.store.verify()).bad).toEqual([])
      expect(new LayoutStore(dst.store.root)).toBeTruthy()
      expect(MediaType.imageManifest).toBe(pulled.descriptor.mediaType)
    } finally {
      await dst.cleanup()
    }
  })
})
