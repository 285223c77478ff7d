/**
 * In-test stand-ins for the Sigstore services keyless signing talks to, each
 * speaking the real HTTP API and minting real cryptographic material, so that
 * what they produce can be checked by the real @sigstore/verify:
 *
 * - an OIDC issuer minting ES256 JWTs (and a GitHub Actions token endpoint);
 * - Fulcio v2 (`POST /api/v2/signingCert`): checks the token and the proof of
 *   possession, issues a short-lived X.509 leaf for the token's identity from a
 *   test CA (root + intermediate) with an embedded SCT from a test CT log;
 * - Rekor v1 (`POST /api/v1/log/entries`, dsse 0.0.1): checks the envelope's
 *   signature, appends to a real RFC 6962 Merkle tree and answers with a signed
 *   entry timestamp and an inclusion proof with a signed checkpoint;
 * - `trustedRoot()`: a trusted_root.json naming that CA, log and CT log.
 *
 * Fakes of remote services only: the client side (FulcioSigner, RekorWitness,
 * ovm) and the verifier are the real code.
 */
import {X509Certificate as NodeX509, createHash, createPublicKey, generateKeyPairSync, randomBytes, sign as cryptoSign, verify as cryptoVerify, type KeyObject} from 'node:crypto'
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http'
import type {AddressInfo} from 'node:net'

import {X509Certificate, json} from '@sigstore/core'

// ---------------------------------------------------------------- DER encoding

function encLen(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

export const der = {
  tlv: (tag: number, ...parts: Buffer[]): Buffer => {
    const body = Buffer.concat(parts)
    return Buffer.concat([Buffer.from([tag]), encLen(body.length), body])
  },
  seq: (...p: Buffer[]) => der.tlv(0x30, ...p),
  set: (...p: Buffer[]) => der.tlv(0x31, ...p),
  bool: (b: boolean) => der.tlv(0x01, Buffer.from([b ? 0xff : 0])),
  int: (v: bigint | number | Buffer): Buffer => {
    let b: Buffer
    if (Buffer.isBuffer(v)) b = v
    else {
      let hex = BigInt(v).toString(16)
      if (hex.length % 2) hex = `0${hex}`
      b = Buffer.from(hex, 'hex')
    }
    let i = 0
    while (i < b.length - 1 && b[i] === 0 && (b[i + 1]! & 0x80) === 0) i++
    b = b.subarray(i)
    if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b])
    return der.tlv(0x02, b)
  },
  oid: (s: string): Buffer => {
    const parts = s.split('.').map(Number)
    const out = [40 * parts[0]! + parts[1]!]
    for (const p of parts.slice(2)) {
      const stack = [p & 0x7f]
      for (let v = p >>> 7; v > 0; v >>>= 7) stack.unshift(0x80 | (v & 0x7f))
      out.push(...stack)
    }
    return der.tlv(0x06, Buffer.from(out))
  },
  octet: (b: Buffer) => der.tlv(0x04, b),
  bits: (b: Buffer, unused = 0) => der.tlv(0x03, Buffer.from([unused]), b),
  utf8: (s: string) => der.tlv(0x0c, Buffer.from(s, 'utf8')),
  time: (d: Date): Buffer => {
    const iso = d.toISOString()
    const y = d.getUTCFullYear()
    const body = iso.slice(0, 19).replace(/[-:T]/g, '') + 'Z' // YYYYMMDDHHMMSSZ
    return y >= 1950 && y < 2050 ? der.tlv(0x17, Buffer.from(body.slice(2))) : der.tlv(0x18, Buffer.from(body))
  },
  /** Context-specific tag [n]: constructed (explicit) or primitive (implicit). */
  ctx: (n: number, constructed: boolean, ...p: Buffer[]) => der.tlv(0x80 | (constructed ? 0x20 : 0) | n, ...p),
}

const OID = {
  ecdsaSha256: '1.2.840.10045.4.3.2',
  cn: '2.5.4.3',
  o: '2.5.4.10',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  codeSigning: '1.3.6.1.5.5.7.3.3',
  subjectKeyId: '2.5.29.14',
  authorityKeyId: '2.5.29.35',
  subjectAltName: '2.5.29.17',
  fulcioIssuerV1: '1.3.6.1.4.1.57264.1.1',
  fulcioIssuerV2: '1.3.6.1.4.1.57264.1.8',
  sct: '1.3.6.1.4.1.11129.2.4.2',
}

