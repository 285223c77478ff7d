import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {Registry} from '../oci/remote/client.js'
import {CredentialStore, type Credential} from '../oci/remote/credentials.js'

export default class Login extends BaseCommand {
  static summary = 'Log in to a registry: check the credentials, then store them.'

  static description =
    'Credentials go where Docker, ORAS and skopeo look for them: a credential helper when config.json names one (credHelpers, credsStore), ' +
    'else the auths section of $DOCKER_CONFIG/config.json (or ~/.docker/config.json, or --registry-config).'

  static examples = [
    '<%= config.bin %> login registry.example.com -u alice --password-stdin < token.txt',
    '<%= config.bin %> login localhost:5000 -u ci -p secret',
  ]

  static args = {
    registry: Args.string({description: 'Registry host[:port].', required: true}),
  }

  static flags = {
    username: Flags.string({char: 'u', description: 'User name.', required: true}),
    password: Flags.string({char: 'p', description: 'Password or token (prefer --password-stdin).', exclusive: ['password-stdin']}),
    'password-stdin': Flags.boolean({description: 'Read the password from standard input.', default: false}),
    'identity-token': Flags.boolean({description: 'The password is an OAuth2 refresh (identity) token.', default: false}),
    'plain-http': Flags.boolean({description: 'Use plain HTTP, not TLS (always on for localhost and 127.0.0.1).', default: false}),
    'registry-config': Flags.string({description: 'Credentials file (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json).', env: 'OVM_REGISTRY_CONFIG'}),
  }

  async run(): Promise<{registry: string; username: string; storedIn: string}> {
    const {args, flags} = await this.parse(Login)
    let password = flags.password
    if (flags['password-stdin']) password = (await readStdin()).replace(/\r?\n$/, '')
    if (!password) {
      throw new AbortError({
        code: 'USAGE',
        message: 'no password given',
        hint: 'Pass --password-stdin and pipe the password in, or -p PASSWORD.',
        exitCode: ExitCode.usage,
        ref: args.registry,
      })
    }
    const cred: Credential = flags['identity-token'] ? {identityToken: password} : {username: flags.username, password}
    const registry = new Registry(args.registry, {plainHttp: flags['plain-http'], credentials: async () => cred})
    await registry.ping()
    const store = new CredentialStore(flags['registry-config'])
    await store.store(args.registry, cred)
    const storedIn = await store.destination(args.registry)
    if (!this.jsonEnabled()) this.log(`Login succeeded: ${flags.username}@${args.registry} (stored in ${storedIn})`)
    return {registry: args.registry, username: flags.username, storedIn}
  }
}

async function readStdin(): Promise<string> {
  const parts: Buffer[] = []
  for await (const c of process.stdin as AsyncIterable<Buffer>) parts.push(c)
  return Buffer.concat(parts).toString('utf8')
}
