import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {loadArtifact} from '../../src/artifact/load.js'
import {packArtifact} from '../../src/build/pack.js'
import {tarHeader} from '../../src/disk/tar.js'
import {createOverlay, diskCachePath, tarEntrySize, unpackDiskChain, unpackDiskLayer} from '../../src/disk/unpack.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {FIXTURES, KERNEL} from './helpers.js'

const home = mkdtempSync(join(tmpdir(), 'ovm-unpack-'))
afterAll(() => rmSync(home, {recursive: true, force: true}))

function qemuIo(file: string, cmd: string): string {
  return execFileSync('qemu-io', ['-r', '-f', 'qcow2', '-c', cmd, file], {encoding: 'utf8'})
}

describe('tar entry size', () => {
  it('reads octal and GNU base-256 sizes', () => {
    expect(tarEntrySize(tarHeader('disk.raw', 67108864))).toBe(67108864)
    expect(tarEntrySize(tarHeader('disk.raw', 9 * 1024 ** 3))).toBe(9 * 1024 ** 3)
  })
})

describe('disk chain from the store', () => {
  const store = new LayoutStore(join(home, 'store'))

  it('unpacks a raw base and a qcow2 diff once, rebases the diff, and the overlay reads through the chain', async () => {
    // A diff on top of the fixture disk holding 64 KiB of 0xab at 1 MiB.
    const diff = join(home, 'diff.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(FIXTURES, 'disk.raw'), '-F', 'raw', diff])
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 64k', diff])
    await packArtifact(store, {name: 'test/disks', version: '1', kernel: KERNEL, disks: [{path: join(FIXTURES, 'disk.raw')}, {path: diff}], tags: ['test/disks:1']})
    const a = await loadArtifact(store, 'test/disks:1')
    const layers = a.layers.filter((l) => l.role === 'disk').map((l, i) => ({descriptor: l.descriptor, format: a.ovms.diskLayers![i]!.format as 'raw' | 'qcow2'}))
    const chain = await unpackDiskChain(store, layers)
    expect(chain.map((c) => c.path)).toEqual(layers.map((l) => diskCachePath(store, l.descriptor.digest, l.format)))
    expect(statSync(chain[0]!.path).size).toBe(statSync(join(FIXTURES, 'disk.raw')).size)
    expect(statSync(chain[1]!.path).mode & 0o777).toBe(0o444)
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', chain[1]!.path], {encoding: 'utf8'})) as {'backing-filename': string}
    expect(info['backing-filename']).toBe(chain[0]!.path)

    const overlay = join(home, 'overlay.qcow2')
    await createOverlay(chain[1]!, overlay)
    expect(qemuIo(overlay, 'read -P 0xab 1M 64k')).not.toMatch(/Pattern verification failed/)
    // The base shows through where the diff wrote nothing: the ext4 magic 0xef53 at 1080.
    expect(qemuIo(overlay, 'read -P 0x53 1080 1')).not.toMatch(/Pattern verification failed/)

    // Second time: the cache file is reused, not rewritten.
    const before = statSync(chain[1]!.path).mtimeMs
    await unpackDiskChain(store, layers)
    expect(statSync(chain[1]!.path).mtimeMs).toBe(before)
  })

  it('refuses a layer whose tar entry is not the disk image, naming the layer', async () => {
    const bogus = Buffer.concat([tarHeader('etc/passwd', 4), Buffer.from('root'), Buffer.alloc(508 + 1024)])
    const desc = await store.pushBytes('application/vnd.oci.image.layer.v1.tar', bogus)
    await expect(unpackDiskLayer(store, {descriptor: desc, format: 'raw'})).rejects.toMatchObject({
      code: 'DISK_LAYER_INVALID',
      message: expect.stringContaining(`${desc.digest} is not a one-file tar of a disk image: its entry is "etc/passwd"`),
    })
  })

  it('refuses a raw layer above the base', async () => {
    const a = await loadArtifact(store, 'test/disks:1')
    const base = a.layers.find((l) => l.role === 'disk' && l.index === 0)!
    await expect(unpackDiskChain(store, [{descriptor: base.descriptor, format: 'raw'}, {descriptor: base.descriptor, format: 'raw'}])).rejects.toMatchObject({
      code: 'DISK_LAYER_INVALID',
      message: expect.stringContaining('only the base may be raw'),
    })
  })
})

