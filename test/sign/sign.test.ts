import {existsSync, readFileSync, statSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {bundleFromJSON, isBundleWithDsseEnvelope} from '@sigstore/bundle'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {LayoutStore} from '../../src/oci/layout.js'
import {localSource} from '../../src/sign/sign.js'
import {enforcePolicy, loadPolicy} from '../../src/sign/policy.js'
import {ovm, packArgs, rejects, tempDir} from '../helpers/cli.js'

let tmp: {path: string; cleanup: () => void}
let home: string
const env = {OVM_KEY_PASSWORD: 'correct horse'}

beforeAll(async () => {
  tmp = tempDir()
  home = join(tmp.path, 'home')
  expect((await ovm(packArgs('example/busybox:1.0'), {home})).code).toBe(0)
  expect((await ovm(packArgs('example/unsigned:1.0', ['--annotation', 'purpose=unsigned']), {home})).code).toBe(0)
  for (const name of ['a', 'b']) {
    const r = await ovm(['key', 'generate', '--out', join(tmp.path, name), '--json'], {home, env})
    expect(r.code).toBe(0)
  }
})
afterAll(() => tmp.cleanup())


describe('ovm key / sign / verify (local store)', () => {
  it('writes an encrypted private key with mode 0600 and a PEM public key', () => {
    expect(statSync(join(tmp.path, 'a.key')).mode & 0o777).toBe(0o600)
    expect(readFileSync(join(tmp.path, 'a.key'), 'utf8')).toContain('BEGIN ENCRYPTED PRIVATE KEY')
    expect(readFileSync(join(tmp.path, 'a.pub'), 'utf8')).toContain('BEGIN PUBLIC KEY')
  })

  it('refuses a wrong passphrase and a missing one clearly', async () => {
    const r = await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'a.key')], {home, env: {OVM_KEY_PASSWORD: 'nope'}})
    expect(r.code).toBe(3)
    expect(r.stderr).toContain('wrong passphrase')
    const r2 = await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'a.key')], {home, env: {OVM_KEY_PASSWORD: undefined}})
    expect(r2.code).toBe(2)
    expect(r2.stderr).toContain('OVM_KEY_PASSWORD')
  })

  it('sign then verify passes; the signature has the shape cosign 3 reads', async () => {
    const s = await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'a.key'), '--json'], {home, env})
    expect(s.code).toBe(0)
    const signed = JSON.parse(s.stdout)
    const v = await ovm(['verify', 'example/busybox:1.0', '--key', join(tmp.path, 'a.pub'), '--json'], {home})
    expect(v.code).toBe(0)
    const out = JSON.parse(v.stdout)
    expect(out.verified).toHaveLength(1)
    expect(out.digest).toBe(signed.subject)
    expect(out.blobsChecked).toBe(5) // manifest, config, kernel, initrd, disk

    const store = new LayoutStore(home)
    const sig = await store.resolve(signed.signature)
    const manifest = JSON.parse((await store.fetchBytes(sig)).toString())
    expect(manifest.schemaVersion).toBe(2)
    expect(manifest.mediaType).toBe('application/vnd.oci.image.manifest.v1+json')
    expect(manifest.artifactType).toBe('application/vnd.dev.sigstore.bundle.v0.3+json')
    expect(manifest.config).toEqual({mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2})
    expect(manifest.layers).toHaveLength(1)
    expect(manifest.layers[0].mediaType).toBe('application/vnd.dev.sigstore.bundle.v0.3+json')
    expect(manifest.subject.digest).toBe(signed.subject)
    expect(manifest.subject.mediaType).toBe('application/vnd.oci.image.manifest.v1+json')
    expect(manifest.annotations['dev.sigstore.bundle.content']).toBe('dsse-envelope')
    expect(manifest.annotations['dev.sigstore.bundle.predicateType']).toBe('https://sigstore.dev/cosign/sign/v1')
    expect(manifest.annotations['org.opencontainers.image.created']).toMatch(/^\d{4}-\d\d-\d\dT/)

    const bundleJson = JSON.parse((await store.fetchBytes(manifest.layers[0])).toString())
    expect(bundleJson.mediaType).toBe('application/vnd.dev.sigstore.bundle.v0.3+json')
    const bundle = bundleFromJSON(bundleJson)
    expect(isBundleWithDsseEnvelope(bundle)).toBe(true)
    if (!isBundleWithDsseEnvelope(bundle)) return
    const env2 = bundle.content.dsseEnvelope
    expect(env2.payloadType).toBe('application/vnd.in-toto+json')
    const statement = JSON.parse(Buffer.from(env2.payload).toString())
    expect(statement._type).toBe('https://in-toto.io/Statement/v1')
    expect(statement.subject[0].digest.sha256).toBe(signed.subject.slice(7))
    // The signature survives in the layout for skopeo too (it is in index.json, untagged).
    expect(JSON.parse(readFileSync(join(home, 'index.json'), 'utf8')).manifests.some((m: {digest: string}) => m.digest === signed.signature)).toBe(true)
  })

  it('a different key fails with exit 10', async () => {
    const v = await ovm(['verify', 'example/busybox:1.0', '--key', join(tmp.path, 'b.pub')], {home})
    expect(v.code).toBe(10)
    expect(v.stderr).toContain('SIGNATURE_INVALID')
  })

  it('an unsigned artifact fails with exit 10 and says so', async () => {
    const v = await ovm(['verify', 'example/unsigned:1.0', '--key', join(tmp.path, 'a.pub')], {home})
    expect(v.code).toBe(10)
    expect(v.stderr).toContain('has no signature')
  })

  it('a changed manifest has no valid signature', async () => {
    const store = new LayoutStore(home)
    const desc = await store.resolve('example/busybox:1.0')
    const m = JSON.parse((await store.fetchBytes(desc)).toString())
    m.annotations['org.opencontainers.image.version'] = 'evil'
    const changed = await store.pushBytes(desc.mediaType, Buffer.from(JSON.stringify(m)))
    await store.tag(changed, 'example/tampered:1.0')
    const v = await ovm(['verify', 'example/tampered:1.0', '--key', join(tmp.path, 'a.pub')], {home})
    expect(v.code).toBe(10)
  })

  it('a changed blob fails verification (exit 5)', async () => {
    const h2 = join(tmp.path, 'home2')
    expect((await ovm(packArgs('example/busybox:1.0'), {home: h2})).code).toBe(0)
    expect((await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'a.key')], {home: h2, env})).code).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'example/busybox:1.0', '--json'], {home: h2})).stdout)
    const path = join(h2, 'blobs', 'sha256', info.layers[1].digest.slice(7))
    const buf = readFileSync(path)
    buf[100] = buf[100]! ^ 1
    writeFileSync(path, buf)
    const v = await ovm(['verify', 'example/busybox:1.0', '--key', join(tmp.path, 'a.pub')], {home: h2})
    expect(v.code).toBe(5)
    expect(v.stderr).toContain('DIGEST_MISMATCH')
  })
})

