import type {KeyObject} from 'node:crypto'
import {createPublicKey} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import {dirname, join, resolve} from 'node:path'

import {invalidManifestError, parseJsonText, validateAgainst} from '../artifact/validate.js'
import {AbortError, ExitCode, fileError, isErrno} from '../errors/index.js'
import type {ImageManifest} from '../oci/descriptor.js'
import {parseReference, repositoryName} from '../oci/reference.js'
import {loadPublicKey} from './keys.js'
import {type KeylessIdentity, type KeylessTrust, checkRegExp, loadTrustedRoot} from './keyless.js'
import {type SignatureSource, type VerifyResult, verifyArtifact} from './sign.js'

export interface Requirement {
  require?: 'signature' | 'none'
  keys?: string[]
  /** Keyless identities: issuer or issuerRegExp, and subject or subjectRegExp. */
  identities?: KeylessIdentity[]
  /** trusted_root.json for `identities` (relative to the policy file). */
  trustedRoot?: string
  requireSignedSnapshots?: boolean
}

export interface Policy {
  version: 1
  /** trusted_root.json for every rule's `identities` unless the rule names its own. */
  trustedRoot?: string
  default?: Requirement
  rules?: (Requirement & {match: string})[]
}

export interface LoadedPolicy {
  path: string
  policy: Policy
}

export function policyPath(storeRoot: string): string {
  return join(storeRoot, 'policy.json')
}

