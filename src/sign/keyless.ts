/**
 * Keyless signing (Fulcio + Rekor with an OIDC token) and keyless
 * verification (certificate identity + issuer against a Sigstore trusted
 * root), both with sigstore-js's own building blocks.
 */
import {createHash, createPublicKey, type KeyObject} from 'node:crypto'
import {readFile} from 'node:fs/promises'

import type {Bundle} from '@sigstore/bundle'
import {X509Certificate} from '@sigstore/core'
import {TrustedRoot} from '@sigstore/protobuf-specs'
import {CIContextProvider, DEFAULT_FULCIO_URL, DEFAULT_REKOR_URL, FulcioSigner, InternalError, RekorWitness, type Signer, type Witness} from '@sigstore/sign'
import {Verifier, toSignedEntity, toTrustMaterial} from '@sigstore/verify'

import {parseJsonText} from '../artifact/validate.js'
import {AbortError, ExitCode, type ExitCodeValue, fileError} from '../errors/index.js'

export {DEFAULT_FULCIO_URL, DEFAULT_REKOR_URL}

export const TRUSTED_ROOT_MEDIA_TYPE_PREFIX = 'application/vnd.dev.sigstore.trustedroot'

// ------------------------------------------------------------------ signing

export type TokenSource = 'github-actions' | 'SIGSTORE_ID_TOKEN'

export interface KeylessConfig {
  fulcioURL: string
  rekorURL: string
  source: TokenSource
  /** Per-request timeout for Fulcio and Rekor, ms. */
  timeoutMs: number
}

/** Where an OIDC token would come from, or undefined when none is available. */
export function tokenSource(env: NodeJS.ProcessEnv = process.env): TokenSource | undefined {
  if (env.ACTIONS_ID_TOKEN_REQUEST_URL && env.ACTIONS_ID_TOKEN_REQUEST_TOKEN) return 'github-actions'
  if (env.SIGSTORE_ID_TOKEN) return 'SIGSTORE_ID_TOKEN'
  return undefined
}

function checkUrl(value: string, what: string, flag: string): string {
  let u: URL
  try {
    u = new URL(value)
  } catch {
    throw new AbortError({code: 'BAD_URL', message: `${flag}: "${value}" is not a URL`, hint: `Give the ${what} base URL, e.g. ${what === 'Fulcio' ? DEFAULT_FULCIO_URL : DEFAULT_REKOR_URL}.`, exitCode: ExitCode.usage, ref: flag})
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    throw new AbortError({code: 'BAD_URL', message: `${flag}: "${value}" is not an http(s) URL`, hint: `Give the ${what} base URL.`, exitCode: ExitCode.usage, ref: flag})
  }
  return value.replace(/\/+$/, '')
}

/**
 * The keyless configuration from flags and the environment (flags win over
 * SIGSTORE_FULCIO_URL / SIGSTORE_REKOR_URL, which win over the public-good
 * instances). Throws a usage error (exit 2) when no OIDC token is available.
 */
export function keylessConfig(flags: {fulcioUrl?: string; rekorUrl?: string}, env: NodeJS.ProcessEnv = process.env): KeylessConfig {
  const source = tokenSource(env)
  if (!source) {
    throw new AbortError({
      code: 'NO_KEY',
      message:
        'no signing key and no OIDC token: `ovm sign` without --key signs keyless, which needs an OIDC identity token ' +
        '(SIGSTORE_ID_TOKEN, or ACTIONS_ID_TOKEN_REQUEST_URL + ACTIONS_ID_TOKEN_REQUEST_TOKEN in GitHub Actions) and network access to Fulcio and Rekor',
      hint:
        'Sign with a local key (`ovm key generate`, then `ovm sign REF --key ovm.key`), or in GitHub Actions grant `permissions: id-token: write`, ' +
        'or set SIGSTORE_ID_TOKEN to an OIDC token whose audience is "sigstore".',
      exitCode: ExitCode.usage,
    })
  }
  return {
    fulcioURL: checkUrl(flags.fulcioUrl ?? env.SIGSTORE_FULCIO_URL ?? DEFAULT_FULCIO_URL, 'Fulcio', '--fulcio-url'),
    rekorURL: checkUrl(flags.rekorUrl ?? env.SIGSTORE_REKOR_URL ?? DEFAULT_REKOR_URL, 'Rekor', '--rekor-url'),
    source,
    timeoutMs: Number(env.OVM_SIGSTORE_TIMEOUT_MS) > 0 ? Number(env.OVM_SIGSTORE_TIMEOUT_MS) : 30_000,
  }
}

