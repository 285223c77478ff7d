import {sign as cryptoSign, type KeyObject} from 'node:crypto'

import {type Bundle, bundleFromJSON, bundleToJSON, isBundleWithDsseEnvelope} from '@sigstore/bundle'
import {DSSEBundleBuilder, type Signer, type Witness} from '@sigstore/sign'
import {Verifier, toSignedEntity, toTrustMaterial} from '@sigstore/verify'

import {AbortError, ExitCode} from '../errors/index.js'
import {Annotation, type Descriptor, type ImageManifest, MediaType, manifestDescriptor} from '../oci/descriptor.js'
import {sha256} from '../oci/digest.js'
import {keyId} from './keys.js'
import {type KeylessSigner, type KeylessTrust, certificateIdentity, spkiId, verifyKeylessBundle} from './keyless.js'

/** The layout cosign 3 uses for a signature stored as an OCI 1.1 referrer. */
export const SigstoreMediaType = {
  bundle: 'application/vnd.dev.sigstore.bundle.v0.3+json',
  inToto: 'application/vnd.in-toto+json',
} as const

export const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1'
export const IN_TOTO_STATEMENT = 'https://in-toto.io/Statement/v1'

/** The OCI empty descriptor (config of artifacts without one). */
export const EMPTY_DESCRIPTOR: Descriptor = {
  mediaType: MediaType.empty,
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
}
export const EMPTY_BYTES = Buffer.from('{}')

export interface InTotoStatement {
  _type: string
  subject: {name: string; digest: Record<string, string>}[]
  predicateType: string
  predicate: unknown
}

export interface SignatureArtifact {
  bundle: Bundle
  bundleBytes: Buffer
  bundleDescriptor: Descriptor
  manifest: ImageManifest
  manifestBytes: Buffer
  descriptor: Descriptor
}

/** A sigstore Signer over a local ECDSA P-256 key; the key hint is the SPKI sha256. */
export function localSigner(privateKey: KeyObject, publicKey: KeyObject): Signer {
  const pem = publicKey.export({type: 'spki', format: 'pem'}).toString()
  const hint = keyId(publicKey)
  return {
    sign: async (data: Buffer) => ({signature: cryptoSign('sha256', data, privateKey), key: {$case: 'publicKey', publicKey: pem, hint}}),
  }
}

/**
 * DSSE-sign an in-toto statement whose subject is `subject` and package the
 * bundle as a referrer manifest of `subject`.
 */
export async function createSignature(
  subject: Descriptor,
  subjectName: string,
  signer: Signer,
  opts: {predicateType?: string; predicate?: unknown; created?: string; witnesses?: Witness[]} = {},
): Promise<SignatureArtifact> {
  const statement: InTotoStatement = {
    _type: IN_TOTO_STATEMENT,
    subject: [{name: subjectName, digest: {sha256: subject.digest.slice('sha256:'.length)}}],
    predicateType: opts.predicateType ?? COSIGN_SIGN_PREDICATE,
    predicate: opts.predicate ?? {},
  }
  const builder = new DSSEBundleBuilder({signer, witnesses: opts.witnesses ?? []})
  const bundle = await builder.create({data: Buffer.from(JSON.stringify(statement)), type: SigstoreMediaType.inToto})
  const bundleBytes = Buffer.from(JSON.stringify(bundleToJSON(bundle)))
  const bundleDescriptor: Descriptor = {mediaType: SigstoreMediaType.bundle, digest: sha256(bundleBytes), size: bundleBytes.length}
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.imageManifest,
    artifactType: SigstoreMediaType.bundle,
    config: EMPTY_DESCRIPTOR,
    layers: [bundleDescriptor],
    subject: {mediaType: subject.mediaType, digest: subject.digest, size: subject.size},
    annotations: {
      'dev.sigstore.bundle.content': 'dsse-envelope',
      'dev.sigstore.bundle.predicateType': statement.predicateType,
      [Annotation.created]: opts.created ?? new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    },
  }
  const manifestBytes = Buffer.from(JSON.stringify(manifest))
  return {
    bundle,
    bundleBytes,
    bundleDescriptor,
    manifest,
    manifestBytes,
    descriptor: manifestDescriptor(manifestBytes, SigstoreMediaType.bundle, manifest.annotations),
  }
}

