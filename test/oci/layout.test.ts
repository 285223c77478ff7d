import {execFile} from 'node:child_process'
import {chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {Readable} from 'node:stream'
import {promisify} from 'node:util'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {sha256} from '../../src/oci/digest.js'
import {LayoutStore, defaultStoreRoot} from '../../src/oci/layout.js'
import {hashAllBlobs, rejects, ROOT, tempDir} from '../helpers/cli.js'

const run = promisify(execFile)
let tmp: {path: string; cleanup: () => void}
let store: LayoutStore

beforeEach(() => {
  tmp = tempDir()
  store = new LayoutStore(join(tmp.path, 'store'))
})
afterEach(() => tmp.cleanup())


describe('LayoutStore', () => {
  it('picks $OVM_HOME, then $XDG_DATA_HOME/ovm, then ~/.local/share/ovm', () => {
    expect(defaultStoreRoot({OVM_HOME: '/a'})).toBe('/a')
    expect(defaultStoreRoot({XDG_DATA_HOME: '/x'})).toBe('/x/ovm')
    expect(defaultStoreRoot({})).toMatch(/\/\.local\/share\/ovm$/)
  })

  it('reads a missing store as empty without creating it', async () => {
    expect(await store.list()).toEqual([])
    expect(existsSync(store.root)).toBe(false)
  })

  it('writes a valid OCI layout and round-trips blobs and tags', async () => {
    const d = await store.pushBytes('application/octet-stream', Buffer.from('hello'))
    expect(d.digest).toBe(sha256('hello'))
    expect(JSON.parse(readFileSync(join(store.root, 'oci-layout'), 'utf8'))).toEqual({imageLayoutVersion: '1.0.0'})
    expect(readFileSync(store.blobPath(d.digest), 'utf8')).toBe('hello')
    const m = await store.pushBytes('application/vnd.oci.image.manifest.v1+json', Buffer.from(JSON.stringify({schemaVersion: 2, config: d, layers: []})))
    await store.tag(m, 'a/b:1')
    await store.tag(m, 'a/b:2')
    expect((await store.list()).map((t) => t.reference)).toEqual(['a/b:1', 'a/b:2'])
    expect(await store.resolve('a/b:1')).toEqual(m)
    expect(await store.resolve(m.digest)).toEqual(m)
    expect(await store.resolve(`a/b@${m.digest}`)).toEqual(m)
    const idx = JSON.parse(readFileSync(store.indexPath, 'utf8'))
    expect(idx.manifests.map((x: {annotations: Record<string, string>}) => x.annotations['org.opencontainers.image.ref.name'])).toEqual(['a/b:1', 'a/b:2'])
    await store.untag('a/b:1')
    expect((await store.list()).map((t) => t.reference)).toEqual(['a/b:2'])
    const e = await rejects(store.resolve('a/b:1'))
    expect(e.code).toBe('REF_NOT_FOUND')
    expect(e.exitCode).toBe(4)
  })

  it('refuses content that does not match the descriptor and leaves nothing behind', async () => {
    await store.init()
    const e = await rejects(store.push({mediaType: 'x', digest: sha256('good'), size: 4}, Buffer.from('evil')))
    expect(e.code).toBe('DIGEST_MISMATCH')
    expect(e.exitCode).toBe(5)
    const e2 = await rejects(store.push({mediaType: 'x', digest: sha256('good'), size: 3}, Readable.from([Buffer.from('good')])))
    expect(e2.code).toBe('DIGEST_MISMATCH')
    expect(hashAllBlobs(store.root)).toEqual([])
    expect(readdirSync(join(store.root, 'ingest'))).toEqual([])
  })

  it('ingesting a blob it already has keeps the stored copy, and replaces a damaged one', async () => {
    await store.init()
    const a = await store.ingest(Readable.from([Buffer.from('same bytes')]))
    const ino = statSync(store.blobPath(a.digest)).ino
    const b = await store.ingest(Readable.from([Buffer.from('same bytes')]))
    expect(b).toEqual(a)
    expect(statSync(store.blobPath(a.digest)).ino).toBe(ino) // not rewritten
    chmodSync(store.blobPath(a.digest), 0o644)
    writeFileSync(store.blobPath(a.digest), 'same bYtes') // damaged, same size
    await store.ingest(Readable.from([Buffer.from('same bytes')]))
    expect(readFileSync(store.blobPath(a.digest), 'utf8')).toBe('same bytes')
    expect(readdirSync(join(store.root, 'ingest'))).toEqual([])
  })

  it('verifies blobs on every read', async () => {
    const d = await store.pushBytes('x', Buffer.from('precious'))
    writeFileSync(store.blobPath(d.digest), 'precioUs')
    expect((await rejects(store.fetchBytes(d))).code).toBe('DIGEST_MISMATCH')
    const stream = await store.fetch(d)
    const e = await rejects((async () => {
      for await (const _ of stream) {
        // drain
      }
    })())
    expect(e.code).toBe('DIGEST_MISMATCH')
  })

  it('verify() finds and quarantines a flipped byte', async () => {
    const a = await store.pushBytes('x', Buffer.from('alpha'))
    const b = await store.pushBytes('x', Buffer.from('bravo'))
    const buf = readFileSync(store.blobPath(b.digest))
    buf[0] = buf[0]! ^ 0xff
    writeFileSync(store.blobPath(b.digest), buf)
    const report = await store.verify()
    expect(report.checked).toBe(2)
    expect(report.bad.map((x) => x.digest)).toEqual([b.digest])
    expect(existsSync(store.blobPath(b.digest))).toBe(false)
    expect(existsSync(join(store.root, 'quarantine', 'sha256', b.digest.slice(7)))).toBe(true)
    expect(await store.exists(a)).toBe(true)
    expect((await store.verify()).bad).toEqual([])
  })

  it('prune removes only unreachable blobs and keeps what live processes lease', async () => {
    const cfg = await store.pushBytes('application/vnd.ovms.manifest.v1+json', Buffer.from('{}'))
    const layer = await store.pushBytes('application/vnd.ovms.kernel.v1', Buffer.from('k'))
    const m = await store.pushBytes(
      'application/vnd.oci.image.manifest.v1+json',
      Buffer.from(JSON.stringify({schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: cfg, layers: [layer]})),
    )
    await store.tag(m, 'keep:1') // releases this process's lease
    const orphan = await store.pushBytes('x', Buffer.from('orphan')) // leased by this (live) process
    expect((await store.prune()).removed).toEqual([])
    await store.releaseLease()
    const report = await store.prune()
    expect(report.removed.map((r) => r.digest)).toEqual([orphan.digest])
    expect(report.kept).toBe(3)
    // Unpacked cache entries follow their blobs.
    const disks = join(store.root, 'cache', 'disks')
    mkdirSync(disks, {recursive: true})
    writeFileSync(join(disks, `${layer.digest.slice(7)}.raw`), 'x')
    writeFileSync(join(disks, `${'e'.repeat(64)}.qcow2`), 'x')
    expect((await store.prune()).cacheRemoved).toBe(1)
    expect(readdirSync(disks)).toEqual([`${layer.digest.slice(7)}.raw`])
    await store.untag('keep:1')
    const last = await store.prune()
    expect(last.removed.map((r) => r.digest).sort()).toEqual([cfg.digest, layer.digest, m.digest].sort())
    expect(last.cacheRemoved).toBe(1)
    expect(readdirSync(disks)).toEqual([])
    expect(hashAllBlobs(store.root)).toEqual([])
  })

  it('stays consistent when many processes tag at once', async () => {
    const m = await store.pushBytes('application/vnd.oci.image.manifest.v1+json', Buffer.from('{"schemaVersion":2,"config":{},"layers":[]}'))
    const script = `
      const {LayoutStore} = await import(${JSON.stringify(join(ROOT, 'dist/oci/layout.js'))});
      const s = new LayoutStore(process.argv[1]);
      const d = JSON.parse(process.argv[2]);
      for (let i = 0; i < 10; i++) await s.tag(d, 'p' + process.argv[3] + ':' + i);
    `
    await Promise.all(
      Array.from({length: 6}, (_, p) => run(process.execPath, ['--input-type=module', '-e', script, store.root, JSON.stringify(m), String(p)])),
    )
    const tags = (await store.list()).map((t) => t.reference)
    expect(tags).toHaveLength(60)
    expect(JSON.parse(readFileSync(store.indexPath, 'utf8')).manifests).toHaveLength(60)
    expect(existsSync(`${store.indexPath}.lock`)).toBe(false)
  })

  it('takes over a lock left by a dead process', async () => {
    await store.init()
    writeFileSync(`${store.indexPath}.lock`, '999999999 0 dead\n')
    const d = await store.pushBytes('x', Buffer.from('{}'))
    await store.tag(d, 'after-crash:1')
    expect((await store.list()).map((t) => t.reference)).toEqual(['after-crash:1'])
  })

  it('reports a corrupt index.json clearly', async () => {
    await store.init()
    writeFileSync(store.indexPath, '{"manifests": [')
    const e = await rejects(store.list())
    expect(e.code).toBe('STORE_CORRUPT')
    expect(e.message).toContain(store.indexPath)
  })
})
