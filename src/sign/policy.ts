import type {KeyObject} from 'node:crypto'
import {createPublicKey} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import {dirname, join, resolve} from 'node:path'

import {invalidManifestError, parseJsonText, validateAgainst} from '../artifact/validate.js'
import {AbortError, ExitCode, fileError, isErrno} from '../errors/index.js'
import type {ImageManifest} from '../oci/descriptor.js'
import {parseReference, repositoryName} from '../oci/reference.js'
import {loadPublicKey} from './keys.js'
import {type SignatureSource, type VerifyResult, verifyArtifact} from './sign.js'

export interface Requirement {
  require?: 'signature' | 'none'
  keys?: string[]
  identities?: {issuer: string; subject: string}[]
  requireSignedSnapshots?: boolean
}

export interface Policy {
  version: 1
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
    const e = invalidManifestError(path, problems, 'trust policy')
    throw new AbortError({code: 'POLICY_INVALID', message: e.message, hint: 'Fix the policy file; schemas/policy.v1.json documents it.', exitCode: ExitCode.invalid, ref: path, details: e.details})
  }
  return {path, policy: doc as Policy}
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
  if (keys.length === 0) {
    throw new AbortError({
      code: 'POLICY_NO_KEYS',
      message: `policy ${loaded.path} (${rule}) requires a signature for ${reference} but names no keys${requirement.identities?.length ? '; keyless identities need the Sigstore trusted root, which this ovm cannot verify offline' : ''}`,
      hint: 'Add the signer\'s public key to the rule\'s "keys".',
      exitCode: ExitCode.policy,
      ref: loaded.path,
    })
  }
  try {
    return {reference, rule, required, verified: await verifyArtifact(source, reference, keys)}
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
