/**
 * Keyless signing and verification. Fulcio, Rekor and the OIDC issuer are
 * in-test fakes speaking the real HTTP APIs (test/sign/fake-sigstore.ts); the
 * signing client (sigstore-js's FulcioSigner, RekorWitness, CIContextProvider
 * inside `ovm sign`) and the verifier (@sigstore/verify, against a
 * trusted_root.json made from the fakes' CA and log keys) are the real code.
 */
import {execFileSync} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {bundleFromJSON, isBundleWithDsseEnvelope} from '@sigstore/bundle'
import {TrustedRoot} from '@sigstore/protobuf-specs'
import {Verifier, toSignedEntity, toTrustMaterial} from '@sigstore/verify'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {LayoutStore} from '../../src/oci/layout.js'
import {loadTrustedRoot} from '../../src/sign/keyless.js'
import {enforcePolicy, loadPolicy} from '../../src/sign/policy.js'
import {localSource} from '../../src/sign/sign.js'
import {type Trust, verifySignatureWith} from '../../src/sign/signature.js'
import {FIXTURES, hashAllBlobs, ovm, packArgs, rejects, tempDir} from '../helpers/cli.js'
import {problems, validator} from '../helpers/cli-schemas.js'
import {type FakeSigstore, TestCA, TestOidc, fakeActionsTokenEndpoint, startFakeSigstore, toPem} from './fake-sigstore.js'

function opensslAvailable(): boolean {
  try {
    execFileSync('openssl', ['version'], {stdio: 'ignore'})
    return true
  } catch {
    return false
  }
}

const GHA_ISSUER = 'https://token.actions.githubusercontent.com'
const WORKFLOW = 'acme/vms/.github/workflows/release.yml@refs/heads/main'
const IDENTITY = `https://github.com/${WORKFLOW}`

let tmp: {path: string; cleanup: () => void}
let home: string
let sig: FakeSigstore
let rootFile: string
const oidc = new TestOidc(GHA_ISSUER)
const noAmbientToken = {ACTIONS_ID_TOKEN_REQUEST_URL: undefined, ACTIONS_ID_TOKEN_REQUEST_TOKEN: undefined, SIGSTORE_ID_TOKEN: undefined, SIGSTORE_FULCIO_URL: undefined, SIGSTORE_REKOR_URL: undefined, NO_PROXY: '127.0.0.1,localhost', no_proxy: '127.0.0.1,localhost'}
const ghaToken = () => oidc.token({sub: 'repo:acme/vms:ref:refs/heads/main', job_workflow_ref: WORKFLOW})

function signEnv(token: string, s: FakeSigstore = sig): NodeJS.ProcessEnv {
  return {...noAmbientToken, SIGSTORE_ID_TOKEN: token, SIGSTORE_FULCIO_URL: s.fulcio.url, SIGSTORE_REKOR_URL: s.rekor.url}
}

function writeRoot(name: string, root: Record<string, unknown>): string {
  const p = join(tmp.path, name)
  writeFileSync(p, JSON.stringify(root, null, 2))
  return p
}

async function pack(tag: string): Promise<void> {
  const r = await ovm(packArgs(tag, ['--annotation', `purpose=${tag}`]), {home})
  expect(r.code, r.stderr).toBe(0)
}

const verifyArgs = (ref: string, root = rootFile, subject = IDENTITY, issuer = GHA_ISSUER) => [
  'verify',
  ref,
  '--certificate-identity',
  subject,
  '--certificate-oidc-issuer',
  issuer,
  '--trusted-root',
  root,
]

/** The stored signature manifest and bundle of a signed artifact. */
async function storedSignature(signature: string): Promise<{manifestBytes: Buffer; bundleJson: Record<string, any>; subject: string}> {
  const store = new LayoutStore(home)
  const desc = await store.resolve(signature)
  const manifestBytes = await store.fetchBytes(desc)
  const manifest = JSON.parse(manifestBytes.toString())
  return {manifestBytes, bundleJson: JSON.parse((await store.fetchBytes(manifest.layers[0])).toString()), subject: manifest.subject.digest}
}

