import {chmod, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ExitCode, OvmError} from '../../src/errors/index.js'
import {copy} from '../../src/oci/copy.js'
import {mergeScopes, parseChallenge} from '../../src/oci/remote/auth.js'
import {Registry} from '../../src/oci/remote/client.js'
import {CredentialStore} from '../../src/oci/remote/credentials.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {FakeRegistry} from './fake-registry.js'
import {fastRetry, packFixture, tempStore} from './util.js'

describe('auth pieces', () => {
  it('parses challenges with quoted commas and merges scopes', () => {
    expect(parseChallenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')).toEqual({
      scheme: 'bearer',
      params: {realm: 'https://auth.example/token', service: 'reg', scope: 'repository:a/b:pull,push'},
    })
    expect(parseChallenge('Basic realm="x"')?.scheme).toBe('basic')
    expect(mergeScopes(['repository:a:pull', 'repository:a:push repository:b:pull'])).toEqual(['repository:a:pull,push', 'repository:b:pull'])
  })

  it('reads config.json auths and the credential-helper protocol, and stores/erases', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ovm-creds-'))
    try {
      const cfg = join(dir, 'config.json')
      await writeFile(
        cfg,
        JSON.stringify({
          auths: {'https://reg.example:5000/v1/': {auth: Buffer.from('bob:s3:cret').toString('base64')}, 'tok.example': {identitytoken: 'refresh-1'}},
          credHelpers: {'helped.example': 'ovmtest'},
        }),
      )
      // A helper script on PATH speaking docker-credential-helpers' protocol.
      const helper = join(dir, 'docker-credential-ovmtest')
      await writeFile(
        helper,
        `#!/bin/sh\nread host\ncase "$1" in get) if [ "$host" = helped.example ]; then echo '{"ServerURL":"helped.example","Username":"carol","Secret":"pw"}'; else echo "credentials not found in native keychain"; exit 1; fi;; esac\n`,
      )
      await chmod(helper, 0o755)
      const oldPath = process.env.PATH
      process.env.PATH = `${dir}:${oldPath}`
      try {
        const store = new CredentialStore(cfg)
        expect(await store.get('reg.example:5000')).toEqual({username: 'bob', password: 's3:cret'})
        expect(await store.get('tok.example')).toEqual({identityToken: 'refresh-1'})
        expect(await store.get('helped.example')).toEqual({username: 'carol', password: 'pw'})
        expect(await store.get('nowhere.example')).toBeUndefined()
        await store.store('new.example', {username: 'dan', password: 'x'})
        const written = JSON.parse(await readFile(cfg, 'utf8')) as {auths: Record<string, {auth: string}>; credHelpers: unknown}
        expect(Buffer.from(written.auths['new.example']!.auth, 'base64').toString()).toBe('dan:x')
        expect(written.credHelpers).toEqual({'helped.example': 'ovmtest'}) // other keys survive
        expect(await store.erase('new.example')).toBe(true)
        expect(await store.get('new.example')).toBeUndefined()
        expect(await store.erase('new.example')).toBe(false)
      } finally {
        process.env.PATH = oldPath
      }
    } finally {
      await rm(dir, {recursive: true, force: true})
    }
  })

  it('follows a Bearer challenge once, then reuses the cached token', async () => {
    const fake = await new FakeRegistry({bearer: {user: 'u', password: 'p'}}).start()
    try {
      const r = new Registry(fake.host, {retry: fastRetry, credentials: async () => ({username: 'u', password: 'p'})})
      const repo = r.repository('a/b')
      await repo.push({mediaType: 'application/octet-stream', digest: 'sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae', size: 3}, Buffer.from('foo'))
      expect(await repo.exists({mediaType: 'x', digest: 'sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae', size: 3})).toBe(true)
      expect(fake.tokenScopes[0]).toBe('repository:a/b:pull')
      // pull for the HEAD, pull+push for the upload; later requests reuse them.
      expect(fake.tokenScopes).toHaveLength(2)
      expect(fake.tokenScopes).toContain('repository:a/b:pull,push')
      expect(r.auth.tokenRequests).toBe(2)
      // Wrong password: an auth error naming the registry, exit code 7.
      const bad = new Registry(fake.host, {retry: fastRetry, credentials: async () => ({username: 'u', password: 'nope'})})
      const err = await bad.repository('a/b').resolve('latest').catch((e: unknown) => e)
      expect(err).toBeInstanceOf(OvmError)
      expect((err as OvmError).exitCode).toBe(ExitCode.auth)
      expect((err as OvmError).message).toContain(fake.host)
      expect((err as OvmError).hint).toContain('ovm login')
    } finally {
      await fake.stop()
    }
  })
})

