import type {KeyObject} from 'node:crypto'

import {AbortError, ExitCode, isOvmError} from '../errors/index.js'
import {type Descriptor, type ImageManifest, isManifestMediaType} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import {parseReference, repositoryName} from '../oci/reference.js'
import {type RemoteRepository, collect} from '../oci/remote/client.js'
import {listReferrers, localReferrers} from '../oci/remote/referrers.js'
import type {Storage} from '../oci/storage.js'
import {toSignedEntity} from '@sigstore/verify'

import {type KeylessConfig, certificateIdentity, keylessError, keylessSigning, spkiId} from './keyless.js'
import {EMPTY_BYTES, EMPTY_DESCRIPTOR, type SignatureArtifact, SigstoreMediaType, type Trust, type VerifiedSignature, createSignature, localSigner, verifySignature, verifySignatureWith} from './signature.js'

export interface SignResult {
  reference: string
  subject: string
  signature: string
  /** sha256 of the signing key's SPKI (keyless: the ephemeral key in the certificate). */
  keyId: string
  /** Keyless only: the identity Fulcio certified, and where Rekor logged the signature. */
  keyless?: {issuer: string; subject: string; certificateNotAfter: string; fulcioURL: string; rekorURL: string; logIndex: string; integratedTime: string}
}

/** How to sign: with a local key, or keyless through Fulcio and Rekor. */
export type SigningMethod = {privateKey: KeyObject; publicKey: KeyObject} | {keyless: KeylessConfig}

/**
 * Sign an artifact where it is (with `predicateType`/`predicate`, attach a
 * signed in-toto attestation such as SLSA provenance instead): in the local store (the signature is kept in
 * index.json, untagged) or in a registry repository (pushed with `subject`;
 * the client updates the referrers tag index where the registry has no API).
 */
export async function signArtifact(
  target: {store: LayoutStore} | {repository: RemoteRepository; part: string},
  reference: string,
  how: SigningMethod,
  opts: {created?: string; predicateType?: string; predicate?: unknown} = {},
): Promise<SignResult> {
  const dest: Storage = 'store' in target ? target.store : target.repository
  const subject = 'store' in target ? await target.store.resolve(reference) : await target.repository.resolve(target.part)
  let sig: SignatureArtifact
  let keyIdHex: string
  let keyless: SignResult['keyless']
  if ('keyless' in how) {
    const cfg = how.keyless
    const {signer, witnesses} = keylessSigning(cfg)
    try {
      sig = await createSignature(subject, subjectName(reference), signer, {...opts, witnesses})
    } catch (err) {
      throw keylessError(err, cfg)
    }
    const who = certificateIdentity(sig.bundle)
    const tlog = sig.bundle.verificationMaterial.tlogEntries[0]
    // The signature must verify with the certificate's key, and Rekor must have logged it.
    if (!who || !tlog || !toSignedEntity(sig.bundle).signature.verifySignature(who.publicKey)) {
      throw new AbortError({code: 'KEYLESS_SIGN_FAILED', message: 'keyless signing produced a bundle whose signature or log entry is missing or does not verify', hint: 'Check --fulcio-url and --rekor-url.', exitCode: ExitCode.network})
    }
    keyIdHex = spkiId(who.publicKey)
    keyless = {
      issuer: who.issuer,
      subject: who.subject,
      certificateNotAfter: who.notAfter.toISOString(),
      fulcioURL: cfg.fulcioURL,
      rekorURL: cfg.rekorURL,
      logIndex: tlog.logIndex,
      integratedTime: new Date(Number(tlog.integratedTime) * 1000).toISOString(),
    }
  } else {
    sig = await createSignature(subject, subjectName(reference), localSigner(how.privateKey, how.publicKey), opts)
    keyIdHex = verifySignature(sig.manifestBytes, sig.bundleBytes, subject.digest, how.publicKey, 'new signature').keyId
  }
  await dest.push(EMPTY_DESCRIPTOR, EMPTY_BYTES)
  await dest.push(sig.bundleDescriptor, sig.bundleBytes)
  await dest.push(sig.descriptor, sig.manifestBytes)
  if ('store' in target) await target.store.addUntagged(sig.descriptor)
  return {reference, subject: subject.digest, signature: sig.descriptor.digest, keyId: keyIdHex, ...(keyless ? {keyless} : {})}
}

export function subjectName(reference: string): string {
  try {
    return repositoryName(parseReference(reference))
  } catch {
    return reference
  }
}

export interface VerifyResult {
  reference: string
  digest: string
  verified: VerifiedSignature[]
  /** Signatures that did not verify, with why. */
  rejected: {signature: string; code: string; reason: string}[]
  blobsChecked: number
}

/** Where signatures and blobs are read from: the local store or a registry repository. */
export interface SignatureSource {
  resolve(reference: string): Promise<Descriptor>
  referrers(digest: string, artifactType: string): Promise<Descriptor[]>
  manifestBytes(desc: Descriptor): Promise<Buffer>
  blobBytes(desc: Descriptor): Promise<Buffer>
  /** Re-hash every blob the artifact holds (throws on a mismatch). Returns how many. */
  checkBlobs(desc: Descriptor): Promise<number>
}

