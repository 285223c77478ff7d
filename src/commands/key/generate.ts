import {Flags} from '@oclif/core'

import {BaseCommand} from '../../cli/base-command.js'
import {type KeyPairFiles, generateKeyPair, passphraseFromEnv} from '../../sign/keys.js'

export default class KeyGenerate extends BaseCommand {
  static summary = 'Make an ECDSA P-256 key pair for signing artifacts.'

  static description =
    'Writes PREFIX.key (PKCS#8 PEM, encrypted with the passphrase in OVM_KEY_PASSWORD; mode 0600) and PREFIX.pub (PEM). ' +
    'An empty OVM_KEY_PASSWORD writes an unencrypted key.'

  static examples = ['OVM_KEY_PASSWORD=secret <%= config.bin %> key generate --out ovm']

  static flags = {
    out: Flags.string({description: 'File prefix: writes PREFIX.key and PREFIX.pub.', default: 'ovm'}),
  }

  async run(): Promise<KeyPairFiles> {
    const {flags} = await this.parse(KeyGenerate)
    const files = await generateKeyPair(flags.out, passphraseFromEnv())
    if (!this.jsonEnabled()) {
      this.log(`private key: ${files.privateKey}`)
      this.log(`public key:  ${files.publicKey}`)
      this.log(`key id:      ${files.keyId}`)
    }
    return files
  }
}