function name(o: string, cn?: string): Buffer {
  const rdn = (oid: string, v: string) => der.set(der.seq(der.oid(oid), der.utf8(v)))
  return der.seq(rdn(OID.o, o), ...(cn ? [rdn(OID.cn, cn)] : []))
}

function ext(oid: string, critical: boolean, value: Buffer): Buffer {
  return der.seq(der.oid(oid), ...(critical ? [der.bool(true)] : []), der.octet(value))
}

function spki(key: KeyObject): Buffer {
  return key.export({type: 'spki', format: 'der'})
}

/** SHA-1 of the subjectPublicKey bits (RFC 5280 key identifier method 1). */
function keyIdentifier(pub: KeyObject): Buffer {
  const d = spki(pub)
  // For P-256 SPKI the BIT STRING is the last 66 bytes: 03 42 00 <65 bytes>.
  return createHash('sha1').update(d.subarray(d.length - 65)).digest()
}

export function toPem(derBytes: Buffer, label = 'CERTIFICATE'): string {
  const b64 = derBytes.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`
}

interface CertSpec {
  issuer: Buffer
  subject: Buffer
  notBefore: Date
  notAfter: Date
  publicKey: KeyObject
  extensions: Buffer[]
  serial?: Buffer
}

function tbs(spec: CertSpec): Buffer {
  return der.seq(
    der.ctx(0, true, der.int(2)), // v3
    der.int(spec.serial ?? Buffer.concat([Buffer.from([0x01]), randomBytes(15)])),
    der.seq(der.oid(OID.ecdsaSha256)),
    spec.issuer,
    der.seq(der.time(spec.notBefore), der.time(spec.notAfter)),
    spec.subject,
    spki(spec.publicKey),
    der.ctx(3, true, der.seq(...spec.extensions)),
  )
}

function signCert(tbsBytes: Buffer, signer: KeyObject): Buffer {
  return der.seq(tbsBytes, der.seq(der.oid(OID.ecdsaSha256)), der.bits(cryptoSign('sha256', tbsBytes, signer)))
}

// ------------------------------------------------------------------- keys/logs

/** A signing key with a log ID (sha256 of its SPKI), as a Rekor or CT log has. */
export class LogKey {
  readonly privateKey: KeyObject
  readonly publicKey: KeyObject
  readonly logId: Buffer
  constructor() {
    const kp = generateKeyPairSync('ec', {namedCurve: 'P-256'})
    this.privateKey = kp.privateKey
    this.publicKey = kp.publicKey
    this.logId = createHash('sha256').update(spki(kp.publicKey)).digest()
  }
}

/** A test certificate authority: self-signed root and an intermediate that issues leaves. */
export class TestCA {
  readonly rootKey = generateKeyPairSync('ec', {namedCurve: 'P-256'})
  readonly intermediateKey = generateKeyPairSync('ec', {namedCurve: 'P-256'})
  readonly root: Buffer
  readonly intermediate: Buffer
  readonly org: string

  constructor(org = 'ovm test sigstore') {
    this.org = org
    const now = Date.now()
    const notBefore = new Date(now - 24 * 3600e3)
    const notAfter = new Date(now + 365 * 24 * 3600e3)
    const rootName = name(org, `${org} root`)
    const caExts = (pub: KeyObject, issuerPub: KeyObject, pathLen?: number) => [
      ext(OID.keyUsage, true, der.bits(Buffer.from([0x06]), 1)), // keyCertSign, cRLSign
      ext(OID.basicConstraints, true, der.seq(der.bool(true), ...(pathLen === undefined ? [] : [der.int(pathLen)]))),
      ext(OID.subjectKeyId, false, der.octet(keyIdentifier(pub))),
      ext(OID.authorityKeyId, false, der.seq(der.ctx(0, false, keyIdentifier(issuerPub)))),
    ]
    this.root = signCert(
      tbs({issuer: rootName, subject: rootName, notBefore, notAfter, publicKey: this.rootKey.publicKey, extensions: caExts(this.rootKey.publicKey, this.rootKey.publicKey, 1)}),
      this.rootKey.privateKey,
    )
    this.intermediate = signCert(
      tbs({
        issuer: rootName,
        subject: name(org, `${org} intermediate`),
        notBefore,
        notAfter,
        publicKey: this.intermediateKey.publicKey,
        extensions: caExts(this.intermediateKey.publicKey, this.rootKey.publicKey, 0),
      }),
      this.rootKey.privateKey,
    )
  }

  /**
   * A Fulcio-style code-signing leaf: empty subject, the identity in a critical
   * SAN (URI or email), the OIDC issuer in Fulcio's extensions, and, with a CT
   * log, an embedded SCT over the precertificate TBS (RFC 6962 §3.2).
   */
  issueLeaf(o: {publicKey: KeyObject; san: {uri?: string; email?: string}; issuer: string; notBefore: Date; notAfter: Date; ctlog?: LogKey}): Buffer {
    const sanName = o.san.uri !== undefined ? der.ctx(6, false, Buffer.from(o.san.uri)) : der.ctx(1, false, Buffer.from(o.san.email ?? ''))
    const exts = [
      ext(OID.keyUsage, true, der.bits(Buffer.from([0x80]), 7)), // digitalSignature
      ext(OID.extKeyUsage, false, der.seq(der.oid(OID.codeSigning))),
      ext(OID.subjectKeyId, false, der.octet(keyIdentifier(o.publicKey))),
      ext(OID.authorityKeyId, false, der.seq(der.ctx(0, false, keyIdentifier(this.intermediateKey.publicKey)))),
      ext(OID.subjectAltName, true, der.seq(sanName)),
      ext(OID.fulcioIssuerV1, false, Buffer.from(o.issuer)),
      ext(OID.fulcioIssuerV2, false, der.utf8(o.issuer)),
    ]
    const spec: CertSpec = {issuer: name(this.org, `${this.org} intermediate`), subject: der.seq(), notBefore: o.notBefore, notAfter: o.notAfter, publicKey: o.publicKey, extensions: exts}
    // A random serial or signature can, rarely, re-encode differently through a
    // generic ASN.1 parser; mint until the certificate round-trips exactly.
    for (let attempt = 0; attempt < 20; attempt++) {
      const fixed = {...spec, serial: Buffer.concat([Buffer.from([0x01]), randomBytes(15)])}
      let t = tbs(fixed)
      if (o.ctlog) {
        // The SCT signs the TBS without the SCT extension (the precertificate).
        const sct = this.sct(t, o.ctlog, o.notBefore)
        const list = Buffer.concat([u16(sct.length), sct])
        t = tbs({...fixed, extensions: [...exts, ext(OID.sct, false, der.octet(Buffer.concat([u16(list.length), list])))]})
      }
      const cert = signCert(t, this.intermediateKey.privateKey)
      const parsed = X509Certificate.parse(cert as Buffer<ArrayBuffer>)
      if (parsed.root.toDER().equals(cert) && parsed.verify(X509Certificate.parse(this.intermediate as Buffer<ArrayBuffer>))) return cert
    }
    throw new Error('could not mint a certificate that round-trips')
  }

  /** RFC 6962 SCT (v1, precert entry) over a TBS without the SCT extension. */
  private sct(precertTbs: Buffer, log: LogKey, when: Date): Buffer {
    const issuerKeyHash = createHash('sha256').update(spki(this.intermediateKey.publicKey)).digest()
    const ts = Buffer.alloc(8)
    ts.writeBigUInt64BE(BigInt(when.getTime()))
    const signed = Buffer.concat([Buffer.from([0, 0]), ts, u16(1), issuerKeyHash, u24(precertTbs.length), precertTbs, u16(0)])
    const sig = cryptoSign('sha256', signed, log.privateKey)
    return Buffer.concat([Buffer.from([0]), log.logId, ts, u16(0), Buffer.from([4, 3]), u16(sig.length), sig])
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(n)
  return b
}
function u24(n: number): Buffer {
  return Buffer.from([(n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff])
}

// ------------------------------------------------------------------------ OIDC

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url')
}

/** An OIDC issuer that mints ES256 ID tokens. */
export class TestOidc {
  readonly key = generateKeyPairSync('ec', {namedCurve: 'P-256'})
  constructor(readonly issuer = 'https://oidc.ovm.test') {}

  token(claims: Record<string, unknown>, o: {expiresIn?: number} = {}): string {
    const now = Math.floor(Date.now() / 1000)
    const header = b64url(JSON.stringify({alg: 'ES256', typ: 'JWT', kid: 'test'}))
    const payload = b64url(JSON.stringify({iss: this.issuer, aud: 'sigstore', iat: now, nbf: now, exp: now + (o.expiresIn ?? 600), ...claims}))
    const sig = cryptoSign('sha256', Buffer.from(`${header}.${payload}`), {key: this.key.privateKey, dsaEncoding: 'ieee-p1363'})
    return `${header}.${payload}.${b64url(sig)}`
  }

  /** The claims of a token this issuer signed; throws otherwise. */
  check(jwt: string): Record<string, unknown> {
    const [h, p, s] = jwt.split('.')
    if (!h || !p || !s) throw new Error('not a JWT')
    if (!cryptoVerify('sha256', Buffer.from(`${h}.${p}`), {key: this.key.publicKey, dsaEncoding: 'ieee-p1363'}, Buffer.from(s, 'base64url'))) throw new Error('bad token signature')
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>
    if (claims.iss !== this.issuer) throw new Error(`untrusted issuer ${String(claims.iss)}`)
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
    if (!aud.includes('sigstore')) throw new Error('audience is not sigstore')
    if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) throw new Error('token expired')
    return claims
  }
}

// ------------------------------------------------------------------- servers

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, {'Content-Type': 'application/json', ...headers})
  res.end(JSON.stringify(body))
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

export interface Fake {
  url: string
  requests: {method: string; path: string; body: string}[]
  close(): Promise<void>
}

async function serve(handler: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<Fake> {
  const requests: Fake['requests'] = []
  const server = createServer(async (req, res) => {
    const body = await readBody(req)
    requests.push({method: req.method ?? '', path: req.url ?? '', body})
    try {
      handler(req, body, res)
    } catch (err) {
      reply(res, 500, {code: 500, message: (err as Error).message})
    }
  })
  const url = await listen(server)
  return {url, requests, close: () => new Promise<void>((r) => server.close(() => r()))}
}

export interface FulcioOptions {
  /** Shift the certificate's validity window by this many ms (negative: in the past). */
  validityOffsetMs?: number
  /** Certificate lifetime; Fulcio issues 10-minute certificates. */
  lifetimeMs?: number
}

/** Fulcio v2: POST /api/v2/signingCert. */
export async function fakeFulcio(ca: TestCA, oidc: TestOidc, ctlog: LogKey, opts: FulcioOptions = {}): Promise<Fake> {
  return serve((req, body, res) => {
    if (req.method !== 'POST' || req.url !== '/api/v2/signingCert') return reply(res, 404, {code: 404, message: 'not found'})
    const r = JSON.parse(body) as {credentials?: {oidcIdentityToken?: string}; publicKeyRequest?: {publicKey?: {algorithm?: string; content?: string}; proofOfPossession?: string}}
    let claims: Record<string, unknown>
    try {
      claims = oidc.check(r.credentials?.oidcIdentityToken ?? '')
    } catch (err) {
      return reply(res, 401, {code: 16, message: `There was an error processing the identity token: ${(err as Error).message}`})
    }
    const pem = r.publicKeyRequest?.publicKey?.content ?? ''
    const pub = createPublicKey(pem)
    const subject = (claims.email as string | undefined) ?? (claims.sub as string)
    if (!cryptoVerify('sha256', Buffer.from(subject), pub, Buffer.from(r.publicKeyRequest?.proofOfPossession ?? '', 'base64'))) {
      return reply(res, 400, {code: 3, message: 'The signature supplied in the request could not be verified'})
    }
    const san = claims.email ? {email: claims.email as string} : claims.job_workflow_ref ? {uri: `https://github.com/${claims.job_workflow_ref as string}`} : {uri: claims.sub as string}
    const start = Date.now() + (opts.validityOffsetMs ?? 0) - 1000
    const cert = ca.issueLeaf({publicKey: pub, san, issuer: claims.iss as string, notBefore: new Date(start), notAfter: new Date(start + (opts.lifetimeMs ?? 600e3)), ctlog})
    reply(res, 201, {signedCertificateEmbeddedSct: {chain: {certificates: [toPem(cert), toPem(ca.intermediate), toPem(ca.root)]}}})
  })
}

