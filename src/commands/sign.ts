import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {loadPrivateKey, passphraseFromEnv} from '../sign/keys.js'
import {DEFAULT_FULCIO_URL, DEFAULT_REKOR_URL, keylessConfig} from '../sign/keyless.js'
import {openRemote} from '../oci/remote/client.js'
import {parseReference} from '../oci/reference.js'
import {type SignResult, type SigningMethod, signArtifact} from '../sign/sign.js'
import {registryFlags, registryOptions} from '../cli/registry.js'

export default class Sign extends BaseCommand {
  static summary = 'Sign an artifact: a Sigstore bundle stored as an OCI referrer of it (the layout cosign 3 reads).'

  static description =
    'With --key, signs with a local key (offline). Without --key, signs keyless: an OIDC identity token (SIGSTORE_ID_TOKEN, or GitHub Actions\' ' +
    'ACTIONS_ID_TOKEN_REQUEST_URL + ACTIONS_ID_TOKEN_REQUEST_TOKEN, audience "sigstore") gets a short-lived certificate for that identity from Fulcio, ' +
    'and Rekor records the signature in its transparency log. Exits 2 when there is neither a key nor a token, 7 when the token is refused, 8 when Fulcio or Rekor cannot be reached.'

  static examples = [
    'OVM_KEY_PASSWORD=secret <%= config.bin %> sign example/busybox:1.0 --key ovm.key',
    'OVM_KEY_PASSWORD=secret <%= config.bin %> sign localhost:5000/example/busybox:1.0 --key ovm.key',
    '# in GitHub Actions with `permissions: id-token: write`:\n<%= config.bin %> sign ghcr.io/acme/vms/busybox:1.0',
    'SIGSTORE_ID_TOKEN=$(cat token.jwt) <%= config.bin %> sign example/busybox:1.0 --fulcio-url https://fulcio.example --rekor-url https://rekor.example',
  ]

  static args = {
    ref: Args.string({description: 'Artifact to sign.', required: true}),
  }

  static flags = {
    key: Flags.string({description: 'Private key (from `ovm key generate`). Without it, sign keyless.'}),
    'fulcio-url': Flags.string({description: `Fulcio for keyless signing (env SIGSTORE_FULCIO_URL; default ${DEFAULT_FULCIO_URL}).`}),
    'rekor-url': Flags.string({description: `Rekor for keyless signing (env SIGSTORE_REKOR_URL; default ${DEFAULT_REKOR_URL}).`}),
    ...registryFlags,
  }

  async run(): Promise<SignResult> {
    const {args, flags} = await this.parse(Sign)
    if (flags.key && (flags['fulcio-url'] || flags['rekor-url'])) {
      throw new AbortError({
        code: 'USAGE',
        message: '--fulcio-url and --rekor-url are for keyless signing; with --key nothing goes to Fulcio or Rekor',
        hint: 'Drop --key to sign keyless, or drop --fulcio-url/--rekor-url.',
        exitCode: ExitCode.usage,
      })
    }
    const how: SigningMethod = flags.key
      ? await loadPrivateKey(flags.key, passphraseFromEnv())
      : {keyless: keylessConfig({fulcioUrl: flags['fulcio-url'], rekorUrl: flags['rekor-url']})}
    const remote = parseReference(args.ref).registry !== undefined
    const target = remote ? openRemote(args.ref, registryOptions(flags)) : {store: this.openStore(flags.store)}
    const result = await signArtifact(target, args.ref, how)
    if (!this.jsonEnabled()) {
      if (result.keyless) {
        this.log(`signed ${args.ref} (${result.subject}) keyless as ${result.keyless.subject} (issuer ${result.keyless.issuer}): ${result.signature}`)
        this.log(`  certificate from ${result.keyless.fulcioURL}, valid until ${result.keyless.certificateNotAfter}; logged in ${result.keyless.rekorURL} at index ${result.keyless.logIndex}`)
      } else {
        this.log(`signed ${args.ref} (${result.subject}) with key ${result.keyId.slice(0, 12)}: ${result.signature}`)
      }
    }
    return result
  }
}
