import {spawn} from 'node:child_process'
import {chmod, mkdir, readFile} from 'node:fs/promises'
import {homedir} from 'node:os'
import {dirname, join} from 'node:path'

import {AbortError, ExitCode, isErrno} from '../../errors/index.js'
import {writeAtomic} from '../layout.js'

/**
 * Registry credentials in Docker's `config.json`, the file `docker login`,
 * `oras login` and `skopeo login --authfile` share: `auths[host]` (auth =
 * base64 user:pass, identitytoken, registrytoken), and the credential-helper
 * protocol (`credHelpers[host]`, else `credsStore`: `docker-credential-NAME
 * get|store|erase`, JSON over stdin/stdout).
 */

export interface Credential {
  username?: string
  password?: string
  /** A refresh token (OAuth2), exchanged at the token endpoint. */
  identityToken?: string
  /** A bearer token sent as is. */
  registryToken?: string
}

export type CredentialFunc = (registry: string) => Promise<Credential | undefined>

interface AuthEntry {
  auth?: string
  username?: string
  password?: string
  identitytoken?: string
  registrytoken?: string
}

interface DockerConfig {
  auths?: Record<string, AuthEntry>
  credHelpers?: Record<string, string>
  credsStore?: string
  [k: string]: unknown
}

const DOCKER_HUB_KEY = 'https://index.docker.io/v1/'

/** `$OVM_REGISTRY_CONFIG`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.OVM_REGISTRY_CONFIG) return env.OVM_REGISTRY_CONFIG
  if (env.DOCKER_CONFIG) return join(env.DOCKER_CONFIG, 'config.json')
  return join(homedir(), '.docker', 'config.json')
}

/** The key Docker uses for a registry host in config.json. */
export function configKey(registry: string): string {
  return ['docker.io', 'index.docker.io', 'registry-1.docker.io'].includes(registry) ? DOCKER_HUB_KEY : registry
}

/** `https://host:5000/v1/` → `host:5000`. */
function normaliseKey(key: string): string {
  if (key === DOCKER_HUB_KEY) return key
  return key.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '')
}

export class CredentialStore {
  constructor(
    readonly path: string = dockerConfigPath(),
    private readonly helperPrefix = 'docker-credential-',
  ) {}

  private async read(): Promise<DockerConfig> {
    try {
      const text = await readFile(this.path, 'utf8')
      return text.trim() === '' ? {} : (JSON.parse(text) as DockerConfig)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return {}
      throw new AbortError({
        code: 'REGISTRY_CONFIG_INVALID',
        message: `cannot read registry credentials from ${this.path}: ${(err as Error).message}`,
        hint: 'Fix or remove the file, then run `ovm login` again.',
        exitCode: ExitCode.invalid,
        ref: this.path,
        cause: err,
      })
    }
  }

  private helperFor(cfg: DockerConfig, key: string): string | undefined {
    return cfg.credHelpers?.[key] ?? cfg.credHelpers?.[normaliseKey(key)] ?? cfg.credsStore
  }

