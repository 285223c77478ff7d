import type {KeyObject} from 'node:crypto'

import {AbortError, ExitCode, isOvmError} from '../errors/index.js'
import {type Descriptor, type ImageManifest, isManifestMediaType} from '../oci/descriptor.js'
import type {LayoutStore} from '../oci/layout.js'
import {parseReference, repositoryName} from '../oci/reference.js'
import {localReferrers} from '../oci/remote/referrers.js'
import {EMPTY_BYTES, EMPTY_DESCRIPTOR, SigstoreMediaType, type VerifiedSignature, createSignature, localSigner, verifySignature} from './signature.js'

export interface SignResult {
  reference: string
  subject: string
  signature: string
  keyId: string
}

/** Sign an artifact in the local store; the signature becomes a referrer kept in index.json. */
export async function signLocal(store: LayoutStore, reference: string, key: {privateKey: KeyObject; publicKey: KeyObject}, opts: {created?: string} = {}): Promise<SignResult> {
  const subject = await store.resolve(reference)
  const name = subjectName(reference)
  const sig = await createSignature(subject, name, localSigner(key.privateKey, key.publicKey), opts)
  await store.push(EMPTY_DESCRIPTOR, EMPTY_BYTES)
  await store.push(sig.bundleDescriptor, sig.bundleBytes)
  await store.push(sig.descriptor, sig.manifestBytes)
  await store.addUntagged(sig.descriptor)
  return {reference, subject: subject.digest, signature: sig.descriptor.digest, keyId: verifySignature(sig.manifestBytes, sig.bundleBytes, subject.digest, key.publicKey, 'new signature').keyId}
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
 * Verify an artifact: every blob matches its digest, and at least one
 * signature referrer verifies with one of `keys`. Throws a policy error
 * (exit 10) with every reason when none does.
 */
export async function verifyArtifact(source: SignatureSource, reference: string, keys: KeyObject[]): Promise<VerifyResult> {
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
    let last: unknown
    let ok: VerifiedSignature | undefined
    for (const key of keys) {
      try {
        ok = verifySignature(manifestBytes, bundleBytes, desc.digest, key, s.digest)
        break
      } catch (err) {
        last = err
      }
    }
    if (ok) result.verified.push(ok)
    else result.rejected.push({signature: s.digest, code: isOvmError(last) ? last.code : 'SIGNATURE_INVALID', reason: (last as Error)?.message ?? 'no key'})
  }
  if (result.verified.length === 0) {
    const none = sigs.length === 0
    throw new AbortError({
      code: none ? 'NO_SIGNATURE' : 'SIGNATURE_INVALID',
      message: none
        ? `${reference} (${desc.digest}) has no signature`
        : `no signature of ${reference} (${desc.digest}) verifies with the given key${keys.length === 1 ? '' : 's'}`,
      hint: none ? 'Sign it with `ovm sign REF --key KEY`, or check that you name the artifact that was signed.' : 'Check that --key is the public half of the key that signed it.',
      exitCode: ExitCode.policy,
      ref: reference,
      details: result.rejected.map((r) => ({at: r.signature, message: r.reason})),
    })
  }
  return result
}