let signed: {subject: string; signature: string; keyless: {issuer: string; subject: string; logIndex: string; certificateNotAfter: string}}

beforeAll(async () => {
  tmp = tempDir('ovm-keyless-')
  home = join(tmp.path, 'home')
  sig = await startFakeSigstore({oidc})
  rootFile = writeRoot('trusted_root.json', sig.root)
  await pack('example/keyless:1.0')
  // Signed through the --fulcio-url/--rekor-url flags (the env names the same servers for the others).
  const r = await ovm(['sign', 'example/keyless:1.0', '--fulcio-url', sig.fulcio.url, '--rekor-url', sig.rekor.url, '--json'], {
    home,
    env: {...noAmbientToken, SIGSTORE_ID_TOKEN: ghaToken()},
  })
  expect(r.code, r.stderr).toBe(0)
  signed = JSON.parse(r.stdout)
  const fn = validator('sign.json')
  expect(fn(signed), `ovm sign --json (keyless) does not match schemas/cli/sign.json:\n${problems(fn)}`).toBe(true)
}, 120_000)
afterAll(async () => {
  await sig?.close()
  tmp?.cleanup()
})

describe('ovm sign without --key (keyless through Fulcio and Rekor)', () => {
  it('gets a certificate for the token\'s identity, logs the signature, and stores a bundle the real verifier accepts', async () => {
    expect(signed.keyless.subject).toBe(IDENTITY)
    expect(signed.keyless.issuer).toBe(GHA_ISSUER)
    expect(signed.keyless.logIndex).toBe('0')
    expect(Date.parse(signed.keyless.certificateNotAfter) - Date.now()).toBeLessThanOrEqual(600e3)
    expect(sig.fulcio.requests.filter((q) => q.path === '/api/v2/signingCert')).toHaveLength(1)
    expect(sig.rekor.requests.filter((q) => q.path === '/api/v1/log/entries')).toHaveLength(1)
    expect(JSON.parse(sig.rekor.requests[0]!.body).kind).toBe('dsse')

    const {manifestBytes, bundleJson, subject} = await storedSignature(signed.signature)
    expect(subject).toBe(signed.subject)
    const manifest = JSON.parse(manifestBytes.toString())
    expect(manifest.artifactType).toBe('application/vnd.dev.sigstore.bundle.v0.3+json')
    expect(manifest.layers).toHaveLength(1)
    expect(manifest.annotations['dev.sigstore.bundle.content']).toBe('dsse-envelope')
    expect(bundleJson.mediaType).toBe('application/vnd.dev.sigstore.bundle.v0.3+json')
    expect(bundleJson.verificationMaterial.certificate.rawBytes).toBeTruthy() // a v0.3 bundle carries the leaf only
    expect(bundleJson.verificationMaterial.publicKey).toBeUndefined()
    const tlog = bundleJson.verificationMaterial.tlogEntries
    expect(tlog).toHaveLength(1)
    expect(tlog[0].kindVersion).toEqual({kind: 'dsse', version: '0.0.1'})
    expect(tlog[0].inclusionPromise.signedEntryTimestamp).toBeTruthy()
    expect(tlog[0].inclusionProof.checkpoint.envelope).toContain('\u2014 ')

    // The real check: @sigstore/verify with its default thresholds (1 tlog entry,
    // 1 SCT, 1 timestamp) against the trusted root, then the statement's subject.
    const bundle = bundleFromJSON(bundleJson)
    const signer = new Verifier(toTrustMaterial(TrustedRoot.fromJSON(sig.root))).verify(toSignedEntity(bundle), {
      subjectAlternativeName: `^${IDENTITY.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`,
      extensions: {issuer: GHA_ISSUER},
    })
    expect(signer.identity?.subjectAlternativeName).toBe(IDENTITY)
    expect(isBundleWithDsseEnvelope(bundle)).toBe(true)
    if (!isBundleWithDsseEnvelope(bundle)) return
    const statement = JSON.parse(bundle.content.dsseEnvelope.payload.toString())
    expect(statement.subject[0].digest.sha256).toBe(signed.subject.slice('sha256:'.length))
    expect(statement.predicateType).toBe('https://sigstore.dev/cosign/sign/v1')
  })

  it.skipIf(!opensslAvailable())('the certificate is real X.509: openssl verifies its chain to the test CA and reads its identity', async () => {
    const {bundleJson} = await storedSignature(signed.signature)
    const dir = join(tmp.path, 'openssl')
    mkdirSync(dir, {recursive: true})
    const leaf = Buffer.from(bundleJson.verificationMaterial.certificate.rawBytes, 'base64')
    writeFileSync(join(dir, 'leaf.pem'), toPem(leaf))
    writeFileSync(join(dir, 'root.pem'), toPem(sig.ca.root))
    writeFileSync(join(dir, 'intermediate.pem'), toPem(sig.ca.intermediate))
    const at = String(Math.floor(Date.now() / 1000))
    const v = execFileSync('openssl', ['verify', '-attime', at, '-purpose', 'any', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'intermediate.pem'), join(dir, 'leaf.pem')], {encoding: 'utf8'})
    expect(v.trim()).toBe(`${join(dir, 'leaf.pem')}: OK`)
    const text = execFileSync('openssl', ['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-text'], {encoding: 'utf8'})
    expect(text).toContain(`URI:${IDENTITY}`)
    expect(text).toContain('Code Signing')
    expect(text).toContain('CT Precertificate SCTs')
    expect(text).toContain('1.3.6.1.4.1.57264.1.8')
    // A different CA does not verify it.
    const other = new TestCA('someone else')
    writeFileSync(join(dir, 'other.pem'), toPem(other.root))
    expect(() => execFileSync('openssl', ['verify', '-CAfile', join(dir, 'other.pem'), '-untrusted', join(dir, 'intermediate.pem'), join(dir, 'leaf.pem')], {stdio: 'pipe'})).toThrow()
  })

  it('without a key and without an OIDC token says what keyless signing needs (exit 2)', async () => {
    const r = await ovm(['sign', 'example/keyless:1.0'], {home, env: noAmbientToken})
    expect(r.code).toBe(2)
    expect(r.stderr).toContain('SIGSTORE_ID_TOKEN')
    expect(r.stderr).toContain('ACTIONS_ID_TOKEN_REQUEST_URL')
    expect(r.stderr).toContain('--key')
    const both = await ovm(['sign', 'example/keyless:1.0', '--key', join(tmp.path, 'none.key'), '--fulcio-url', sig.fulcio.url], {home, env: noAmbientToken})
    expect(both.code).toBe(2)
    expect(both.stderr).toContain('for keyless signing')
  })

  it('offline (Fulcio unreachable) fails with exit 8 naming Fulcio, and stores nothing', async () => {
    const before = hashAllBlobs(home).length
    const r = await ovm(['sign', 'example/keyless:1.0', '--fulcio-url', 'http://127.0.0.1:9', '--rekor-url', 'http://127.0.0.1:9'], {
      home,
      env: {...noAmbientToken, SIGSTORE_ID_TOKEN: ghaToken()},
    })
    expect(r.code).toBe(8)
    expect(r.stderr).toContain('cannot reach Fulcio at http://127.0.0.1:9')
    expect(r.stderr).toContain('--key')
    expect(hashAllBlobs(home).length).toBe(before)
  })

  it('a token Fulcio refuses fails with exit 7, and a malformed token is never echoed', async () => {
    const stranger = new TestOidc('https://evil.example').token({sub: 'someone'})
    const r = await ovm(['sign', 'example/keyless:1.0'], {home, env: signEnv(stranger)})
    expect(r.code).toBe(7)
    expect(r.stderr).toContain('refused the OIDC token')
    expect(r.stderr).toContain('(401)')
    const garbage = 'not-a.jwt-secret-value'
    const r2 = await ovm(['sign', 'example/keyless:1.0'], {home, env: signEnv(garbage)})
    expect(r2.code).toBe(7)
    expect(r2.stderr).toContain('OIDC token')
    expect(r2.stderr).not.toContain('jwt-secret-value')
  })

  it('in GitHub Actions asks the runtime for a token with audience sigstore (ACTIONS_ID_TOKEN_REQUEST_URL)', async () => {
    await pack('example/gha:1.0')
    const audiences: string[] = []
    const endpoint = await fakeActionsTokenEndpoint('runtime-request-token', (aud) => {
      audiences.push(aud)
      return oidc.token({aud, sub: 'repo:acme/vms:ref:refs/tags/v1.2.0', job_workflow_ref: 'acme/vms/.github/workflows/release.yml@refs/tags/v1.2.0'})
    })
    try {
      const r = await ovm(['sign', 'example/gha:1.0', '--json'], {
        home,
        env: {
          ...noAmbientToken,
          ACTIONS_ID_TOKEN_REQUEST_URL: `${endpoint.url}/token?api-version=2.0`,
          ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'runtime-request-token',
          SIGSTORE_FULCIO_URL: sig.fulcio.url,
          SIGSTORE_REKOR_URL: sig.rekor.url,
        },
      })
      expect(r.code, r.stderr).toBe(0)
      expect(audiences).toEqual(['sigstore'])
      expect(JSON.parse(r.stdout).keyless.subject).toBe('https://github.com/acme/vms/.github/workflows/release.yml@refs/tags/v1.2.0')
    } finally {
      await endpoint.close()
    }
    // A regular expression over the tag pushes verifies it.
    const v = await ovm(
      ['verify', 'example/gha:1.0', '--certificate-identity-regexp', 'https://github\\.com/acme/vms/\\.github/workflows/release\\.yml@refs/tags/v.*', '--certificate-oidc-issuer', GHA_ISSUER, '--trusted-root', rootFile],
      {home},
    )
    expect(v.code, v.stderr).toBe(0)
  })
})