describe('trust policy', () => {
  const writePolicy = (doc: unknown): string => {
    const p = join(tmp.path, `policy-${Math.random().toString(36).slice(2)}.json`)
    writeFileSync(p, typeof doc === 'string' ? doc : JSON.stringify(doc))
    return p
  }

  it('refuses an unsigned artifact under a policy that requires signatures, accepts it under one that does not', async () => {
    const src = localSource(new LayoutStore(home))
    const strict = await loadPolicy(writePolicy({version: 1, rules: [{match: 'example/*', require: 'signature', keys: [join(tmp.path, 'a.pub')]}]}))
    const e = await rejects(enforcePolicy(src, 'example/unsigned:1.0', strict))
    expect(e.exitCode).toBe(10)
    expect(e.message).toContain('refused by policy')
    expect(e.message).toContain('rules[match=example/*]')
    const ok = await enforcePolicy(src, 'example/busybox:1.0', strict)
    expect(ok.verified?.verified).toHaveLength(1)
    const lax = await loadPolicy(writePolicy({version: 1, default: {require: 'none'}}))
    expect((await enforcePolicy(src, 'example/unsigned:1.0', lax)).required).toBe(false)
    // The most specific rule wins.
    const mixed = await loadPolicy(
      writePolicy({version: 1, rules: [{match: '*', require: 'signature', keys: [join(tmp.path, 'a.pub')]}, {match: 'example/unsigned', require: 'none'}]}),
    )
    expect((await enforcePolicy(src, 'example/unsigned:1.0', mixed)).rule).toBe('rules[match=example/unsigned]')
    // A wrong key in the policy refuses a signed artifact.
    const wrong = await loadPolicy(writePolicy({version: 1, default: {require: 'signature', keys: [join(tmp.path, 'b.pub')]}}))
    expect((await rejects(enforcePolicy(src, 'example/busybox:1.0', wrong))).code).toBe('SIGNATURE_INVALID')
  })

  it('ovm run refuses an unsigned artifact under the policy before booting anything', async () => {
    const h = join(tmp.path, 'run-home')
    expect((await ovm(packArgs('example/unsigned:1.0', ['--annotation', 'purpose=unsigned']), {home: h})).code).toBe(0)
    writeFileSync(join(h, 'policy.json'), JSON.stringify({version: 1, default: {require: 'signature', keys: [join(tmp.path, 'a.pub')]}}))
    const r = await ovm(['run', '-d', 'example/unsigned:1.0'], {home: h})
    expect(r.code).toBe(10)
    expect(r.stderr).toContain('refused by policy')
    expect(existsSync(join(h, 'serve.log'))).toBe(false) // no daemon was started, nothing booted
  })

  it('a policy that is not JSON or not valid against its schema gets a clear error', async () => {
    const e1 = await rejects(loadPolicy(writePolicy('{"version": 1,')))
    expect(e1.code).toBe('JSON_SYNTAX')
    const e2 = await rejects(loadPolicy(writePolicy({version: 2, rules: [{require: 'always'}]})))
    expect(e2.code).toBe('POLICY_INVALID')
    expect(e2.details.map((d) => d.at).sort()).toEqual(['/rules/0/match', '/rules/0/require', '/version'])
    expect(await loadPolicy(join(tmp.path, 'absent.json'))).toBeUndefined()
  })
})
