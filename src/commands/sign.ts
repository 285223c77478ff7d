import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {loadPrivateKey, passphraseFromEnv} from '../sign/keys.js'
import {openRemote} from '../oci/remote/client.js'
import {parseReference} from '../oci/reference.js'
import {type SignResult, signArtifact} from '../sign/sign.js'
import {registryFlags, registryOptions} from '../cli/registry.js'

export default class Sign extends BaseCommand {
  static summary = 'Sign an artifact: a Sigstore bundle stored as an OCI referrer of it (the layout cosign 3 reads).'

  static examples = [
    'OVM_KEY_PASSWORD=secret <%= config.bin %> sign example/busybox:1.0 --key ovm.key',
    'OVM_KEY_PASSWORD=secret <%= config.bin %> sign localhost:5000/example/busybox:1.0 --key ovm.key',
  ]

  static args = {
    ref: Args.string({description: 'Artifact to sign.', required: true}),
  }

  static flags = {
    key: Flags.string({description: 'Private key (from `ovm key generate`).'}),
    ...registryFlags,
  }

  async run(): Promise<SignResult> {
    const {args, flags} = await this.parse(Sign)
    if (!flags.key) {
      const oidc = process.env.ACTIONS_ID_TOKEN_REQUEST_URL || process.env.SIGSTORE_ID_TOKEN
      throw new AbortError({
        code: oidc ? 'KEYLESS_UNAVAILABLE' : 'NO_KEY',
        message: oidc
          ? 'keyless signing needs Fulcio and Rekor (network), which this ovm cannot reach'
          : 'no signing key: pass --key, or run where an OIDC token is available for keyless signing',
        hint: 'Sign with a local key: `ovm key generate`, then `ovm sign REF --key ovm.key`.',
        exitCode: ExitCode.usage,
      })
    }
    const key = await loadPrivateKey(flags.key, passphraseFromEnv())
    const remote = parseReference(args.ref).registry !== undefined
    const target = remote ? openRemote(args.ref, registryOptions(flags)) : {store: this.openStore(flags.store)}
    const result = await signArtifact(target, args.ref, key)
    if (!this.jsonEnabled()) this.log(`signed ${args.ref} (${result.subject}) with key ${result.keyId.slice(0, 12)}: ${result.signature}`)
    return result
  }
}
