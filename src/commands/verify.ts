import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {loadPublicKey} from '../sign/keys.js'
import {parseReference} from '../oci/reference.js'
import {openRemote} from '../oci/remote/client.js'
import {type VerifyResult, localSource, remoteSource, verifyArtifact} from '../sign/sign.js'
import {registryFlags, registryOptions} from '../cli/registry.js'

export default class Verify extends BaseCommand {
  static summary = 'Verify an artifact offline: every blob matches its digest and a signature verifies with the key.'

  static description = 'Exits 10 when no signature verifies (none, wrong key, altered), 5 when a blob does not match its digest.'

  static examples = ['<%= config.bin %> verify example/busybox:1.0 --key ovm.pub', '<%= config.bin %> verify localhost:5000/example/busybox:1.0 --key ovm.pub']

  static args = {
    ref: Args.string({description: 'Artifact to verify.', required: true}),
  }

  static flags = {
    key: Flags.string({description: 'Trusted public key (PEM); repeatable.', multiple: true, multipleNonGreedy: true, required: true}),
    ...registryFlags,
  }

  async run(): Promise<VerifyResult> {
    const {args, flags} = await this.parse(Verify)
    const keys = await Promise.all(flags.key.map((k) => loadPublicKey(k)))
    const source =
      parseReference(args.ref).registry !== undefined
        ? remoteSource(openRemote(args.ref, registryOptions(flags)).repository, {checkBlobs: true})
        : localSource(this.openStore(flags.store))
    const result = await verifyArtifact(source, args.ref, keys)
    if (!this.jsonEnabled()) {
      this.log(`verified ${args.ref} (${result.digest}): ${result.blobsChecked} blobs intact`)
      for (const v of result.verified) this.log(`  signature ${v.signature} by key ${v.keyId.slice(0, 12)} (${v.predicateType})`)
      for (const r of result.rejected) this.log(`  rejected ${r.signature}: ${r.reason}`)
    }
    return result
  }
}