/** Read and validate the policy; undefined when there is none (everything is accepted). */
export async function loadPolicy(path: string): Promise<LoadedPolicy | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined
    throw fileError(err, path, 'policy file')
  }
  const doc = parseJsonText(text, path)
  const problems = validateAgainst('policy.v1', doc)
  if (problems.length > 0) {
    for (const pr of problems) {
      // The schema's `not` (exact and regexp forms together) says only "must NOT be valid".
      if (pr.keyword === 'not' && /\/identities\/\d+$/.test(pr.pointer)) {
        pr.message = 'names both the exact and the regexp form of a field'
        pr.hint = 'Give issuer or issuerRegExp, and subject or subjectRegExp: one of each pair.'
      }
    }
    const e = invalidManifestError(path, problems, 'trust policy')
    throw new AbortError({code: 'POLICY_INVALID', message: e.message, hint: 'Fix the policy file; schemas/policy.v1.json documents it.', exitCode: ExitCode.invalid, ref: path, details: e.details})
  }
  const policy = doc as Policy
  const reqs: [string, Requirement][] = [...(policy.default ? [['/default', policy.default] as [string, Requirement]] : []), ...(policy.rules ?? []).map((r, i) => [`/rules/${i}`, r] as [string, Requirement])]
  for (const [at, req] of reqs) {
    ;(req.identities ?? []).forEach((id, j) => {
      if (id.issuerRegExp !== undefined) checkRegExp(id.issuerRegExp, `${path}: ${at}/identities/${j}/issuerRegExp`)
      if (id.subjectRegExp !== undefined) checkRegExp(id.subjectRegExp, `${path}: ${at}/identities/${j}/subjectRegExp`)
    })
  }
  return {path, policy}
}

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`)
}

/** The requirement for a reference: the most specific matching rule, else the default. */
export function requirementFor(policy: Policy, reference: string): {requirement: Requirement; rule: string} {
  const repo = repositoryName(parseReference(reference))
  let best: (Requirement & {match: string}) | undefined
  for (const r of policy.rules ?? []) {
    if (globToRegExp(r.match).test(repo) && (!best || r.match.replace(/\*/g, '').length > best.match.replace(/\*/g, '').length)) best = r
  }
  return best ? {requirement: best, rule: `rules[match=${best.match}]`} : {requirement: policy.default ?? {}, rule: 'default'}
}

async function keysOf(req: Requirement, policyFile: string): Promise<KeyObject[]> {
  const out: KeyObject[] = []
  for (const k of req.keys ?? []) {
    if (k.includes('-----BEGIN')) out.push(createPublicKey(k))
    else out.push(await loadPublicKey(resolve(dirname(policyFile), k)))
  }
  return out
}

export interface PolicyDecision {
  reference: string
  rule: string
  required: boolean
  verified?: VerifyResult
}

/**
 * Enforce the policy for an artifact before it is unpacked or booted. Throws a
 * policy error (exit 10) with the reason when the artifact is refused.
 */
export async function enforcePolicy(source: SignatureSource, reference: string, loaded: LoadedPolicy | undefined): Promise<PolicyDecision> {
  if (!loaded) return {reference, rule: 'none (no policy file)', required: false}
  const {requirement, rule} = requirementFor(loaded.policy, reference)
  let required = requirement.require === 'signature'
  if (!required && requirement.requireSignedSnapshots) {
    const desc = await source.resolve(reference)
    const manifest = JSON.parse((await source.manifestBytes(desc)).toString('utf8')) as ImageManifest
    const cfg = JSON.parse((await source.blobBytes(manifest.config)).toString('utf8')) as {ramSnapshot?: unknown}
    required = Boolean(cfg.ramSnapshot)
  }
  if (!required) return {reference, rule, required}
  const keys = await keysOf(requirement, loaded.path)
  const identities = requirement.identities ?? []
  if (keys.length === 0 && identities.length === 0) {
    throw new AbortError({
      code: 'POLICY_NO_KEYS',
      message: `policy ${loaded.path} (${rule}) requires a signature for ${reference} but names no keys and no keyless identities`,
      hint: 'Add the signer\'s public key to the rule\'s "keys", or its keyless identity to "identities".',
      exitCode: ExitCode.policy,
      ref: loaded.path,
    })
  }
  const keyless = identities.length > 0 ? await keylessTrustFor(requirement, loaded) : undefined
  try {
    return {reference, rule, required, verified: await verifyArtifact(source, reference, {keys, ...(keyless ? {keyless} : {})})}
  } catch (err) {
    if (err instanceof AbortError && err.exitCode === ExitCode.policy) {
      throw new AbortError({
        code: err.code,
        message: `refused by policy ${loaded.path} (${rule}): ${err.message}`,
        hint: err.hint,
        exitCode: ExitCode.policy,
        ref: reference,
        details: err.details,
      })
    }
    throw err
  }
}

/**
 * The trusted root for a rule's keyless identities: the rule's `trustedRoot`,
 * else the policy's, else trusted_root.json beside the policy file
 * ($OVM_HOME/trusted_root.json). Paths are relative to the policy file.
 */
async function keylessTrustFor(req: Requirement, loaded: LoadedPolicy): Promise<KeylessTrust> {
  const named = req.trustedRoot ?? loaded.policy.trustedRoot
  const path = resolve(dirname(loaded.path), named ?? 'trusted_root.json')
  try {
    return {trustedRoot: await loadTrustedRoot(path), identities: req.identities ?? []}
  } catch (err) {
    if (named === undefined && err instanceof AbortError && err.exitCode === ExitCode.notFound) {
      throw new AbortError({
        code: 'NO_TRUSTED_ROOT',
        message: `policy ${loaded.path} trusts keyless identities, but there is no Sigstore trusted root to check them against (no "trustedRoot" in the policy, and no ${path})`,
        hint:
          'ovm bundles no trusted root (it cannot fetch the public-good one through TUF offline). Set "trustedRoot" in the policy, or copy one to ' +
          `${path}: for the public-good instance, cosign keeps it at ~/.sigstore/root/tuf-repo-cdn.sigstore.dev/targets/trusted_root.json after \`cosign initialize\`.`,
        exitCode: ExitCode.policy,
        ref: loaded.path,
      })
    }
    throw err
  }
}

/** One line on what satisfied the policy: the key, or the keyless identity. */
export function describeVerified(v: VerifyResult): string {
  const s = v.verified[0]
  if (!s) return 'no signature verified'
  return s.identity ? `keyless signature by ${s.identity.subject} (issuer ${s.identity.issuer}) verified` : `signature by key ${s.keyId.slice(0, 12)} verified`
}
