import {AbortError, ExitCode} from '../../errors/index.js'
import type {Credential, CredentialFunc} from './credentials.js'
import {type Transport, discard, readBody} from './http.js'

/**
 * Registry auth after oras-go's auth.Client: anonymous until a 401, then
 * the `WWW-Authenticate` challenge decides. `Basic`: send the stored
 * user:password. `Bearer realm,service,scope`: get a token from the realm
 * (GET with Basic credentials, or a form POST with a refresh token) for the
 * merged scopes, cache it per host and scope set, resend. Once a host's
 * scheme is known, later requests authenticate up front.
 */

export interface Challenge {
  scheme: string
  params: Record<string, string>
}

/** Parse `Bearer realm="…",service="…",scope="a b"` (quoted strings may hold commas). */
export function parseChallenge(value: string | undefined): Challenge | undefined {
  if (!value) return undefined
  const m = /^\s*([A-Za-z][A-Za-z0-9._~+/-]*)\s*(.*)$/s.exec(value)
  if (!m) return undefined
  const params: Record<string, string> = {}
  const re = /([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g
  let p: RegExpExecArray | null
  while ((p = re.exec(m[2] ?? '')) !== null) {
    if (p[0] === '') break
    params[(p[1] as string).toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '')
  }
  return {scheme: (m[1] as string).toLowerCase(), params}
}

export function repositoryScope(repository: string, actions: string[]): string {
  return `repository:${repository}:${actions.join(',')}`
}

/** Merge scopes: `repository:a:pull` + `repository:a:push` → `repository:a:pull,push`. */
export function mergeScopes(scopes: string[]): string[] {
  const byResource = new Map<string, Set<string>>()
  const other: string[] = []
  for (const s of scopes) {
    for (const one of s.split(' ').filter(Boolean)) {
      const i = one.lastIndexOf(':')
      if (i <= 0) {
        other.push(one)
        continue
      }
      const res = one.slice(0, i)
      const set = byResource.get(res) ?? new Set<string>()
      for (const a of one.slice(i + 1).split(',')) if (a) set.add(a)
      byResource.set(res, set)
    }
  }
  const out = [...byResource].map(([res, acts]) => `${res}:${[...acts].sort().join(',')}`)
  return [...out, ...other].sort()
}

interface CachedToken {
  header: string
  expiresAt: number
}

export interface AuthClientOptions {
  clientId?: string
}

export class AuthClient {
  private readonly schemes = new Map<string, Challenge>()
  private readonly tokens = new Map<string, CachedToken>()
  private readonly inflight = new Map<string, Promise<string>>()
  private readonly creds = new Map<string, Promise<Credential | undefined>>()
  /** Token requests made (for tests and --debug). */
  tokenRequests = 0

  constructor(
    private readonly transport: Transport,
    private readonly credentials: CredentialFunc,
    private readonly opts: AuthClientOptions = {},
  ) {}

  private credential(host: string): Promise<Credential | undefined> {
    let c = this.creds.get(host)
    if (!c) {
      c = this.credentials(host)
      this.creds.set(host, c)
    }
    return c
  }

  /** The Authorization header to send up front, once the host's scheme is known. */
  async header(host: string, scopes: string[]): Promise<string | undefined> {
    const ch = this.schemes.get(host)
    if (!ch) return undefined
    return this.authorize(host, ch, scopes, false)
  }

  /** After a 401: learn the challenge and return the header to retry with. */
  async onChallenge(host: string, wwwAuthenticate: string | undefined, scopes: string[]): Promise<string | undefined> {
    const ch = parseChallenge(wwwAuthenticate)
    if (!ch || (ch.scheme !== 'basic' && ch.scheme !== 'bearer')) {
      throw authError(host, `the registry refused the request and offered no usable challenge (${wwwAuthenticate ?? 'no WWW-Authenticate header'})`)
    }
    this.schemes.set(host, ch)
    return this.authorize(host, ch, scopes, true)
  }

  private async authorize(host: string, ch: Challenge, scopes: string[], fresh: boolean): Promise<string | undefined> {
    const cred = await this.credential(host)
    if (ch.scheme === 'basic') {
      if (!cred?.username) {
        if (!fresh) return undefined
        throw authError(host, 'the registry requires a user name and password', true)
      }
      return `Basic ${Buffer.from(`${cred.username}:${cred.password ?? ''}`).toString('base64')}`
    }
    if (cred?.registryToken) return `Bearer ${cred.registryToken}`
    const merged = mergeScopes([...scopes, ...(fresh && ch.params.scope ? [ch.params.scope] : [])])
    const key = `${host} ${merged.join(' ')}`
    const hit = this.tokens.get(key)
    if (hit && hit.expiresAt > Date.now() && !fresh) return hit.header
    let p = this.inflight.get(key)
    if (!p) {
      p = this.fetchToken(host, ch, merged, cred).finally(() => this.inflight.delete(key))
      this.inflight.set(key, p)
    }
    const h = await p
    // Also answer later requests for just the scopes asked for.
    const plainKey = `${host} ${mergeScopes(scopes).join(' ')}`
    const cached = this.tokens.get(key)
    if (plainKey !== key && cached) this.tokens.set(plainKey, cached)
    return h
  }

  private async fetchToken(host: string, ch: Challenge, scopes: string[], cred: Credential | undefined): Promise<string> {
    const realm = ch.params.realm
    if (!realm) throw authError(host, 'the Bearer challenge names no realm (token service)')
    let url: URL
    try {
      url = new URL(realm)
    } catch {
      throw authError(host, `the Bearer challenge's realm is not a URL: ${realm}`)
    }
    const service = ch.params.service
    this.tokenRequests++
    const clientId = this.opts.clientId ?? 'ovm'
    let res
    try {
      if (cred?.identityToken) {
        const form = new URLSearchParams({grant_type: 'refresh_token', refresh_token: cred.identityToken, client_id: clientId})
        if (service) form.set('service', service)
        if (scopes.length > 0) form.set('scope', scopes.join(' '))
        res = await this.transport.request({
          method: 'POST',
          url,
          headers: {'content-type': 'application/x-www-form-urlencoded'},
          body: Buffer.from(form.toString()),
        })
      } else {
        if (service) url.searchParams.set('service', service)
        for (const s of scopes) url.searchParams.append('scope', s)
        const headers: Record<string, string> = {}
        if (cred?.username) headers.authorization = `Basic ${Buffer.from(`${cred.username}:${cred.password ?? ''}`).toString('base64')}`
        res = await this.transport.request({method: 'GET', url, headers})
      }
    } catch (err) {
      throw new AbortError({
        code: 'REGISTRY_UNREACHABLE',
        message: `cannot reach the token service of ${host} at ${url.origin}: ${(err as Error).message}`,
        hint: 'Check the network and the registry address.',
        exitCode: ExitCode.network,
        ref: host,
        cause: err,
      })
    }
    if (res.status === 401 || res.status === 403) {
      discard(res)
      throw authError(host, `the token service at ${url.origin} refused ${cred ? 'the stored credentials' : 'anonymous access'} (HTTP ${res.status})`, true)
    }
    if (res.status !== 200) {
      const text = (await readBody(res, 64 * 1024).catch(() => Buffer.alloc(0))).toString('utf8').slice(0, 200)
      throw authError(host, `the token service at ${url.origin} answered HTTP ${res.status}${text ? `: ${text}` : ''}`)
    }
    const body = JSON.parse((await readBody(res, 1024 * 1024)).toString('utf8')) as {token?: string; access_token?: string; expires_in?: number}
    const token = body.access_token ?? body.token
    if (!token) throw authError(host, `the token service at ${url.origin} answered without a token`)
    const ttl = (typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60) * 1000
    const h = `Bearer ${token}`
    this.tokens.set(`${host} ${scopes.join(' ')}`, {header: h, expiresAt: Date.now() + ttl - Math.min(10_000, ttl / 10)})
    return h
  }

  /** Forget what a 401 taught about `host` (after a retried request is refused again). */
  forget(host: string): void {
    for (const k of this.tokens.keys()) if (k.startsWith(`${host} `)) this.tokens.delete(k)
  }
}

export function authError(host: string, why: string, loginHint = false): AbortError {
  return new AbortError({
    code: 'REGISTRY_AUTH',
    message: `authentication with ${host} failed: ${why}`,
    hint: loginHint
      ? `Run \`ovm login ${host}\` (or \`docker login ${host}\`) with an account that may access this repository.`
      : `Check the registry address and your credentials for ${host}.`,
    exitCode: ExitCode.auth,
    ref: host,
  })
}

