import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {loadPublicKey} from '../sign/keys.js'
import {type KeylessIdentity, checkRegExp, loadTrustedRoot} from '../sign/keyless.js'
import {parseReference} from '../oci/reference.js'
import {openRemote} from '../oci/remote/client.js'
import type {Trust} from '../sign/signature.js'
import {type VerifyResult, localSource, remoteSource, verifyArtifact} from '../sign/sign.js'
import {registryFlags, registryOptions} from '../cli/registry.js'
import {join} from 'node:path'

export default class Verify extends BaseCommand {
  static summary = 'Verify an artifact offline: every blob matches its digest and a signature verifies with the key or keyless identity.'

  static description =
    'With --key, a signature must verify with that public key. With --certificate-identity[-regexp] and --certificate-oidc-issuer[-regexp], a keyless signature ' +
    'must carry a certificate from a CA in the Sigstore trusted root (--trusted-root, default $OVM_HOME/trusted_root.json), be recorded by a transparency log in that root ' +
    'while the certificate was valid, and name that identity and issuer (regular expressions must match the whole value). ' +
    'Exits 10 when no signature verifies (none, wrong key or identity, untrusted or expired certificate, altered), 5 when a blob does not match its digest.'

  static examples = [
    '<%= config.bin %> verify example/busybox:1.0 --key ovm.pub',
    '<%= config.bin %> verify localhost:5000/example/busybox:1.0 --key ovm.pub',
    '<%= config.bin %> verify ghcr.io/acme/vms/busybox:1.0 --certificate-identity https://github.com/acme/vms/.github/workflows/release.yml@refs/heads/main --certificate-oidc-issuer https://token.actions.githubusercontent.com --trusted-root trusted_root.json',
  ]

  static args = {
    ref: Args.string({description: 'Artifact to verify.', required: true}),
  }

  static flags = {
    key: Flags.string({description: 'Trusted public key (PEM); repeatable.', multiple: true, multipleNonGreedy: true}),
    'certificate-identity': Flags.string({description: 'Keyless: the exact certificate identity (SAN: workflow URI or email) to trust.', exclusive: ['certificate-identity-regexp']}),
    'certificate-identity-regexp': Flags.string({description: 'Keyless: a regular expression the whole certificate identity must match.'}),
    'certificate-oidc-issuer': Flags.string({description: 'Keyless: the exact OIDC issuer to trust.', exclusive: ['certificate-oidc-issuer-regexp']}),
    'certificate-oidc-issuer-regexp': Flags.string({description: 'Keyless: a regular expression the whole OIDC issuer must match.'}),
    'trusted-root': Flags.string({description: 'Keyless: Sigstore trusted_root.json (Fulcio CAs, Rekor and CT logs). Default: $OVM_HOME/trusted_root.json.'}),
    ...registryFlags,
  }

  async run(): Promise<VerifyResult> {
    const {args, flags} = await this.parse(Verify)
    const keys = await Promise.all((flags.key ?? []).map((k) => loadPublicKey(k)))
    const subject = flags['certificate-identity'] ?? flags['certificate-identity-regexp']
    const issuer = flags['certificate-oidc-issuer'] ?? flags['certificate-oidc-issuer-regexp']
    if (keys.length === 0 && subject === undefined && issuer === undefined) {
      throw new AbortError({
        code: 'NOTHING_TRUSTED',
        message: 'nothing to verify against: pass --key, or --certificate-identity and --certificate-oidc-issuer for a keyless signature',
        hint: 'e.g. `ovm verify REF --key ovm.pub`, or `ovm verify REF --certificate-identity https://github.com/OWNER/REPO/.github/workflows/release.yml@refs/heads/main --certificate-oidc-issuer https://token.actions.githubusercontent.com`.',
        exitCode: ExitCode.usage,
      })
    }
    if ((subject === undefined) !== (issuer === undefined)) {
      throw new AbortError({
        code: 'INCOMPLETE_IDENTITY',
        message: subject === undefined ? '--certificate-oidc-issuer needs --certificate-identity (or -regexp) too' : '--certificate-identity needs --certificate-oidc-issuer (or -regexp) too',
        hint: 'A keyless identity is both who (the certificate identity) and who vouched for it (the OIDC issuer), as in cosign.',
        exitCode: ExitCode.usage,
      })
    }
    if (flags['trusted-root'] && subject === undefined) {
      throw new AbortError({code: 'USAGE', message: '--trusted-root is only used with --certificate-identity/--certificate-oidc-issuer', hint: 'Add the keyless identity to check, or drop --trusted-root.', exitCode: ExitCode.usage})
    }
    const trust: Trust = {keys}
    if (subject !== undefined && issuer !== undefined) {
      const id: KeylessIdentity = {}
      if (flags['certificate-identity'] !== undefined) id.subject = flags['certificate-identity']
      else checkRegExp((id.subjectRegExp = subject), '--certificate-identity-regexp', ExitCode.usage)
      if (flags['certificate-oidc-issuer'] !== undefined) id.issuer = flags['certificate-oidc-issuer']
      else checkRegExp((id.issuerRegExp = issuer), '--certificate-oidc-issuer-regexp', ExitCode.usage)
      const store = this.openStore(flags.store)
      trust.keyless = {trustedRoot: await loadTrustedRoot(flags['trusted-root'] ?? join(store.root, 'trusted_root.json')), identities: [id]}
    }
    const source =
      parseReference(args.ref).registry !== undefined
        ? remoteSource(openRemote(args.ref, registryOptions(flags)).repository, {checkBlobs: true})
        : localSource(this.openStore(flags.store))
    const result = await verifyArtifact(source, args.ref, trust)
    if (!this.jsonEnabled()) {
      this.log(`verified ${args.ref} (${result.digest}): ${result.blobsChecked} blobs intact`)
      for (const v of result.verified) {
        if (v.identity) this.log(`  signature ${v.signature} keyless by ${v.identity.subject} (issuer ${v.identity.issuer}), logged ${v.identity.integratedTime} (${v.predicateType})`)
        else this.log(`  signature ${v.signature} by key ${v.keyId.slice(0, 12)} (${v.predicateType})`)
      }
      for (const r of result.rejected) this.log(`  rejected ${r.signature}: ${r.reason}`)
    }
    return result
  }
}