describe('ovm build --sign --provenance without --key (keyless)', () => {
  it('signs the build and its SLSA provenance through Fulcio and Rekor; both verify keyless', async () => {
    const kv = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    const ctx = join(tmp.path, 'build-keyless')
    mkdirSync(ctx, {recursive: true})
    // No RUN/COPY steps: nothing to bake, so no builder VM boots.
    writeFileSync(
      join(ctx, 'Ovmfile'),
      [`FROM disk:${join(FIXTURES, 'disk.qcow2')}`, `KERNEL ${join(FIXTURES, 'kernel-root', 'boot', `vmlinuz-${kv}`)} MODULES ${join(FIXTURES, 'kernel-root', 'lib', 'modules', kv)}`, 'CMDLINE "console=ttyS0"', ''].join('\n'),
    )
    const none = await ovm(['build', ctx, '-t', 'example/built:1', '--sign'], {home, env: noAmbientToken})
    expect(none.code).toBe(2)
    expect(none.stderr).toContain('OIDC')
    const b = await ovm(['build', ctx, '-t', 'example/built:1', '--sign', '--provenance', '--json'], {home, env: signEnv(ghaToken())})
    expect(b.code, b.stderr).toBe(0)
    expect(JSON.parse(b.stdout).signatures).toHaveLength(2)
    const v = await ovm([...verifyArgs('example/built:1'), '--json'], {home})
    expect(v.code, v.stderr).toBe(0)
    const out = JSON.parse(v.stdout) as {verified: {predicateType: string; identity?: {subject: string}}[]}
    expect(out.verified.map((x) => x.predicateType).sort()).toEqual(['https://sigstore.dev/cosign/sign/v1', 'https://slsa.dev/provenance/v1'])
    for (const x of out.verified) expect(x.identity?.subject).toBe(IDENTITY)
  }, 180_000)
})

