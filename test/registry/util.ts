import {execFile} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {packArtifact} from '../../src/build/pack.js'
import {type Descriptor, MediaType, jsonBytes} from '../../src/oci/descriptor.js'
import {sha256} from '../../src/oci/digest.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {FIXTURES} from '../helpers/cli.js'

export const run = promisify(execFile)

export async function tempStore(): Promise<{store: LayoutStore; dir: string; cleanup: () => Promise<void>}> {
  const dir = await mkdtemp(join(tmpdir(), 'ovm-reg-store-'))
  const store = new LayoutStore(join(dir, 'store'))
  await store.init()
  return {store, dir, cleanup: () => rm(dir, {recursive: true, force: true})}
}

/** Pack the standard fixture artifact (kernel, initrd, qcow2 disk; plus an optional extra disk file). */
export async function packFixture(store: LayoutStore, tag: string, extraDisk?: string): Promise<{digest: string}> {
  const disks: {path: string}[] = [{path: join(FIXTURES, 'disk.qcow2')}]
  if (extraDisk) disks.push({path: extraDisk})
  const r = await packArtifact(store, {
    name: 'example/busybox',
    version: '1.0',
    kernel: join(FIXTURES, 'vmlinuz'),
    initrd: join(FIXTURES, 'initramfs.cpio.gz'),
    cmdline: 'console=ttyS0',
    disks,
    tags: [tag],
    created: '2026-01-01T00:00:00Z',
  })
  return {digest: r.digest}
}

/** A raw disk image of `mib` MiB: random first half, zeros after (so it is not all one byte). */
export async function randomDisk(dir: string, mib: number, name = 'big.raw'): Promise<string> {
  const path = join(dir, name)
  const buf = Buffer.alloc(mib * 1024 * 1024)
  randomBytes(buf.length / 2).copy(buf)
  await writeFile(path, buf)
  return path
}

/** An OCI 1.1 artifact manifest (empty config) with `subject`, as a signature would be. */
export function referrerManifest(subject: Descriptor, artifactType: string, layer: Descriptor, note = ''): {desc: Descriptor; bytes: Buffer} {
  const empty = {mediaType: MediaType.empty, digest: sha256('{}'), size: 2, data: 'e30='}
  const doc = {
    schemaVersion: 2,
    mediaType: MediaType.imageManifest,
    artifactType,
    config: empty,
    layers: [layer],
    subject: {mediaType: subject.mediaType, digest: subject.digest, size: subject.size},
    annotations: {'org.opencontainers.image.created': '2026-01-01T00:00:00Z', note},
  }
  const bytes = jsonBytes(doc)
  return {desc: {mediaType: MediaType.imageManifest, digest: sha256(bytes), size: bytes.length}, bytes}
}

export const fastRetry = {maxAttempts: 8, baseDelayMs: 5, maxDelayMs: 50, maxElapsedMs: 20_000}