export interface VerifiedSignature {
  signature: string
  /** sha256 of the signing key's SPKI (for keyless: the certificate's ephemeral key). */
  keyId: string
  predicateType: string
  statement: InTotoStatement
  /** Set for keyless signatures: who the certificate names, and when the log recorded it. */
  identity?: KeylessSigner
}

/** What a signature may verify with: public keys, and/or keyless identities under a trusted root. */
export interface Trust {
  keys: KeyObject[]
  keyless?: KeylessTrust
}

function refused(code: string, message: string, hint: string, ref?: string): AbortError {
  return new AbortError({code, message, hint, exitCode: ExitCode.policy, ref})
}

/**
 * Check one signature referrer against a trusted public key: the manifest's
 * shape, the bundle, the DSSE signature, and that the statement's subject is
 * `subjectDigest`. Throws a policy error naming what failed.
 */
export function verifySignature(manifestBytes: Buffer, bundleBytes: Buffer, subjectDigest: string, publicKey: KeyObject, label: string): VerifiedSignature {
  return verifySignatureWith(manifestBytes, bundleBytes, subjectDigest, {keys: [publicKey]}, label)
}

/**
 * Check one signature referrer against what `trust` trusts: a bundle signed
 * with a key must verify with one of `trust.keys`; a bundle with a Fulcio
 * certificate must verify under `trust.keyless` (trusted root + identities).
 * Throws a policy error (exit 10) naming what failed.
 */
export function verifySignatureWith(manifestBytes: Buffer, bundleBytes: Buffer, subjectDigest: string, trust: Trust, label: string): VerifiedSignature {
  const bundle = parseSignatureBundle(manifestBytes, bundleBytes, subjectDigest, label)
  const material = bundle.verificationMaterial.content
  let keyIdHex: string
  let identity: KeylessSigner | undefined
  if (material.$case === 'publicKey') {
    if (trust.keys.length === 0) {
      throw refused(
        'KEY_NOT_TRUSTED',
        `${label}: signed with key ${material.publicKey.hint.slice(0, 12) || '(no hint)'}, but only keyless identities are trusted here`,
        'Verify with --key (or list the key in the policy\'s "keys").',
        label,
      )
    }
    let last: unknown
    keyIdHex = ''
    for (const key of trust.keys) {
      try {
        keyIdHex = verifyWithKey(bundle, key, label)
        last = undefined
        break
      } catch (err) {
        last = err
      }
    }
    if (last) throw last
  } else {
    const who = certificateIdentity(bundle)
    if (!trust.keyless) {
      throw refused(
        'KEYLESS_NOT_TRUSTED',
        `${label}: signed keyless by ${who?.subject ?? '?'} (issuer ${who?.issuer ?? '?'}), but only keys are trusted here`,
        'Verify with --certificate-identity and --certificate-oidc-issuer (or list the identity in the policy\'s "identities").',
        label,
      )
    }
    try {
      identity = verifyKeylessBundle(bundle, trust.keyless)
    } catch (err) {
      const code = (err as {code?: string}).code ?? 'SIGNATURE_INVALID'
      throw refused(code, `${label}: ${(err as Error).message}`, keylessHint(code, trust.keyless.trustedRoot.path), label)
    }
    keyIdHex = who ? spkiId(who.publicKey) : ''
  }
  const statement = checkStatement(bundle, subjectDigest, label)
  return {signature: label, keyId: keyIdHex, predicateType: statement.predicateType, statement, ...(identity ? {identity} : {})}
}

function keylessHint(code: string, rootPath: string): string {
  switch (code) {
    case 'WRONG_IDENTITY':
    case 'WRONG_ISSUER':
      return 'Check --certificate-identity / --certificate-oidc-issuer (or the policy\'s "identities") against who signed it.'
    case 'CERTIFICATE_UNTRUSTED':
      return `The certificate is not from a CA in ${rootPath}; check that the trusted root belongs to the Fulcio that signed it.`
    case 'CERTIFICATE_EXPIRED':
    case 'NO_TLOG_TIMESTAMP':
    case 'NO_TLOG_ENTRY':
    case 'TLOG_INVALID':
      return `A keyless signature needs a transparency-log entry from a log in ${rootPath}, recorded while its short-lived certificate was valid; re-sign it.`
    default:
      return 'The artifact or its signature was altered; re-sign it.'
  }
}