function hashLeaf(b: Buffer): Buffer {
  return createHash('sha256').update(Buffer.from([0])).update(b).digest()
}
function hashChildren(l: Buffer, r: Buffer): Buffer {
  return createHash('sha256').update(Buffer.from([1])).update(l).update(r).digest()
}
function largestPow2Below(n: number): number {
  let k = 1
  while (k * 2 < n) k *= 2
  return k
}
/** RFC 6962 Merkle tree hash of leaf hashes. */
function mth(leaves: Buffer[]): Buffer {
  if (leaves.length === 1) return leaves[0]!
  const k = largestPow2Below(leaves.length)
  return hashChildren(mth(leaves.slice(0, k)), mth(leaves.slice(k)))
}
/** RFC 6962 audit path for leaf m, lower levels first. */
function auditPath(m: number, leaves: Buffer[]): Buffer[] {
  if (leaves.length <= 1) return []
  const k = largestPow2Below(leaves.length)
  return m < k ? [...auditPath(m, leaves.slice(0, k)), mth(leaves.slice(k))] : [...auditPath(m - k, leaves.slice(k)), mth(leaves.slice(0, k))]
}

export interface RekorOptions {
  /** Shift integratedTime by this many seconds (negative: in the past). */
  timeOffsetS?: number
}