describe.skipIf(!registryAvailable())('auth against docker-registry 2.8.2', () => {
  let tmp: Awaited<ReturnType<typeof tempStore>>
  let digest: string
  const regs: TestRegistry[] = []

  beforeAll(async () => {
    tmp = await tempStore()
    digest = (await packFixture(tmp.store, 'example/busybox:1.0')).digest
  })
  afterAll(async () => {
    for (const r of regs) await r.stop()
    await tmp?.cleanup()
  })

  it('htpasswd (Basic): refused without credentials, works with them', async () => {
    const reg = await startRegistry({auth: 'htpasswd', users: {alice: 'wonderland'}})
    regs.push(reg)
    const anon = new Registry(reg.host, {retry: fastRetry, credentials: async () => undefined})
    const err = await copy(tmp.store, 'example/busybox:1.0', anon.repository('vm/auth'), '1.0').catch((e: unknown) => e)
    expect((err as OvmError).exitCode).toBe(ExitCode.auth)
    expect((err as OvmError).message).toContain(reg.host)
    const wrong = new Registry(reg.host, {retry: fastRetry, credentials: async () => ({username: 'alice', password: 'x'})})
    expect(((await wrong.ping().catch((e: unknown) => e)) as OvmError).exitCode).toBe(ExitCode.auth)

    const ok = new Registry(reg.host, {retry: fastRetry, credentials: async () => ({username: 'alice', password: 'wonderland'})})
    const res = await copy(tmp.store, 'example/busybox:1.0', ok.repository('vm/auth'), '1.0')
    expect(res.descriptor.digest).toBe(digest)
    expect((await ok.repository('vm/auth').resolve('1.0')).digest).toBe(digest)
  })

  it('token auth (the registry\'s real auth.token mode): scoped tokens, cached', async () => {
    const reg = await startRegistry({auth: 'token', users: {alice: 'wonderland'}})
    regs.push(reg)
    const anon = new Registry(reg.host, {retry: fastRetry, credentials: async () => undefined})
    const err = await anon.repository('vm/tok').resolve('1.0').catch((e: unknown) => e)
    expect((err as OvmError).exitCode).toBe(ExitCode.auth)

    const r = new Registry(reg.host, {retry: fastRetry, credentials: async () => ({username: 'alice', password: 'wonderland'})})
    const repo = r.repository('vm/tok')
    const res = await copy(tmp.store, 'example/busybox:1.0', repo, '1.0')
    expect(res.blobs.copied).toBe(4)
    const dst = await tempStore()
    try {
      const pulled = await copy(repo, '1.0', dst.store, `${reg.host}/vm/tok:1.0`)
      expect(pulled.descriptor.digest).toBe(digest)
    } finally {
      await dst.cleanup()
    }
    // Dozens of requests, a handful of tokens: one per scope set.
    expect(r.stats.requests).toBeGreaterThan(15)
    expect(r.auth.tokenRequests).toBeLessThanOrEqual(3)
    const users = reg.token!.requests.map((q) => q.user)
    expect(users.filter((u) => u === 'alice').length).toBe(r.auth.tokenRequests)
    expect(reg.token!.requests.some((q) => q.scope.includes('repository:vm/tok:pull,push'))).toBe(true)
  })
})