describe('ovm verify with keyless identities', () => {
  it('accepts the signer\'s identity and issuer, exact or by regular expression', async () => {
    const v = await ovm([...verifyArgs('example/keyless:1.0'), '--json'], {home})
    expect(v.code, v.stderr).toBe(0)
    const out = JSON.parse(v.stdout)
    const fn = validator('verify.json')
    expect(fn(out), `ovm verify --json (keyless) does not match schemas/cli/verify.json:\n${problems(fn)}`).toBe(true)
    expect(out.verified).toHaveLength(1)
    expect(out.verified[0].identity).toMatchObject({subject: IDENTITY, issuer: GHA_ISSUER, logIndex: '0'})
    expect(out.blobsChecked).toBe(5)
    const text = await ovm(
      ['verify', 'example/keyless:1.0', '--certificate-identity-regexp', 'https://github\\.com/acme/.*', '--certificate-oidc-issuer-regexp', 'https://token\\.actions\\.githubusercontent\\.com', '--trusted-root', rootFile],
      {home},
    )
    expect(text.code, text.stderr).toBe(0)
    expect(text.stdout).toContain(`keyless by ${IDENTITY} (issuer ${GHA_ISSUER})`)
  })

  it('$OVM_HOME/trusted_root.json is the default trusted root', async () => {
    writeFileSync(join(home, 'trusted_root.json'), JSON.stringify(sig.root))
    const v = await ovm(['verify', 'example/keyless:1.0', '--certificate-identity', IDENTITY, '--certificate-oidc-issuer', GHA_ISSUER], {home})
    expect(v.code, v.stderr).toBe(0)
  })

  it('refuses a wrong identity, a wrong issuer, and a regular expression that matches only part of the identity (exit 10)', async () => {
    const wrongId = await ovm(verifyArgs('example/keyless:1.0', rootFile, 'https://github.com/acme/vms/.github/workflows/other.yml@refs/heads/main'), {home})
    expect(wrongId.code).toBe(10)
    expect(wrongId.stderr).toContain(`wrong identity: signed by ${IDENTITY}`)
    const wrongIssuer = await ovm(verifyArgs('example/keyless:1.0', rootFile, IDENTITY, 'https://accounts.google.com'), {home})
    expect(wrongIssuer.code).toBe(10)
    expect(wrongIssuer.stderr).toContain(`wrong issuer`)
    expect(wrongIssuer.stderr).toContain(GHA_ISSUER)
    const partial = await ovm(['verify', 'example/keyless:1.0', '--certificate-identity-regexp', 'acme', '--certificate-oidc-issuer', GHA_ISSUER, '--trusted-root', rootFile], {home})
    expect(partial.code).toBe(10)
    expect(partial.stderr).toContain('wrong identity')
  })

  it('refuses a certificate from a CA the trusted root does not list (exit 10)', async () => {
    const other = await startFakeSigstore({oidc})
    try {
      const otherRoot = writeRoot('other_root.json', other.root)
      const v = await ovm(verifyArgs('example/keyless:1.0', otherRoot), {home})
      expect(v.code).toBe(10)
      expect(v.stderr).toContain('does not chain to a CA in the trusted root')
    } finally {
      await other.close()
    }
  })

  it('only trusting keys refuses a keyless signature and names who made it; only trusting identities refuses a key signature', async () => {
    const k = await ovm(['key', 'generate', '--out', join(tmp.path, 'k'), '--json'], {home, env: {OVM_KEY_PASSWORD: ''}})
    expect(k.code, k.stderr).toBe(0)
    const v = await ovm(['verify', 'example/keyless:1.0', '--key', join(tmp.path, 'k.pub')], {home})
    expect(v.code).toBe(10)
    expect(v.stderr).toContain(`signed keyless by ${IDENTITY}`)
    await pack('example/keyed:1.0')
    expect((await ovm(['sign', 'example/keyed:1.0', '--key', join(tmp.path, 'k.key')], {home, env: {OVM_KEY_PASSWORD: ''}})).code).toBe(0)
    const v2 = await ovm(verifyArgs('example/keyed:1.0'), {home})
    expect(v2.code).toBe(10)
    expect(v2.stderr).toContain('only keyless identities are trusted')
    // Both together: either kind verifies.
    const v3 = await ovm([...verifyArgs('example/keyed:1.0'), '--key', join(tmp.path, 'k.pub')], {home})
    expect(v3.code, v3.stderr).toBe(0)
  })

  it('usage errors: nothing trusted, identity without issuer, bad regexp, bad trusted root', async () => {
    const none = await ovm(['verify', 'example/keyless:1.0'], {home})
    expect(none.code).toBe(2)
    expect(none.stderr).toContain('--certificate-identity')
    const half = await ovm(['verify', 'example/keyless:1.0', '--certificate-identity', IDENTITY], {home})
    expect(half.code).toBe(2)
    expect(half.stderr).toContain('--certificate-oidc-issuer')
    const re = await ovm(['verify', 'example/keyless:1.0', '--certificate-identity-regexp', '(', '--certificate-oidc-issuer', GHA_ISSUER, '--trusted-root', rootFile], {home})
    expect(re.code).toBe(2)
    expect(re.stderr).toContain('--certificate-identity-regexp')
    const bad = writeRoot('bad_root.json', {...sig.root, mediaType: 'application/json'})
    const br = await ovm(verifyArgs('example/keyless:1.0', bad), {home})
    expect(br.code).toBe(3)
    expect(br.stderr).toContain('/mediaType')
    const missing = await ovm(verifyArgs('example/keyless:1.0', join(tmp.path, 'absent_root.json')), {home})
    expect(missing.code).toBe(4)
    expect(missing.stderr).toContain('trusted root not found')
  })
})

