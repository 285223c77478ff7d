/**
 * Keyless signatures through Debian's docker-registry (referrers tag
 * fallback): sign in the registry, verify there by identity, and `ovm pull`
 * enforcing a policy of keyless identities before any blob enters the store.
 * Fulcio/Rekor/OIDC are the in-test fakes; signer and verifier are real.
 */
import {existsSync, mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ovm, packArgs, tempDir} from '../helpers/cli.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {type FakeSigstore, TestOidc, startFakeSigstore} from './fake-sigstore.js'

const ISSUER = 'https://accounts.ovm.test'
const EMAIL = 'release@acme.example'

describe.skipIf(!registryAvailable())('keyless signatures in a real registry', () => {
  let reg: TestRegistry
  let sig: FakeSigstore
  const tmp = tempDir('ovm-keyless-reg-')
  const a = join(tmp.path, 'a')
  const rootFile = join(tmp.path, 'trusted_root.json')
  const oidc = new TestOidc(ISSUER)
  let signed: string
  let subject: string

  beforeAll(async () => {
    reg = await startRegistry()
    sig = await startFakeSigstore({oidc})
    writeFileSync(rootFile, JSON.stringify(sig.root))
    signed = `${reg.host}/vm/keyless:1.0`
    expect((await ovm(packArgs('example/busybox:1.0'), {home: a})).code).toBe(0)
    expect((await ovm(['push', signed, '--from', 'example/busybox:1.0'], {home: a})).code).toBe(0)
    // An email identity this time (Fulcio puts it in the SAN as an rfc822Name).
    const s = await ovm(['sign', signed, '--json'], {
      home: a,
      env: {
        ACTIONS_ID_TOKEN_REQUEST_URL: undefined,
        ACTIONS_ID_TOKEN_REQUEST_TOKEN: undefined,
        SIGSTORE_ID_TOKEN: oidc.token({sub: '1234567890', email: EMAIL, email_verified: true}),
        SIGSTORE_FULCIO_URL: sig.fulcio.url,
        SIGSTORE_REKOR_URL: sig.rekor.url,
        NO_PROXY: '127.0.0.1,localhost',
        no_proxy: '127.0.0.1,localhost',
      },
    })
    expect(s.code, s.stderr).toBe(0)
    const out = JSON.parse(s.stdout)
    expect(out.keyless).toMatchObject({subject: EMAIL, issuer: ISSUER})
    subject = out.subject
  }, 120_000)
  afterAll(async () => {
    await reg?.stop()
    await sig?.close()
    tmp.cleanup()
  })

  it('the signature is in the registry\'s referrers tag index and verifies there by identity', async () => {
    const idx = await fetch(`http://${reg.host}/v2/vm/keyless/manifests/sha256-${subject.slice(7)}`, {headers: {accept: 'application/vnd.oci.image.index.v1+json'}})
    expect(idx.status).toBe(200)
    const index = (await idx.json()) as {manifests: {artifactType: string}[]}
    expect(index.manifests.map((m) => m.artifactType)).toContain('application/vnd.dev.sigstore.bundle.v0.3+json')
    const v = await ovm(['verify', signed, '--certificate-identity', EMAIL, '--certificate-oidc-issuer', ISSUER, '--trusted-root', rootFile, '--json'], {home: a})
    expect(v.code, v.stderr).toBe(0)
    expect(JSON.parse(v.stdout).verified[0].identity.subject).toBe(EMAIL)
    const wrong = await ovm(['verify', signed, '--certificate-identity', 'mallory@acme.example', '--certificate-oidc-issuer', ISSUER, '--trusted-root', rootFile], {home: a})
    expect(wrong.code).toBe(10)
    expect(wrong.stderr).toContain(`wrong identity: signed by ${EMAIL}`)
  })

  it('pull enforces a keyless policy before anything enters the store', async () => {
    const home = join(tmp.path, 'puller')
    mkdirSync(home, {recursive: true})
    const policy = (identity: string) =>
      writeFileSync(join(home, 'policy.json'), JSON.stringify({version: 1, trustedRoot: rootFile, rules: [{match: `${reg.host}/vm/*`, require: 'signature', identities: [{issuer: ISSUER, subject: identity}]}]}))
    policy('mallory@acme.example')
    const refused = await ovm(['pull', signed], {home})
    expect(refused.code).toBe(10)
    expect(refused.stderr).toContain('refused by policy')
    expect(refused.stderr).toContain('wrong identity')
    expect(existsSync(join(home, 'blobs'))).toBe(false)

    policy(EMAIL)
    const ok = await ovm(['pull', signed], {home})
    expect(ok.code, ok.stderr).toBe(0)
    expect(ok.stderr).toContain(`keyless signature by ${EMAIL} (issuer ${ISSUER}) verified`)
    // The bundle came along: the local copy verifies offline by identity.
    const digest = JSON.parse((await ovm(['ls', '--json'], {home})).stdout).artifacts[0].digest
    const local = await ovm(['verify', digest, '--certificate-identity', EMAIL, '--certificate-oidc-issuer', ISSUER, '--trusted-root', rootFile], {home})
    expect(local.code, local.stderr).toBe(0)
  })
})