export function localSource(store: LayoutStore): SignatureSource {
  return {
    resolve: (r) => store.resolve(r),
    referrers: (d, t) => localReferrers(store, d, t),
    manifestBytes: (d) => store.fetchBytes(d),
    blobBytes: (d) => store.fetchBytes(d),
    checkBlobs: async (desc) => {
      let n = 1
      const manifest = JSON.parse((await store.fetchBytes(desc)).toString('utf8')) as ImageManifest
      for (const b of [manifest.config, ...manifest.layers]) {
        const s = await store.fetch(b)
        for await (const _ of s) {
          // hashing happens in the stream; a mismatch throws here
        }
        n++
      }
      return n
    },
  }
}

/**
 * Signatures and blobs read from a registry. With `checkBlobs`, every blob is
 * downloaded and re-hashed (`ovm verify`); without, only the manifest and its
 * signatures are read (policy checks before a pull, which verifies blobs itself).
 */
export function remoteSource(repo: RemoteRepository, opts: {checkBlobs: boolean}): SignatureSource {
  const bytes = async (d: Descriptor): Promise<Buffer> => collect(await repo.fetch(d), d.size, 64 * 1024 * 1024)
  return {
    resolve: (r) => repo.resolve(r.includes('@') ? (r.split('@')[1] as string) : (parseReference(r).tag as string)),
    referrers: (d, t) => listReferrers(repo, d, t),
    manifestBytes: (d) => repo.fetchManifestBytes(d),
    blobBytes: bytes,
    checkBlobs: async (desc) => {
      if (!opts.checkBlobs) return 0
      const manifest = JSON.parse((await repo.fetchManifestBytes(desc)).toString('utf8')) as ImageManifest
      for (const b of [manifest.config, ...manifest.layers]) {
        for await (const _ of await repo.fetch(b)) {
          // the client's stream verifies digest and size
        }
      }
      return manifest.layers.length + 2
    },
  }
}

/**
 * Verify an artifact: every blob matches its digest, and at least one
 * signature referrer verifies with one of `keys`. Throws a policy error
 * (exit 10) with every reason when none does.
 */
export async function verifyArtifact(source: SignatureSource, reference: string, trustOrKeys: KeyObject[] | Trust): Promise<VerifyResult> {
  const trust: Trust = Array.isArray(trustOrKeys) ? {keys: trustOrKeys} : trustOrKeys
  const desc = await source.resolve(reference)
  if (!isManifestMediaType(desc.mediaType)) {
    throw new AbortError({code: 'UNKNOWN_MEDIA_TYPE', message: `${reference} is a ${desc.mediaType}, not a manifest`, hint: 'Verify a single artifact.', exitCode: ExitCode.invalid, ref: reference})
  }
  const blobsChecked = await source.checkBlobs(desc)
  const sigs = await source.referrers(desc.digest, SigstoreMediaType.bundle)
  const result: VerifyResult = {reference, digest: desc.digest, verified: [], rejected: [], blobsChecked}
  for (const s of sigs) {
    let manifestBytes: Buffer
    let bundleBytes: Buffer
    try {
      manifestBytes = await source.manifestBytes(s)
      const m = JSON.parse(manifestBytes.toString('utf8')) as ImageManifest
      const layer = m.layers?.[0]
      if (!layer) throw new Error('no bundle layer')
      bundleBytes = await source.blobBytes(layer)
    } catch (err) {
      result.rejected.push({signature: s.digest, code: isOvmError(err) ? err.code : 'BAD_SIGNATURE', reason: (err as Error).message})
      continue
    }
    try {
      result.verified.push(verifySignatureWith(manifestBytes, bundleBytes, desc.digest, trust, s.digest))
    } catch (err) {
      result.rejected.push({signature: s.digest, code: isOvmError(err) ? err.code : 'SIGNATURE_INVALID', reason: (err as Error)?.message ?? String(err)})
    }
  }
  if (result.verified.length === 0) {
    const none = sigs.length === 0
    throw new AbortError({
      code: none ? 'NO_SIGNATURE' : result.rejected.length === 1 ? (result.rejected[0]?.code ?? 'SIGNATURE_INVALID') : 'SIGNATURE_INVALID',
      message: none
        ? `${reference} (${desc.digest}) has no signature`
        : `no signature of ${reference} (${desc.digest}) verifies with ${trustedWhat(trust)}: ${result.rejected.map((r) => r.reason).join('; ')}`,
      hint: none
        ? 'Sign it with `ovm sign REF --key KEY` (or keyless), or check that you name the artifact that was signed.'
        : trust.keyless && trust.keys.length === 0
          ? 'Check the trusted identities and the trusted root against who signed it (`ovm discover REF` lists the signatures).'
          : 'Check that --key is the public half of the key that signed it, or that the identity is the one that signed it.',
      exitCode: ExitCode.policy,
      ref: reference,
      details: result.rejected.map((r) => ({at: r.signature, message: r.reason})),
    })
  }
  return result
}

function trustedWhat(trust: Trust): string {
  const parts: string[] = []
  if (trust.keys.length > 0) parts.push(trust.keys.length === 1 ? 'the given key' : `any of the ${trust.keys.length} given keys`)
  if (trust.keyless) parts.push(trust.keyless.identities.length === 1 ? 'the trusted identity' : `any of the ${trust.keyless.identities.length} trusted identities`)
  return parts.join(' or ') || 'nothing trusted'
}