  async get(registry: string): Promise<Credential | undefined> {
    const key = configKey(registry)
    const cfg = await this.read()
    const helper = this.helperFor(cfg, key)
    if (helper) {
      const out = await this.runHelper(helper, 'get', key, true)
      if (out === undefined) return undefined
      const parsed = JSON.parse(out) as {Username?: string; Secret?: string}
      if (!parsed.Secret) return undefined
      return parsed.Username === '<token>' ? {identityToken: parsed.Secret} : {username: parsed.Username, password: parsed.Secret}
    }
    const entry = cfg.auths?.[key] ?? Object.entries(cfg.auths ?? {}).find(([k]) => normaliseKey(k) === key)?.[1]
    if (!entry) return undefined
    const cred: Credential = {}
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8')
      const colon = decoded.indexOf(':')
      if (colon > 0) {
        cred.username = decoded.slice(0, colon)
        cred.password = decoded.slice(colon + 1)
      }
    } else if (entry.username !== undefined) {
      cred.username = entry.username
      cred.password = entry.password
    }
    if (entry.identitytoken) cred.identityToken = entry.identitytoken
    if (entry.registrytoken) cred.registryToken = entry.registrytoken
    return Object.keys(cred).length === 0 ? undefined : cred
  }

  /** Where `store` will put the secret: a helper's name, or the file. */
  async destination(registry: string): Promise<string> {
    const helper = this.helperFor(await this.read(), configKey(registry))
    return helper ? `${this.helperPrefix}${helper}` : this.path
  }

  async store(registry: string, cred: Credential): Promise<void> {
    const key = configKey(registry)
    const cfg = await this.read()
    const helper = this.helperFor(cfg, key)
    if (helper) {
      const secret = cred.identityToken ?? cred.password ?? ''
      const username = cred.identityToken ? '<token>' : (cred.username ?? '')
      await this.runHelper(helper, 'store', JSON.stringify({ServerURL: key, Username: username, Secret: secret}), false)
      return
    }
    const entry: AuthEntry = {}
    if (cred.username !== undefined) entry.auth = Buffer.from(`${cred.username}:${cred.password ?? ''}`).toString('base64')
    if (cred.identityToken) entry.identitytoken = cred.identityToken
    cfg.auths = {...cfg.auths, [key]: entry}
    await this.write(cfg)
  }

  /** Remove stored credentials; false when there were none. */
  async erase(registry: string): Promise<boolean> {
    const key = configKey(registry)
    const cfg = await this.read()
    const helper = this.helperFor(cfg, key)
    if (helper) {
      const had = (await this.get(registry)) !== undefined
      if (had) await this.runHelper(helper, 'erase', key, false)
      return had
    }
    const keys = Object.keys(cfg.auths ?? {}).filter((k) => k === key || normaliseKey(k) === key)
    if (keys.length === 0) return false
    for (const k of keys) delete cfg.auths![k]
    await this.write(cfg)
    return true
  }

  private async write(cfg: DockerConfig): Promise<void> {
    await mkdir(dirname(this.path), {recursive: true, mode: 0o700})
    await writeAtomic(this.path, Buffer.from(`${JSON.stringify(cfg, null, '\t')}\n`))
    await chmod(this.path, 0o600)
  }

  /** Run a credential helper. For `get`, a "not found" answer is undefined. */
  private runHelper(helper: string, action: 'get' | 'store' | 'erase', input: string, tolerateNotFound: boolean): Promise<string | undefined> {
    const bin = `${this.helperPrefix}${helper}`
    return new Promise((resolve, reject) => {
      const child = spawn(bin, [action], {stdio: ['pipe', 'pipe', 'pipe']})
      let out = ''
      let errOut = ''
      child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')))
      child.stderr.on('data', (d: Buffer) => (errOut += d.toString('utf8')))
      child.on('error', (err) =>
        reject(
          new AbortError({
            code: 'CREDENTIAL_HELPER',
            message: `credential helper ${bin} could not be run: ${err.message}`,
            hint: `Install ${bin}, or remove "credsStore"/"credHelpers" from ${this.path}.`,
            exitCode: ExitCode.auth,
            ref: bin,
            cause: err,
          }),
        ),
      )
      child.on('close', (code) => {
        if (code === 0) return resolve(out)
        const msg = `${out}${errOut}`.trim()
        if (tolerateNotFound && /credentials not found|not found/i.test(msg)) return resolve(undefined)
        reject(
          new AbortError({
            code: 'CREDENTIAL_HELPER',
            message: `credential helper ${bin} ${action} failed (exit ${code}): ${msg || 'no output'}`,
            hint: `Check that ${bin} works: echo ${JSON.stringify(input.startsWith('{') ? 'HOST' : input)} | ${bin} get`,
            exitCode: ExitCode.auth,
            ref: bin,
          }),
        )
      })
      child.stdin.end(input)
    })
  }
}