function parseSignatureBundle(manifestBytes: Buffer, bundleBytes: Buffer, subjectDigest: string, label: string): Bundle & {content: {$case: 'dsseEnvelope'}} {
  const manifest = JSON.parse(manifestBytes.toString('utf8')) as ImageManifest
  if (manifest.artifactType !== SigstoreMediaType.bundle || manifest.layers.length !== 1 || manifest.layers[0]?.mediaType !== SigstoreMediaType.bundle) {
    throw refused('BAD_SIGNATURE', `${label}: not a sigstore bundle referrer`, 'Re-sign the artifact with `ovm sign`.', label)
  }
  if (manifest.subject?.digest !== subjectDigest) {
    throw refused('SIGNATURE_SUBJECT_MISMATCH', `${label}: signs ${manifest.subject?.digest ?? 'nothing'}, not ${subjectDigest}`, 'The artifact changed after it was signed; sign the new digest.', label)
  }
  let bundle: Bundle
  try {
    bundle = bundleFromJSON(JSON.parse(bundleBytes.toString('utf8')))
  } catch (err) {
    throw refused('BAD_SIGNATURE', `${label}: the bundle is not a valid sigstore bundle: ${(err as Error).message}`, 'Re-sign the artifact with `ovm sign`.', label)
  }
  if (!isBundleWithDsseEnvelope(bundle)) {
    throw refused('BAD_SIGNATURE', `${label}: the bundle holds no DSSE envelope`, 'ovm signs in-toto statements in DSSE envelopes; re-sign with `ovm sign`.', label)
  }
  return bundle as Bundle & {content: {$case: 'dsseEnvelope'}}
}

/** Verify a key-signed bundle offline with @sigstore/verify; returns the key's id. */
function verifyWithKey(bundle: Bundle, publicKey: KeyObject, label: string): string {
  const hint = keyId(publicKey)
  const trust = toTrustMaterial(
    {
      mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
      tlogs: [],
      ctlogs: [],
      certificateAuthorities: [],
      timestampAuthorities: [],
    },
    () => ({
      publicKey,
      validFor: () => true,
    }),
  )
  try {
    new Verifier(trust, {tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0}).verify(toSignedEntity(bundle))
  } catch (err) {
    throw refused(
      'SIGNATURE_INVALID',
      `${label}: the signature does not verify with key ${hint.slice(0, 12)}: ${(err as Error).message}`,
      'The artifact was signed with another key, or the signature was altered. Check --key.',
      label,
    )
  }
  return hint
}

function checkStatement(bundle: Bundle & {content: {$case: 'dsseEnvelope'}}, subjectDigest: string, label: string): InTotoStatement {
  if (!isBundleWithDsseEnvelope(bundle)) throw refused('BAD_SIGNATURE', `${label}: the bundle holds no DSSE envelope`, 'Re-sign the artifact with `ovm sign`.', label)
  const env = bundle.content.dsseEnvelope
  let statement: InTotoStatement
  try {
    statement = JSON.parse(Buffer.from(env.payload).toString('utf8')) as InTotoStatement
  } catch {
    throw refused('BAD_SIGNATURE', `${label}: the envelope's payload is not JSON`, 'Re-sign the artifact with `ovm sign`.', label)
  }
  if (env.payloadType !== SigstoreMediaType.inToto || statement._type !== IN_TOTO_STATEMENT) {
    throw refused('BAD_SIGNATURE', `${label}: the envelope does not hold an in-toto statement`, 'Re-sign the artifact with `ovm sign`.', label)
  }
  const want = subjectDigest.slice('sha256:'.length)
  if (!statement.subject?.some((s) => s.digest?.sha256 === want)) {
    throw refused('SIGNATURE_SUBJECT_MISMATCH', `${label}: the signed statement is about another artifact, not ${subjectDigest}`, 'Sign this artifact with `ovm sign`.', label)
  }
  return statement
}
