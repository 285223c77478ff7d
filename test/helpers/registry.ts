import {type ChildProcess, execFileSync, spawn} from 'node:child_process'
import {createSign, randomBytes, randomUUID} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

/**
 * Starts Debian's real `docker-registry` (distribution 2.8.2) on a free
 * loopback port with a temporary config: filesystem storage in a temp
 * folder, deletes enabled, and optionally htpasswd (Basic) or token auth
 * (with a small in-process token issuer signing RS256 JWTs whose x5c
 * certificate is the registry's root bundle).
 */

export const REGISTRY_BIN = process.env.OVM_TEST_REGISTRY_BIN ?? '/usr/bin/docker-registry'

export function registryAvailable(): boolean {
  return existsSync(REGISTRY_BIN)
}

export interface StartOptions {
  auth?: 'htpasswd' | 'token'
  users?: Record<string, string>
}

export interface TokenIssuer {
  url: string
  requests: {scope: string[]; user?: string}[]
}

export interface TestRegistry {
  /** host:port, e.g. 127.0.0.1:34567 */
  host: string
  port: number
  dir: string
  token?: TokenIssuer
  stop(): Promise<void>
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.unref()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })
}

function htpasswdLine(user: string, password: string): string {
  try {
    return execFileSync('htpasswd', ['-nbB', user, password], {encoding: 'utf8'}).trim()
  } catch {
    // No apache2-utils: glibc's crypt(3) makes bcrypt too.
    const hash = execFileSync('python3', ['-c', 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))', password], {
      encoding: 'utf8',
    }).trim()
    return `${user}:${hash}`
  }
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url')

async function startTokenIssuer(dir: string, service: string, issuer: string, users: Record<string, string>): Promise<TokenIssuer & {server: http.Server; certPath: string}> {
  const keyPath = join(dir, 'token.key')
  const certPath = join(dir, 'token.crt')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=ovm-test-token'], {
    stdio: 'ignore',
  })
  const key = await readFile(keyPath, 'utf8')
  const certDer = Buffer.from(
    (await readFile(certPath, 'utf8')).replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''),
    'base64',
  )
  const requests: TokenIssuer['requests'] = []
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x')
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean)
    let user: string | undefined
    const auth = req.headers.authorization
    if (auth?.startsWith('Basic ')) {
      const [u, p] = Buffer.from(auth.slice(6), 'base64').toString('utf8').split(/:(.*)/s)
      if (!u || users[u] !== p) {
        res.writeHead(401, {'content-type': 'application/json'}).end('{"details":"bad credentials"}')
        requests.push({scope: scopes, user: u})
        return
      }
      user = u
    }
    requests.push({scope: scopes, user})
    const access = user
      ? scopes.map((s) => {
          const [type, ...rest] = s.split(':')
          const actions = (rest.pop() ?? '').split(',')
          return {type, name: rest.join(':'), actions}
        })
      : []
    const now = Math.floor(Date.now() / 1000)
    const header = {alg: 'RS256', typ: 'JWT', x5c: [certDer.toString('base64')]}
    const claims = {iss: issuer, sub: user ?? '', aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access}
    const signing = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`
    const sig = createSign('RSA-SHA256').update(signing).sign(key)
    const token = `${signing}.${b64url(sig)}`
    res.writeHead(200, {'content-type': 'application/json'}).end(JSON.stringify({token, access_token: token, expires_in: 300}))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  return {url: `http://127.0.0.1:${port}/token`, requests, server, certPath}
}

export async function startRegistry(opts: StartOptions = {}): Promise<TestRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'ovm-registry-'))
  const port = await freePort()
  const users = opts.users ?? {alice: 'wonderland'}
  let authYaml = ''
  let token: Awaited<ReturnType<typeof startTokenIssuer>> | undefined
  if (opts.auth === 'htpasswd') {
    const file = join(dir, 'htpasswd')
    await writeFile(file, `${Object.entries(users).map(([u, p]) => htpasswdLine(u, p)).join('\n')}\n`)
    authYaml = `auth:\n  htpasswd:\n    realm: ovm-test\n    path: ${file}\n`
  } else if (opts.auth === 'token') {
    token = await startTokenIssuer(dir, 'ovm-test-registry', 'ovm-test-issuer', users)
    authYaml = `auth:\n  token:\n    realm: ${token.url}\n    service: ovm-test-registry\n    issuer: ovm-test-issuer\n    rootcertbundle: ${token.certPath}\n`
  }
  const config = `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${join(dir, 'data')}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:${port}
  secret: ${randomBytes(16).toString('hex')}
${authYaml}`
  const configPath = join(dir, 'config.yml')
  await writeFile(configPath, config)
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', configPath], {stdio: ['ignore', 'ignore', 'pipe']})
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString('utf8')
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000)
  })
  const host = `127.0.0.1:${port}`
  const deadline = Date.now() + 15_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}: ${stderr}`)
    const status = await new Promise<number>((resolve) => {
      const req = http.get(`http://${host}/v2/`, (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      })
      req.on('error', () => resolve(0))
    })
    if (status === 200 || status === 401) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`docker-registry did not come up on ${host}: ${stderr}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    host,
    port,
    dir,
    token: token ? {url: token.url, requests: token.requests} : undefined,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r))
        child.kill('SIGTERM')
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))])
        if (child.exitCode === null) child.kill('SIGKILL')
      }
      if (token) await new Promise((r) => token!.server.close(r))
      await rm(dir, {recursive: true, force: true})
    },
  }
}