/**
 * FulcioSigner (ephemeral P-256 key, certificate for the token's identity) and
 * a Rekor witness (dsse entry, inclusion promise and proof), as sigstore-js
 * wires them for `sigstore sign`.
 */
export function keylessSigning(cfg: KeylessConfig): {signer: Signer; witnesses: Witness[]} {
  const identityProvider = new CIContextProvider('sigstore')
  return {
    signer: new FulcioSigner({fulcioBaseURL: cfg.fulcioURL, identityProvider, timeout: cfg.timeoutMs, retry: 1}),
    witnesses: [new RekorWitness({rekorBaseURL: cfg.rekorURL, entryType: 'dsse', fetchOnConflict: true, timeout: cfg.timeoutMs, retry: 1})],
  }
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'FETCH_ERROR', 'ERR_SOCKET_TIMEOUT'])

function networkCause(err: unknown): string | undefined {
  for (let e = err as {code?: string; errno?: string; type?: string; cause?: unknown; message?: string} | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if ((e.code && NETWORK_CODES.has(e.code)) || (e.errno && NETWORK_CODES.has(e.errno)) || e.type === 'request-timeout' || e.type === 'system') return e.code ?? e.errno ?? e.type ?? 'network error'
  }
  return undefined
}

function httpStatus(err: unknown): number | undefined {
  const c = (err as {cause?: {statusCode?: number}})?.cause
  return typeof c?.statusCode === 'number' ? c.statusCode : undefined
}

/** Turn a sigstore-js signing failure into an ovm error that says what keyless signing needed. */
export function keylessError(err: unknown, cfg: KeylessConfig): AbortError {
  if (err instanceof AbortError) return err
  const offline = 'Keyless signing needs network access to Fulcio and Rekor; offline, sign with a local key (`ovm sign REF --key ovm.key`).'
  const cause = (err as {cause?: unknown})?.cause
  const causeMsg = cause instanceof Error ? cause.message : typeof cause === 'string' ? cause : ''
  const code = err instanceof InternalError ? err.code : undefined
  const mk = (c: string, message: string, hint: string, exitCode: ExitCodeValue) => new AbortError({code: c, message, hint, exitCode, cause: err})
  switch (code) {
    case 'IDENTITY_TOKEN_READ_ERROR':
      return mk(
        'OIDC_TOKEN_UNAVAILABLE',
        `could not get an OIDC token (${cfg.source === 'github-actions' ? 'from GitHub Actions via ACTIONS_ID_TOKEN_REQUEST_URL' : 'SIGSTORE_ID_TOKEN'}): ${causeMsg || 'no token'}`,
        cfg.source === 'github-actions' ? 'Grant the workflow `permissions: id-token: write`.' : 'Set SIGSTORE_ID_TOKEN to an OIDC ID token (a JWT) with audience "sigstore".',
        ExitCode.auth,
      )
    case 'IDENTITY_TOKEN_PARSE_ERROR':
      // sigstore-js puts the whole token in its message: never print it (nor attach it as the cause).
      return new AbortError({
        code: 'OIDC_TOKEN_INVALID',
        message: `the OIDC token is not a usable JWT: ${cause instanceof SyntaxError || /JSON/.test(causeMsg) ? 'its payload is not base64url-encoded JSON' : causeMsg || 'it has no subject or email claim'}`,
        hint: 'Pass an OIDC ID token (three base64url parts) with a "sub" or verified "email" claim.',
        exitCode: ExitCode.auth,
      })
    case 'CA_CREATE_SIGNING_CERTIFICATE_ERROR':
    case 'TLOG_CREATE_ENTRY_ERROR':
    case 'TLOG_FETCH_ENTRY_ERROR': {
      const fulcio = code === 'CA_CREATE_SIGNING_CERTIFICATE_ERROR'
      const what = fulcio ? `Fulcio at ${cfg.fulcioURL}` : `Rekor at ${cfg.rekorURL}`
      const net = networkCause(err)
      if (net) return mk(fulcio ? 'FULCIO_UNREACHABLE' : 'REKOR_UNREACHABLE', `cannot reach ${what} (${net})`, `${offline} Or point --${fulcio ? 'fulcio' : 'rekor'}-url at a reachable instance.`, ExitCode.network)
      const status = httpStatus(err)
      if (fulcio && (status === 401 || status === 403)) {
        return mk('OIDC_TOKEN_REFUSED', `${what} refused the OIDC token: ${causeMsg}`, 'The token may be expired, for another audience than "sigstore", or from an issuer this Fulcio does not trust.', ExitCode.auth)
      }
      return mk(fulcio ? 'FULCIO_ERROR' : 'REKOR_ERROR', `${what} failed: ${causeMsg || (err as Error).message}`, `Check --${fulcio ? 'fulcio' : 'rekor'}-url, then retry.`, ExitCode.network)
    }
    default: {
      const net = networkCause(err)
      if (net) return mk('SIGSTORE_UNREACHABLE', `keyless signing failed: ${(err as Error).message} (${net})`, offline, ExitCode.network)
      return mk('KEYLESS_SIGN_FAILED', `keyless signing failed: ${(err as Error)?.message ?? String(err)}`, offline, ExitCode.network)
    }
  }
}

