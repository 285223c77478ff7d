import {sign as cryptoSign, type KeyObject} from 'node:crypto'

import {type Bundle, bundleFromJSON, bundleToJSON, isBundleWithDsseEnvelope} from '@sigstore/bundle'
import {DSSEBundleBuilder, type Signer} from '@sigstore/sign'
import {Verifier, toSignedEntity, toTrustMaterial} from '@sigstore/verify'

import {AbortError, ExitCode} from '../errors/index.js'
import {Annotation, type Descriptor, type ImageManifest, MediaType, manifestDescriptor} from '../oci/descriptor.js'
import {sha256} from '../oci/digest.js'
import {keyId} from './keys.js'

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
  opts: {predicateType?: string; predicate?: unknown; created?: string} = {},
): Promise<SignatureArtifact> {
  const statement: InTotoStatement = {
    _type: IN_TOTO_STATEMENT,
    subject: [{name: subjectName, digest: {sha256: subject.digest.slice('sha256:'.length)}}],
    predicateType: opts.predicateType ?? COSIGN_SIGN_PREDICATE,
    predicate: opts.predicate ?? {},
  }
  const builder = new DSSEBundleBuilder({signer, witnesses: []})
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
  keyId: string
  predicateType: string
  statement: InTotoStatement
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
  const env = bundle.content.dsseEnvelope
  const statement = JSON.parse(Buffer.from(env.payload).toString('utf8')) as InTotoStatement
  if (env.payloadType !== SigstoreMediaType.inToto || statement._type !== IN_TOTO_STATEMENT) {
    throw refused('BAD_SIGNATURE', `${label}: the envelope does not hold an in-toto statement`, 'Re-sign the artifact with `ovm sign`.', label)
  }
  const want = subjectDigest.slice('sha256:'.length)
  if (!statement.subject?.some((s) => s.digest?.sha256 === want)) {
    throw refused('SIGNATURE_SUBJECT_MISMATCH', `${label}: the signed statement is about another artifact, not ${subjectDigest}`, 'Sign this artifact with `ovm sign`.', label)
  }
  return {signature: label, keyId: hint, predicateType: statement.predicateType, statement}
}