describe('certificate lifetime and the transparency-log timestamp', () => {
  it('accepts a certificate that expired long ago when the log recorded the signature while it was valid', async () => {
    // Fulcio issued the 10-minute certificate two hours ago; Rekor logged the signature a minute later.
    const old = await startFakeSigstore({oidc, fulcio: {validityOffsetMs: -2 * 3600e3}, rekor: {timeOffsetS: -2 * 3600 + 60}})
    try {
      await pack('example/old:1.0')
      const s = await ovm(['sign', 'example/old:1.0', '--json'], {home, env: signEnv(ghaToken(), old)})
      expect(s.code, s.stderr).toBe(0)
      expect(Date.parse(JSON.parse(s.stdout).keyless.certificateNotAfter)).toBeLessThan(Date.now() - 3600e3)
      const v = await ovm(verifyArgs('example/old:1.0', writeRoot('old_root.json', old.root)), {home})
      expect(v.code, v.stderr).toBe(0)
    } finally {
      await old.close()
    }
  })

  it('refuses a signature the log recorded after the certificate expired', async () => {
    const late = await startFakeSigstore({oidc, rekor: {timeOffsetS: 3600}})
    try {
      await pack('example/late:1.0')
      expect((await ovm(['sign', 'example/late:1.0'], {home, env: signEnv(ghaToken(), late)})).code).toBe(0)
      const v = await ovm(verifyArgs('example/late:1.0', writeRoot('late_root.json', late.root)), {home})
      expect(v.code).toBe(10)
      expect(v.stderr).toContain('the certificate was not valid when the transparency log recorded the signature')
    } finally {
      await late.close()
    }
  })

  it('refuses a bundle whose log entry was removed, re-timed, or altered (the SET and inclusion proof are checked)', async () => {
    const {manifestBytes, bundleJson, subject} = await storedSignature(signed.signature)
    const trust: Trust = {keys: [], keyless: {trustedRoot: await loadTrustedRoot(rootFile), identities: [{issuer: GHA_ISSUER, subject: IDENTITY}]}}
    const check = (b: Record<string, any>) => {
      try {
        verifySignatureWith(manifestBytes, Buffer.from(JSON.stringify(b)), subject, trust, 'sig')
        return 'accepted'
      } catch (err) {
        expect((err as {exitCode: number}).exitCode).toBe(10)
        return `${(err as {code: string}).code}: ${(err as Error).message}`
      }
    }
    expect(check(bundleJson)).toBe('accepted')
    const clone = () => JSON.parse(JSON.stringify(bundleJson))

    const noTlog = clone()
    noTlog.verificationMaterial.tlogEntries = []
    expect(check(noTlog)).toMatch(/^NO_TLOG_TIMESTAMP: .*no verifiable transparency-log timestamp/)

    // One second later is still inside the certificate's window, but the SET no longer matches.
    const retimed = clone()
    retimed.verificationMaterial.tlogEntries[0].integratedTime = String(Number(retimed.verificationMaterial.tlogEntries[0].integratedTime) + 1)
    expect(check(retimed)).toMatch(/^TLOG_INVALID: .*inclusion promise/)

    // Pushed an hour out, the certificate was no longer valid at that time.
    const expired = clone()
    expired.verificationMaterial.tlogEntries[0].integratedTime = String(Number(expired.verificationMaterial.tlogEntries[0].integratedTime) + 3600)
    expect(check(expired)).toMatch(/^CERTIFICATE_EXPIRED: /)

    const badProof = clone()
    delete badProof.verificationMaterial.tlogEntries[0].inclusionPromise
    badProof.verificationMaterial.tlogEntries[0].inclusionProof.rootHash = Buffer.alloc(32, 7).toString('base64')
    expect(check(badProof)).toMatch(/^(TLOG_INVALID|NO_TLOG_TIMESTAMP): /)

    const altered = clone()
    const statement = JSON.parse(Buffer.from(altered.dsseEnvelope.payload, 'base64').toString())
    statement.predicate = {evil: true}
    altered.dsseEnvelope.payload = Buffer.from(JSON.stringify(statement)).toString('base64')
    expect(check(altered)).toMatch(/^(TLOG_INVALID|SIGNATURE_INVALID): /)
  })
})