/** Rekor v1: POST /api/v1/log/entries (dsse 0.0.1), with SET, inclusion proof and checkpoint. */
export async function fakeRekor(log: LogKey, opts: RekorOptions = {}): Promise<Fake & {entries: Buffer[]}> {
  const leaves: Buffer[] = []
  const entries: Buffer[] = []
  let origin = ''
  const fake = await serve((req, body, res) => {
    if (req.method !== 'POST' || req.url !== '/api/v1/log/entries') return reply(res, 404, {code: 404, message: 'not found'})
    const proposed = JSON.parse(body) as {kind?: string; apiVersion?: string; spec?: {proposedContent?: {envelope?: string; verifiers?: string[]}}}
    if (proposed.kind !== 'dsse' || proposed.apiVersion !== '0.0.1') return reply(res, 400, {code: 400, message: `unsupported entry ${proposed.kind}/${proposed.apiVersion}`})
    const envelopeText = proposed.spec?.proposedContent?.envelope ?? ''
    const envelope = JSON.parse(envelopeText) as {payloadType: string; payload: string; signatures: {sig: string}[]}
    const verifierPem = Buffer.from(proposed.spec?.proposedContent?.verifiers?.[0] ?? '', 'base64').toString()
    const key = verifierPem.includes('CERTIFICATE') ? new NodeX509(verifierPem).publicKey : createPublicKey(verifierPem)
    const payload = Buffer.from(envelope.payload, 'base64')
    const type = Buffer.from(envelope.payloadType)
    const pae = Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload])
    const sig = envelope.signatures[0]?.sig ?? ''
    if (!cryptoVerify('sha256', pae, key, Buffer.from(sig, 'base64'))) return reply(res, 400, {code: 400, message: 'verifying signature: invalid signature'})
    const entryBody = {
      apiVersion: '0.0.1',
      kind: 'dsse',
      spec: {
        envelopeHash: {algorithm: 'sha256', value: createHash('sha256').update(envelopeText).digest('hex')},
        payloadHash: {algorithm: 'sha256', value: createHash('sha256').update(payload).digest('hex')},
        signatures: [{signature: sig, verifier: proposed.spec?.proposedContent?.verifiers?.[0]}],
      },
    }
    const canonical = Buffer.from(json.canonicalize(entryBody))
    const logIndex = leaves.length
    leaves.push(hashLeaf(canonical))
    entries.push(canonical)
    const integratedTime = Math.floor(Date.now() / 1000) + (opts.timeOffsetS ?? 0)
    const logID = log.logId.toString('hex')
    const setPayload = {body: canonical.toString('base64'), integratedTime, logIndex, logID}
    const set = cryptoSign('sha256', Buffer.from(json.canonicalize(setPayload)), log.privateKey)
    const root = mth(leaves)
    const note = `${origin}\n${leaves.length}\n${root.toString('base64')}\n`
    const noteSig = Buffer.concat([log.logId.subarray(0, 4), cryptoSign('sha256', Buffer.from(note), log.privateKey)])
    const checkpoint = `${note}\n\u2014 ${origin.split(' ')[0]} ${noteSig.toString('base64')}\n`
    const uuid = createHash('sha256').update(canonical).digest('hex')
    reply(
      res,
      201,
      {
        [uuid]: {
          body: canonical.toString('base64'),
          integratedTime,
          logID,
          logIndex,
          verification: {
            signedEntryTimestamp: set.toString('base64'),
            inclusionProof: {logIndex, treeSize: leaves.length, rootHash: root.toString('hex'), hashes: auditPath(logIndex, leaves).map((h) => h.toString('hex')), checkpoint},
          },
        },
      },
      {Location: `/api/v1/log/entries/${uuid}`},
    )
  })
  origin = `${new URL(fake.url).host} - 1`
  return {...fake, entries}
}