// -------------------------------------------------------------- verification

/** A trusted keyless identity: the certificate's OIDC issuer and subject (SAN), each exact or a regular expression. */
export interface KeylessIdentity {
  issuer?: string
  issuerRegExp?: string
  subject?: string
  subjectRegExp?: string
}

export interface LoadedTrustedRoot {
  path: string
  root: TrustedRoot
}

export interface KeylessTrust {
  trustedRoot: LoadedTrustedRoot
  identities: KeylessIdentity[]
}

/** What a keyless signature was made by, once verified. */
export interface KeylessSigner {
  issuer: string
  subject: string
  /** When the transparency log recorded the signature (the time the certificate was checked at). */
  integratedTime: string
  logIndex: string
  certificateNotAfter: string
}

function rootError(path: string, message: string, hint: string): AbortError {
  return new AbortError({code: 'TRUSTED_ROOT_INVALID', message: `trusted root ${path}: ${message}`, hint, exitCode: ExitCode.invalid, ref: path})
}

/**
 * Read a Sigstore trusted root (trusted_root.json, TrustedRoot v0.1+): the
 * Fulcio CAs, Rekor logs and CT logs that keyless signatures are checked against.
 */
export async function loadTrustedRoot(path: string): Promise<LoadedTrustedRoot> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw fileError(err, path, 'trusted root')
  }
  const doc = parseJsonText(text, path) as Record<string, unknown>
  const hint = 'Use a Sigstore trusted_root.json (for the public-good instance, the one cosign keeps at ~/.sigstore/root/tuf-repo-cdn.sigstore.dev/targets/trusted_root.json after `cosign initialize`).'
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw rootError(path, 'not a JSON object', hint)
  if (typeof doc.mediaType !== 'string' || !doc.mediaType.startsWith(TRUSTED_ROOT_MEDIA_TYPE_PREFIX)) {
    throw rootError(path, `/mediaType is ${JSON.stringify(doc.mediaType)}, not ${TRUSTED_ROOT_MEDIA_TYPE_PREFIX}+json;version=…`, hint)
  }
  for (const field of ['tlogs', 'certificateAuthorities', 'ctlogs']) {
    if (doc[field] !== undefined && !Array.isArray(doc[field])) throw rootError(path, `/${field} is not an array`, hint)
  }
  let root: TrustedRoot
  try {
    root = TrustedRoot.fromJSON(doc)
  } catch (err) {
    throw rootError(path, (err as Error).message, hint)
  }
  if (root.certificateAuthorities.length === 0) throw rootError(path, '/certificateAuthorities is empty: no Fulcio CA to check certificates against', hint)
  if (root.tlogs.length === 0) throw rootError(path, '/tlogs is empty: no Rekor log to check the signature time against', hint)
  root.certificateAuthorities.forEach((ca, i) => {
    if (!ca.certChain?.certificates.length) throw rootError(path, `/certificateAuthorities/${i}/certChain has no certificates`, hint)
    ca.certChain.certificates.forEach((c, j) => {
      try {
        X509Certificate.parse(Buffer.from(c.rawBytes))
      } catch (err) {
        throw rootError(path, `/certificateAuthorities/${i}/certChain/certificates/${j} is not a DER certificate: ${(err as Error).message}`, hint)
      }
    })
  })
  ;[...root.tlogs.map((t, i) => [`tlogs/${i}`, t] as const), ...root.ctlogs.map((t, i) => [`ctlogs/${i}`, t] as const)].forEach(([at, t]) => {
    if (!t.publicKey?.rawBytes?.length) throw rootError(path, `/${at}/publicKey/rawBytes is missing`, hint)
    if (!t.logId?.keyId?.length) throw rootError(path, `/${at}/logId/keyId is missing`, hint)
  })
  return {path, root}
}

