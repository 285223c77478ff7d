import {execFile} from 'node:child_process'
import {existsSync, readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {Ajv2020} from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {sha256} from '../../src/oci/digest.js'
import {FIXTURES, ROOT, hashAllBlobs, ovm, packArgs, tempDir} from '../helpers/cli.js'

const run = promisify(execFile)
let tmp: {path: string; cleanup: () => void}
let home: string
let digest: string

beforeAll(async () => {
  tmp = tempDir()
  home = join(tmp.path, 'home')
  const r = await ovm([...packArgs('example/busybox:1.0'), '--disk', `${join(FIXTURES, 'disk.raw')}:raw`, '--json'], {home})
  expect(r.stderr).toBe('')
  expect(r.code).toBe(0)
  const out = JSON.parse(r.stdout)
  digest = out.digest
  expect(out.references).toEqual(['example/busybox:1.0'])
})
afterAll(() => tmp.cleanup())

describe('ovm pack of a real kernel, initramfs and disks', () => {
  it('is readable by skopeo, byte for byte', async () => {
    const {stdout} = await run('skopeo', ['inspect', '--raw', `oci:${home}:example/busybox:1.0`])
    expect(sha256(stdout)).toBe(digest)
    const manifest = JSON.parse(stdout)
    expect(manifest.artifactType).toBe('application/vnd.ovms.manifest.v1+json')
    const {stdout: config} = await run('skopeo', ['inspect', '--raw', '--config', `oci:${home}:example/busybox:1.0`])
    expect(sha256(config)).toBe(manifest.config.digest)
  })

  it('survives a skopeo copy with digests preserved (skopeo re-verifies every blob)', async () => {
    const dst = join(tmp.path, 'copy')
    await run('skopeo', ['copy', '--quiet', '--preserve-digests', `oci:${home}:example/busybox:1.0`, `oci:${dst}:copied`])
    const idx = JSON.parse(readFileSync(join(dst, 'index.json'), 'utf8'))
    expect(idx.manifests[0].digest).toBe(digest)
    expect(readdirSync(join(dst, 'blobs', 'sha256')).sort()).toEqual(readdirSync(join(home, 'blobs', 'sha256')).sort())
  })

  it('is listed by umoci, and umoci gc finds every blob referenced', async () => {
    const {stdout} = await run('umoci', ['ls', '--layout', home])
    expect(stdout.trim().split('\n')).toEqual(['example/busybox:1.0'])
    const gcCopy = join(tmp.path, 'gc')
    await run('cp', ['-a', home, gcCopy])
    await run('umoci', ['gc', '--layout', gcCopy])
    expect(readdirSync(join(gcCopy, 'blobs', 'sha256')).sort()).toEqual(readdirSync(join(home, 'blobs', 'sha256')).sort())
  })

  it('writes an OVMS manifest that validates against schemas/manifest.v1.json', async () => {
    const {stdout} = await run('skopeo', ['inspect', '--raw', '--config', `oci:${home}:example/busybox:1.0`])
    const ajv = new Ajv2020({allErrors: true, strict: true})
    const add = ((addFormats as unknown as {default?: unknown}).default ?? addFormats) as (a: Ajv2020) => Ajv2020
    add(ajv)
    const validate = ajv.compile(JSON.parse(readFileSync(join(ROOT, 'schemas', 'manifest.v1.json'), 'utf8')))
    const ovms = JSON.parse(stdout)
    expect(validate(ovms), JSON.stringify(validate.errors)).toBe(true)
    expect(ovms.kernel.args).toBe('console=ttyS0 panic=-1')
    expect(ovms.diskLayers.map((d: {format: string}) => d.format)).toEqual(['qcow2', 'raw'])
    expect(ovms.diskLayers[0].size).toBe(64 * 1024 * 1024)
  })

  it('stores the kernel byte-identical and each disk as a one-file tar', async () => {
    const r = await ovm(['inspect', 'example/busybox:1.0', '--json'], {home})
    expect(r.code).toBe(0)
    const info = JSON.parse(r.stdout)
    expect(info.layers.map((l: {role: string}) => l.role)).toEqual(['kernel', 'initrd', 'disk', 'disk'])
    const kernel = info.layers[0]
    expect(kernel.digest).toBe(sha256(readFileSync(join(FIXTURES, 'vmlinuz'))))
    const raw = info.layers[3]
    expect(raw.annotations['ovms.format']).toBe('raw')
    const blob = join(home, 'blobs', 'sha256', raw.digest.slice(7))
    const {stdout: list} = await run('tar', ['-tvf', blob])
    expect(list.trim().split('\n')).toHaveLength(1)
    expect(list).toContain('disk.raw')
    const {stdout: extracted} = await run('tar', ['-xOf', blob, 'disk.raw'], {encoding: 'buffer', maxBuffer: 1 << 28})
    expect(sha256(extracted)).toBe(sha256(readFileSync(join(FIXTURES, 'disk.raw'))))
  })

  it('is reproducible: packing the same inputs again gives the same digest', async () => {
    const r = await ovm([...packArgs('example/busybox:again'), '--disk', `${join(FIXTURES, 'disk.raw')}:raw`, '--json'], {home})
    expect(JSON.parse(r.stdout).digest).toBe(digest)
  })

  it('ls, tag and rm work on the store', async () => {
    expect((await ovm(['tag', 'example/busybox:1.0', 'example/busybox:latest'], {home})).code).toBe(0)
    const ls = JSON.parse((await ovm(['ls', '--json'], {home})).stdout)
    expect(ls.artifacts.map((a: {reference: string}) => a.reference)).toEqual(['example/busybox:1.0', 'example/busybox:again', 'example/busybox:latest'])
    expect(ls.artifacts[0]).toMatchObject({digest, name: 'example/busybox', version: '1.0', layers: 4})
    expect((await ovm(['rm', 'example/busybox:latest', 'example/busybox:again'], {home})).code).toBe(0)
    const text = (await ovm(['ls'], {home})).stdout
    expect(text).toContain('example/busybox:1.0')
    expect(text).not.toContain('latest')
  })
})

describe('bad input gets a clear error, an exit code, and writes nothing', () => {
  const fresh = (): string => join(tmp.path, `empty-${Math.random().toString(36).slice(2)}`)

  it('a missing file: exit 4, names the file, store untouched', async () => {
    const h = fresh()
    const r = await ovm(packArgs('x:1').map((a) => (a.endsWith('initramfs.cpio.gz') ? '/nope/initrd.img' : a)), {home: h})
    expect(r.code).toBe(4)
    expect(r.stderr).toContain('initrd not found: /nope/initrd.img')
    expect(r.stderr).toContain('Code: FILE_NOT_FOUND')
    expect(r.stderr).toContain('Try this:')
    expect(r.stderr).not.toMatch(/\n\s+at /) // no stack without --debug
    expect(existsSync(h)).toBe(false)
  })

  it('a bad reference: exit 3, names it', async () => {
    const h = fresh()
    const r = await ovm(packArgs('Bad Ref:1'), {home: h})
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('invalid reference "Bad Ref:1"')
    expect(existsSync(h)).toBe(false)
  })

  it('an unknown disk format or a lying suffix: exit 3', async () => {
    const h = fresh()
    const r = await ovm([...packArgs('x:1'), '--disk', `${join(FIXTURES, 'disk.raw')}:vmdk`], {home: h})
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('unknown disk format "vmdk"')
    const r2 = await ovm([...packArgs('x:1'), '--disk', `${join(FIXTURES, 'disk.raw')}:qcow2`], {home: h})
    expect(r2.code).toBe(3)
    expect(r2.stderr).toContain('declared qcow2 but has no qcow2 header')
    expect(existsSync(h)).toBe(false)
  })

  it('a file that is not a kernel, and an invalid name: exit 3 before any write', async () => {
    const h = fresh()
    const r = await ovm(packArgs('x:1').map((a) => (a.endsWith('vmlinuz') ? join(FIXTURES, 'disk.raw') : a)), {home: h})
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('is not a Linux kernel')
    const r2 = await ovm(packArgs('x:1').map((a) => (a === 'example/busybox' ? 'Has Spaces' : a)), {home: h})
    expect(r2.code).toBe(3)
    expect(r2.stderr).toContain('/name')
    expect(existsSync(h)).toBe(false)
  })

  it('--json errors are JSON on stdout with code, hint and exit code', async () => {
    const r = await ovm(['inspect', 'no/such:thing', '--json'], {home})
    expect(r.code).toBe(4)
    const out = JSON.parse(r.stdout)
    expect(out.error).toMatchObject({code: 'REF_NOT_FOUND', exitCode: 4})
    expect(out.error.hint).toContain('ovm ls')
  })

  it('a missing flag or unknown flag is a usage error (exit 2)', async () => {
    const r = await ovm(['pack', '--name', 'x'], {home})
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('Code: USAGE')
    const r2 = await ovm(['ls', '--bogus'], {home})
    expect(r2.code).toBe(2)
  })

  it('inspect of something that is not an OVMS artifact names its media type', async () => {
    // A plain OCI artifact of another type, written with the store's own API.
    const {LayoutStore} = await import('../../src/oci/layout.js')
    const s = new LayoutStore(home)
    const cfg = await s.pushBytes('application/vnd.example.config+json', Buffer.from('{}'))
    const m = await s.pushBytes(
      'application/vnd.oci.image.manifest.v1+json',
      Buffer.from(JSON.stringify({schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', artifactType: 'application/vnd.example.thing', config: cfg, layers: []})),
    )
    await s.tag(m, 'other/thing:1')
    const r = await ovm(['inspect', 'other/thing:1'], {home})
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('application/vnd.example.thing')
    expect(r.stderr).toContain('UNKNOWN_MEDIA_TYPE')
    await ovm(['rm', 'other/thing:1', '--prune'], {home})
  })

  it('validate reports every error of an invalid manifest at once', async () => {
    const file = join(ROOT, 'examples', 'manifests', 'invalid', 'several-errors.json')
    const r = await ovm(['validate', file], {home})
    expect(r.code).toBe(3)
    const expected = JSON.parse(readFileSync(file.replace('.json', '.expected.json'), 'utf8')) as string[]
    for (const p of expected.filter((x) => x !== '')) expect(r.stderr).toContain(p)
    expect(r.stderr).toContain('required field "name" is missing')
    const j = await ovm(['validate', file, '--json'], {home})
    expect(JSON.parse(j.stdout).error.details.length).toBeGreaterThanOrEqual(3)
    const ok = await ovm(['validate', join(ROOT, 'examples', 'manifests', 'valid', 'full.json')], {home})
    expect(ok.code).toBe(0)
    const bad = join(tmp.path, 'syntax.json')
    writeFileSync(bad, '{\n  "schemaVersion": 1,\n  "name": oops\n}\n')
    const s = await ovm(['validate', bad], {home})
    expect(s.code).toBe(3)
    expect(s.stderr).toContain(`${bad}:3:`)
  })

  it('every blob in the store still hashes to its name', () => {
    const all = hashAllBlobs(home)
    expect(all.length).toBeGreaterThan(0)
    expect(all.filter((b) => !b.ok)).toEqual([])
  })
})
