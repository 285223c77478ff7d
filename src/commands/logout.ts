import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {CredentialStore} from '../oci/remote/credentials.js'

export default class Logout extends BaseCommand {
  static summary = 'Forget the stored credentials of a registry.'

  static examples = ['<%= config.bin %> logout registry.example.com']

  static args = {
    registry: Args.string({description: 'Registry host[:port].', required: true}),
  }

  static flags = {
    'registry-config': Flags.string({description: 'Credentials file (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json).', env: 'OVM_REGISTRY_CONFIG'}),
  }

  async run(): Promise<{registry: string; removed: boolean}> {
    const {args, flags} = await this.parse(Logout)
    const removed = await new CredentialStore(flags['registry-config']).erase(args.registry)
    if (!this.jsonEnabled()) this.log(removed ? `Logged out of ${args.registry}` : `No credentials were stored for ${args.registry}`)
    return {registry: args.registry, removed}
  }
}