function anchored(re: string): RegExp {
  return new RegExp(`^(?:${re})$`)
}

/** Check a regular expression from a flag or a policy; a usage/invalid error naming where it came from. */
export function checkRegExp(re: string, at: string, exitCode: ExitCodeValue = ExitCode.invalid): void {
  try {
    anchored(re)
  } catch (err) {
    throw new AbortError({code: 'BAD_REGEXP', message: `${at}: ${JSON.stringify(re)} is not a valid regular expression: ${(err as Error).message}`, hint: 'Use JavaScript regular-expression syntax; it must match the whole value.', exitCode, ref: at})
  }
}

export function describeIdentity(id: KeylessIdentity): string {
  const s = id.subject !== undefined ? id.subject : `/${id.subjectRegExp}/`
  const i = id.issuer !== undefined ? id.issuer : `/${id.issuerRegExp}/`
  return `${s} (issuer ${i})`
}

/** Why `signer` does not match `id`, or undefined when it does. */
export function identityMismatch(id: KeylessIdentity, signer: {issuer: string; subject: string}): string | undefined {
  const issuerOk = id.issuer !== undefined ? signer.issuer === id.issuer : id.issuerRegExp !== undefined && anchored(id.issuerRegExp).test(signer.issuer)
  const subjectOk = id.subject !== undefined ? signer.subject === id.subject : id.subjectRegExp !== undefined && anchored(id.subjectRegExp).test(signer.subject)
  if (issuerOk && subjectOk) return undefined
  if (!subjectOk && !issuerOk) return `wrong identity and issuer: signed by ${signer.subject} (issuer ${signer.issuer}), expected ${describeIdentity(id)}`
  if (!subjectOk) return `wrong identity: signed by ${signer.subject}, expected ${id.subject ?? `/${id.subjectRegExp}/`}`
  return `wrong issuer: ${signer.subject} was certified for issuer ${signer.issuer}, expected ${id.issuer ?? `/${id.issuerRegExp}/`}`
}

/** The identity a bundle's leaf certificate names, without checking anything (for messages). */
export function certificateIdentity(bundle: Bundle): {issuer: string; subject: string; notAfter: Date; publicKey: KeyObject} | undefined {
  const vm = bundle.verificationMaterial.content
  const raw = vm.$case === 'certificate' ? vm.certificate.rawBytes : vm.$case === 'x509CertificateChain' ? vm.x509CertificateChain.certificates[0]?.rawBytes : undefined
  if (!raw) return undefined
  const cert = X509Certificate.parse(Buffer.from(raw))
  const v2 = cert.extension('1.3.6.1.4.1.57264.1.8')
  const issuer = v2 ? (v2.valueObj.subs[0]?.value.toString('utf8') ?? '') : (cert.extension('1.3.6.1.4.1.57264.1.1')?.value.toString('ascii') ?? '')
  return {issuer, subject: cert.subjectAltName ?? '', notAfter: cert.notAfter, publicKey: createPublicKey({key: cert.publicKey, format: 'der', type: 'spki'})}
}