describe('trust policy with keyless identities', () => {
  const writePolicy = (doc: unknown): string => {
    const p = join(tmp.path, `policy-${Math.random().toString(36).slice(2)}.json`)
    writeFileSync(p, typeof doc === 'string' ? doc : JSON.stringify(doc))
    return p
  }

  it('accepts the trusted identity and refuses others with the reason; trustedRoot is relative to the policy file', async () => {
    const src = localSource(new LayoutStore(home))
    const ok = await loadPolicy(
      writePolicy({version: 1, trustedRoot: 'trusted_root.json', rules: [{match: 'example/*', require: 'signature', identities: [{issuer: GHA_ISSUER, subjectRegExp: 'https://github\\.com/acme/vms/.*'}]}]}),
    )
    const d = await enforcePolicy(src, 'example/keyless:1.0', ok)
    expect(d.verified?.verified[0]?.identity?.subject).toBe(IDENTITY)

    const wrong = await loadPolicy(writePolicy({version: 1, trustedRoot: rootFile, default: {require: 'signature', identities: [{issuer: GHA_ISSUER, subject: 'https://github.com/evil/vms/.github/workflows/release.yml@refs/heads/main'}]}}))
    const e = await rejects(enforcePolicy(src, 'example/keyless:1.0', wrong))
    expect(e.exitCode).toBe(10)
    expect(e.code).toBe('WRONG_IDENTITY')
    expect(e.message).toContain('refused by policy')
    expect(e.message).toContain(`wrong identity: signed by ${IDENTITY}`)

    const wrongIssuer = await loadPolicy(writePolicy({version: 1, default: {require: 'signature', trustedRoot: rootFile, identities: [{issuer: 'https://gitlab.com', subject: IDENTITY}]}}))
    expect((await rejects(enforcePolicy(src, 'example/keyless:1.0', wrongIssuer))).code).toBe('WRONG_ISSUER')

    // Keys and identities in one rule: either verifies.
    const both = await loadPolicy(writePolicy({version: 1, default: {require: 'signature', keys: [join(tmp.path, 'k.pub')], trustedRoot: rootFile, identities: [{issuer: GHA_ISSUER, subject: IDENTITY}]}}))
    expect((await enforcePolicy(src, 'example/keyless:1.0', both)).verified?.verified).toHaveLength(1)
  })

  it('without a trusted root, refuses and says where to put one', async () => {
    const dir = tempDir('ovm-policy-')
    try {
      const p = join(dir.path, 'policy.json')
      writeFileSync(p, JSON.stringify({version: 1, default: {require: 'signature', identities: [{issuer: GHA_ISSUER, subject: IDENTITY}]}}))
      const e = await rejects(enforcePolicy(localSource(new LayoutStore(home)), 'example/keyless:1.0', await loadPolicy(p)))
      expect(e.code).toBe('NO_TRUSTED_ROOT')
      expect(e.exitCode).toBe(10)
      expect(e.message).toContain(join(dir.path, 'trusted_root.json'))
      expect(e.hint).toContain('trusted_root.json')
    } finally {
      dir.cleanup()
    }
  })

  it('identities are checked by the schema (issuer and subject, exact or regexp) and regexps must compile', async () => {
    const e1 = await rejects(loadPolicy(writePolicy({version: 1, default: {identities: [{subject: IDENTITY}]}})))
    expect(e1.code).toBe('POLICY_INVALID')
    expect(e1.details.map((d) => d.at).sort()).toEqual(['/default/identities/0/issuer', '/default/identities/0/issuerRegExp'])
    const e2 = await rejects(loadPolicy(writePolicy({version: 1, default: {identities: [{issuer: GHA_ISSUER, subject: IDENTITY, subjectRegExp: '.*'}]}})))
    expect(e2.code).toBe('POLICY_INVALID')
    expect(e2.details).toEqual([expect.objectContaining({at: '/default/identities/0', message: 'names both the exact and the regexp form of a field'})])
    const e3 = await rejects(loadPolicy(writePolicy({version: 1, rules: [{match: '*', identities: [{issuer: GHA_ISSUER, subjectRegExp: '(['}]}]})))
    expect(e3.code).toBe('BAD_REGEXP')
    expect(e3.exitCode).toBe(3)
    expect(e3.message).toContain('/rules/0/identities/0/subjectRegExp')
    // The pre-existing form still validates.
    expect(await loadPolicy(writePolicy({version: 1, default: {identities: [{issuer: GHA_ISSUER, subject: IDENTITY}]}}))).toBeDefined()
  })

  it('ovm run refuses a keyless signature from the wrong identity before booting anything', async () => {
    writeFileSync(join(home, 'policy.json'), JSON.stringify({version: 1, trustedRoot: rootFile, default: {require: 'signature', identities: [{issuer: GHA_ISSUER, subject: 'https://github.com/evil/x/.github/workflows/a.yml@refs/heads/main'}]}}))
    try {
      const r = await ovm(['run', '-d', 'example/keyless:1.0'], {home})
      expect(r.code).toBe(10)
      expect(r.stderr).toContain('wrong identity')
      expect(existsSync(join(home, 'serve.log'))).toBe(false) // no daemon was started, nothing booted
    } finally {
      writeFileSync(join(home, 'policy.json'), JSON.stringify({version: 1}))
    }
  })
})