/** A GitHub Actions OIDC token endpoint: GET ?audience=… with the request bearer token. */
export async function fakeActionsTokenEndpoint(requestToken: string, mint: (audience: string) => string): Promise<Fake> {
  return serve((req, _body, res) => {
    if (req.headers.authorization !== `Bearer ${requestToken}`) return reply(res, 401, {message: 'bad request token'})
    const audience = new URL(req.url ?? '/', 'http://x').searchParams.get('audience') ?? ''
    reply(res, 200, {count: 1, value: mint(audience)})
  })
}

// -------------------------------------------------------------- trusted root

function tlogJson(url: string, key: LogKey, start: Date): Record<string, unknown> {
  return {
    baseUrl: url,
    hashAlgorithm: 'SHA2_256',
    publicKey: {rawBytes: spki(key.publicKey).toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: {start: start.toISOString()}},
    logId: {keyId: key.logId.toString('base64')},
  }
}

/** trusted_root.json (Sigstore TrustedRoot v0.1) naming the test CA, Rekor and CT log. */
export function trustedRoot(o: {ca: TestCA; fulcioUrl: string; rekor: LogKey; rekorUrl: string; ctlog: LogKey; ctlogUrl?: string}): Record<string, unknown> {
  const start = new Date(Date.now() - 48 * 3600e3)
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [tlogJson(o.rekorUrl, o.rekor, start)],
    certificateAuthorities: [
      {
        subject: {organization: o.ca.org, commonName: `${o.ca.org} root`},
        uri: o.fulcioUrl,
        certChain: {certificates: [{rawBytes: o.ca.intermediate.toString('base64')}, {rawBytes: o.ca.root.toString('base64')}]},
        validFor: {start: start.toISOString()},
      },
    ],
    ctlogs: [tlogJson(o.ctlogUrl ?? 'https://ctfe.ovm.test/test', o.ctlog, start)],
    timestampAuthorities: [],
  }
}

/** Everything a keyless test needs, started together. */
export interface FakeSigstore {
  ca: TestCA
  oidc: TestOidc
  rekorKey: LogKey
  ctlog: LogKey
  fulcio: Fake
  rekor: Fake & {entries: Buffer[]}
  root: Record<string, unknown>
  close(): Promise<void>
}

export async function startFakeSigstore(o: {fulcio?: FulcioOptions; rekor?: RekorOptions; ca?: TestCA; oidc?: TestOidc} = {}): Promise<FakeSigstore> {
  const ca = o.ca ?? new TestCA()
  const oidc = o.oidc ?? new TestOidc()
  const rekorKey = new LogKey()
  const ctlog = new LogKey()
  const fulcio = await fakeFulcio(ca, oidc, ctlog, o.fulcio)
  const rekor = await fakeRekor(rekorKey, o.rekor)
  const root = trustedRoot({ca, fulcioUrl: fulcio.url, rekor: rekorKey, rekorUrl: rekor.url, ctlog})
  return {ca, oidc, rekorKey, ctlog, fulcio, rekor, root, close: async () => void (await Promise.all([fulcio.close(), rekor.close()]))}
}