export function spkiId(key: KeyObject): string {
  return createHash('sha256').update(key.export({type: 'spki', format: 'der'})).digest('hex')
}

function explain(err: Error & {code?: string; cause?: unknown}): {code: string; reason: string} {
  const inner = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  const msg = `${err.message}${inner}`
  switch (err.code) {
    case 'CERTIFICATE_ERROR':
      if (/expired|not valid/.test(msg)) return {code: 'CERTIFICATE_EXPIRED', reason: `the certificate was not valid when the transparency log recorded the signature (${msg})`}
      if (/SCT/.test(msg)) return {code: 'CERTIFICATE_UNTRUSTED', reason: `the certificate has no valid timestamp from a trusted certificate-transparency log (${msg})`}
      return {code: 'CERTIFICATE_UNTRUSTED', reason: `the certificate does not chain to a CA in the trusted root (${msg})`}
    case 'TIMESTAMP_ERROR':
      return {code: 'NO_TLOG_TIMESTAMP', reason: `no verifiable transparency-log timestamp, so the short-lived certificate cannot be checked (${msg})`}
    case 'TLOG_INCLUSION_PROMISE_ERROR':
    case 'TLOG_INCLUSION_PROOF_ERROR':
    case 'TLOG_MISSING_INCLUSION_ERROR':
      return {code: 'TLOG_INVALID', reason: `the transparency-log entry does not verify against a log in the trusted root (${msg})`}
    case 'TLOG_BODY_ERROR':
      return {code: 'TLOG_INVALID', reason: `the transparency-log entry is for another signature (${msg})`}
    case 'TLOG_ERROR':
      return {code: 'NO_TLOG_ENTRY', reason: `no transparency-log entry (${msg})`}
    case 'SIGNATURE_ERROR':
      return {code: 'SIGNATURE_INVALID', reason: 'the signature does not verify with the certificate\'s key (the statement or signature was altered)'}
    default:
      return {code: 'SIGNATURE_INVALID', reason: msg}
  }
}

/**
 * Verify a certificate-carrying bundle with the real @sigstore/verify against
 * the trusted root: the leaf chains to a trusted CA, carries a valid SCT
 * (where the root lists CT logs), a trusted Rekor log recorded the signature
 * (signed entry timestamp and/or inclusion proof) at a time the certificate
 * was valid, and the signature verifies. Then the certificate's identity must
 * match one of `identities`. Throws {code, reason} objects as errors.
 */
export function verifyKeylessBundle(bundle: Bundle, trust: KeylessTrust): KeylessSigner {
  const material = toTrustMaterial(trust.trustedRoot.root)
  const verifier = new Verifier(material, {tlogThreshold: 1, ctlogThreshold: trust.trustedRoot.root.ctlogs.length > 0 ? 1 : 0, timestampThreshold: 1})
  let signer: ReturnType<Verifier['verify']>
  try {
    signer = verifier.verify(toSignedEntity(bundle))
  } catch (err) {
    const e = explain(err as Error)
    throw Object.assign(new Error(e.reason), {code: e.code})
  }
  const who = {issuer: signer.identity?.extensions?.issuer ?? '', subject: signer.identity?.subjectAlternativeName ?? ''}
  const reasons: string[] = []
  for (const id of trust.identities) {
    const why = identityMismatch(id, who)
    if (!why) {
      const tlog = bundle.verificationMaterial.tlogEntries[0]
      const cert = certificateIdentity(bundle)
      return {
        ...who,
        integratedTime: tlog ? new Date(Number(tlog.integratedTime) * 1000).toISOString() : '',
        logIndex: tlog?.logIndex ?? '',
        certificateNotAfter: cert?.notAfter.toISOString() ?? '',
      }
    }
    reasons.push(why)
  }
  const code = reasons.every((r) => r.startsWith('wrong issuer')) ? 'WRONG_ISSUER' : 'WRONG_IDENTITY'
  throw Object.assign(new Error(reasons.length === 1 ? reasons[0] : `${who.subject} (issuer ${who.issuer}) matches none of the trusted identities: ${reasons.join('; ')}`), {code})
}
