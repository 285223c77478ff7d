import {existsSync, mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ovm, packArgs, tempDir} from '../helpers/cli.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'

describe.skipIf(!registryAvailable())('sign and verify through a real registry (referrers tag fallback)', () => {
  let reg: TestRegistry
  const tmp = tempDir('ovm-sign-reg-')
  const a = join(tmp.path, 'a')
  const env = {OVM_KEY_PASSWORD: ''}
  let signed: string
  let unsigned: string

  beforeAll(async () => {
    reg = await startRegistry()
    signed = `${reg.host}/vm/signed:1.0`
    unsigned = `${reg.host}/vm/unsigned:1.0`
    expect((await ovm(packArgs('example/busybox:1.0'), {home: a})).code).toBe(0)
    expect((await ovm(packArgs('example/other:1.0', ['--annotation', 'x=y']), {home: a})).code).toBe(0)
    for (const k of ['k1', 'k2']) expect((await ovm(['key', 'generate', '--out', join(tmp.path, k)], {home: a, env})).code).toBe(0)
    expect((await ovm(['push', signed, '--from', 'example/busybox:1.0'], {home: a})).code).toBe(0)
    expect((await ovm(['push', unsigned, '--from', 'example/other:1.0'], {home: a})).code).toBe(0)
  })
  afterAll(async () => {
    await reg?.stop()
    tmp.cleanup()
  })

  it('signs in the registry and verifies there; another key fails', async () => {
    const s = await ovm(['sign', signed, '--key', join(tmp.path, 'k1.key'), '--json'], {home: a, env})
    expect(s.code, s.stderr).toBe(0)
    const out = JSON.parse(s.stdout)
    // distribution 2.8.2 has no referrers API: the signature is listed in the sha256-<hex> tag index.
    const idx = await fetch(`http://${reg.host}/v2/vm/signed/manifests/sha256-${out.subject.slice(7)}`, {
      headers: {accept: 'application/vnd.oci.image.index.v1+json'},
    })
    expect(idx.status).toBe(200)
    const index = (await idx.json()) as {manifests: {digest: string; artifactType: string}[]}
    expect(index.manifests).toContainEqual(expect.objectContaining({digest: out.signature, artifactType: 'application/vnd.dev.sigstore.bundle.v0.3+json'}))

    const v = await ovm(['verify', signed, '--key', join(tmp.path, 'k1.pub'), '--json'], {home: a})
    expect(v.code, v.stderr).toBe(0)
    expect(JSON.parse(v.stdout).verified[0].keyId).toBe(out.keyId)
    expect((await ovm(['verify', signed, '--key', join(tmp.path, 'k2.pub')], {home: a})).code).toBe(10)
    expect((await ovm(['verify', unsigned, '--key', join(tmp.path, 'k1.pub')], {home: a})).code).toBe(10)
  })

  it('pull enforces the policy before anything enters the store', async () => {
    const home = join(tmp.path, 'puller')
    const strict = {version: 1, rules: [{match: `${reg.host}/vm/*`, require: 'signature', keys: [join(tmp.path, 'k1.pub')]}]}
    const writePolicy = (doc: unknown): void => {
      mkdirSync(home, {recursive: true})
      writeFileSync(join(home, 'policy.json'), typeof doc === 'string' ? doc : JSON.stringify(doc))
    }
    writePolicy(strict)
    const refused = await ovm(['pull', unsigned], {home})
    expect(refused.code).toBe(10)
    expect(refused.stderr).toContain('refused by policy')
    expect(existsSync(join(home, 'blobs'))).toBe(false)

    const ok = await ovm(['pull', signed], {home})
    expect(ok.code, ok.stderr).toBe(0)
    expect(ok.stderr).toContain('verified')
    // The signature came along with the pull, so the local copy verifies offline (by digest: a name with a host means the registry).
    const digest = JSON.parse((await ovm(['ls', '--json'], {home})).stdout).artifacts[0].digest
    const local = await ovm(['verify', digest, '--key', join(tmp.path, 'k1.pub'), '--json'], {home})
    expect(local.code, local.stderr).toBe(0)
    expect(JSON.parse(local.stdout).verified).toHaveLength(1)

    writePolicy({version: 1, default: {require: 'none'}})
    expect((await ovm(['pull', unsigned], {home})).code).toBe(0)
    writePolicy('{"version": 1, "rules": [{"require": "always"}]}')
    const bad = await ovm(['pull', unsigned], {home})
    expect(bad.code).toBe(3)
    expect(bad.stderr).toContain('POLICY_INVALID')
  })
})
