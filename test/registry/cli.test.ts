import {readFile, readdir, stat} from 'node:fs/promises'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {MediaType} from '../../src/oci/descriptor.js'
import {sha256} from '../../src/oci/digest.js'
import {Registry} from '../../src/oci/remote/client.js'
import {ovm, packArgs, tempDir} from '../helpers/cli.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {FaultProxy} from './proxy.js'
import {referrerManifest} from './util.js'

describe.skipIf(!registryAvailable())('ovm login/push/pull/discover/logout against an htpasswd registry', () => {
  let reg: TestRegistry
  const a = tempDir('ovm-cli-a-')
  const b = tempDir('ovm-cli-b-')
  const docker = tempDir('ovm-cli-docker-')
  let env: NodeJS.ProcessEnv
  let ref: string

  beforeAll(async () => {
    reg = await startRegistry({auth: 'htpasswd', users: {alice: 'wonderland'}})
    env = {DOCKER_CONFIG: docker.path, OVM_REGISTRY_CONFIG: ''}
    ref = `${reg.host}/vm/cli:1.0`
    const packed = await ovm(packArgs('example/busybox:1.0'), {home: a.path, env})
    expect(packed.code, packed.stderr).toBe(0)
  })
  afterAll(async () => {
    await reg?.stop()
    for (const d of [a, b, docker]) d.cleanup()
  })

  it('login checks the password, stores it where docker looks, and push/pull/discover use it', async () => {
    const bad = await ovm(['login', reg.host, '-u', 'alice', '--password-stdin'], {home: a.path, env, stdin: 'wrong\n'})
    expect(bad.code).toBe(7)
    expect(bad.stderr).toContain(reg.host)
    expect(bad.stderr).toContain('Try this:')

    const login = await ovm(['login', reg.host, '-u', 'alice', '--password-stdin', '--json'], {home: a.path, env, stdin: 'wonderland\n'})
    expect(login.code, login.stderr).toBe(0)
    expect(JSON.parse(login.stdout)).toMatchObject({registry: reg.host, username: 'alice'})
    const cfg = JSON.parse(await readFile(join(docker.path, 'config.json'), 'utf8')) as {auths: Record<string, {auth: string}>}
    expect(Buffer.from(cfg.auths[reg.host]!.auth, 'base64').toString()).toBe('alice:wonderland')

    const push = await ovm(['push', ref, '--from', 'example/busybox:1.0', '--json'], {home: a.path, env})
    expect(push.code, push.stderr).toBe(0)
    const pushed = JSON.parse(push.stdout) as {descriptor: {digest: string}; blobs: {copied: number}}
    expect(pushed.blobs.copied).toBe(4)
    expect(push.stderr).toBe('') // nothing but the result under --json

    const push2 = await ovm(['push', ref, '--from', 'example/busybox:1.0'], {home: a.path, env})
    expect(push2.code).toBe(0)
    expect(push2.stdout).toContain(`${ref}@${pushed.descriptor.digest}`)
    expect(push2.stderr).toContain('0 blobs copied')


    // inspect reads a remote artifact without storing it.
    const remote = await ovm(['inspect', ref, '--json'], {home: join(b.path, 'untouched'), env})
    expect(remote.code, remote.stderr).toBe(0)
    const inspected = JSON.parse(remote.stdout) as {descriptor: {digest: string}; layers: {role: string}[]}
    expect(inspected.descriptor.digest).toBe(pushed.descriptor.digest)
    expect(inspected.layers.map((l) => l.role)).toEqual(['kernel', 'initrd', 'disk'])

    // In CI (not a terminal) each blob reports as plain lines (per 10% for large ones), then a done line.
    const c = tempDir('ovm-cli-c-')
    const plain = await ovm(['pull', ref], {home: c.path, env})
    expect(plain.code, plain.stderr).toBe(0)
    for (const title of ['vmlinuz', 'initrd.img', 'disk-0.tar']) expect(plain.stderr).toMatch(new RegExp(`^[0-9a-f]{12} ${title.replace('.', '\\.')}\\s+[\\d.]+ [KM]i?B done$`, 'm'))
    expect(plain.stderr).not.toContain('\x1b[')
    c.cleanup()

    const pull = await ovm(['pull', ref, '--json'], {home: b.path, env})
    expect(pull.code, pull.stderr).toBe(0)
    expect(pull.stderr).toBe('')
    expect((JSON.parse(pull.stdout) as {descriptor: {digest: string}}).descriptor.digest).toBe(pushed.descriptor.digest)
    const verify = await ovm(['store', 'verify', '--json'], {home: b.path, env})
    expect(verify.code).toBe(0)
    expect((JSON.parse(verify.stdout) as {checked: number}).checked).toBe(5)

    // A referrer pushed by the library shows in discover's tree.
    const creds = async (): Promise<{username: string; password: string}> => ({username: 'alice', password: 'wonderland'})
    const repo = new Registry(reg.host, {credentials: creds}).repository('vm/cli')
    const subject = {mediaType: MediaType.imageManifest, digest: pushed.descriptor.digest, size: 0}
    subject.size = (await repo.resolve('1.0')).size
    const layerBytes = Buffer.from('sig')
    const layer = {mediaType: 'application/vnd.example.sig', digest: sha256(layerBytes), size: 3}
    await repo.push(layer, layerBytes)
    await repo.push({mediaType: MediaType.empty, digest: sha256('{}'), size: 2}, Buffer.from('{}'))
    const sig = referrerManifest(subject, 'application/vnd.example.sig', layer)
    await repo.push(sig.desc, sig.bytes)
    const disc = await ovm(['discover', ref], {home: b.path, env})
    expect(disc.code, disc.stderr).toBe(0)
    expect(disc.stdout).toContain(`@${pushed.descriptor.digest}`)
    expect(disc.stdout).toMatch(/└── application\/vnd\.example\.sig\n\s+└── sha256:/)
    expect(disc.stdout).toContain(sig.desc.digest)
    const discJson = await ovm(['discover', ref, '--json', '--artifact-type', 'application/other'], {home: b.path, env})
    expect((JSON.parse(discJson.stdout) as {referrers: unknown[]}).referrers).toEqual([])

    const logout = await ovm(['logout', reg.host], {home: a.path, env})
    expect(logout.code).toBe(0)
    const denied = await ovm(['pull', ref], {home: b.path, env})
    expect(denied.code).toBe(7)
    expect(denied.stderr).toContain(`ovm login ${reg.host}`)
  })

  it('SIGKILL in the middle of a pull leaves a store that verifies, and the next pull completes', async () => {
    const login = await ovm(['login', reg.host, '-u', 'alice', '-p', 'wonderland'], {home: a.path, env})
    expect(login.code).toBe(0)
    await ovm(['push', ref, '--from', 'example/busybox:1.0'], {home: a.path, env})
    // A slow proxy so that the kill lands mid-blob.
    const proxy = await new FaultProxy({host: '127.0.0.1', port: reg.port}, {delayMs: 15}).start()
    const c = tempDir('ovm-cli-c-')
    try {
      const slowRef = `${proxy.host}/vm/cli:1.0`
      // Credentials are per host: store them for the proxy's address too.
      await ovm(['login', proxy.host, '-u', 'alice', '-p', 'wonderland'], {home: a.path, env})
      let pid = 0
      const running = ovm(['pull', slowRef], {home: c.path, env, onSpawn: (p) => (pid = p)})
      const deadline = Date.now() + 20_000
      for (;;) {
        const ingest = await readdir(join(c.path, 'ingest')).catch(() => [] as string[])
        const sizes = await Promise.all(ingest.map((n) => stat(join(c.path, 'ingest', n)).then((s) => s.size).catch(() => 0)))
        if (sizes.some((s) => s > 100_000)) break
        if (Date.now() > deadline) throw new Error('pull never got going')
        await new Promise((r) => setTimeout(r, 20))
      }
      process.kill(pid, 'SIGKILL')
      const killed = await running
      expect(killed.signal).toBe('SIGKILL')
      const verify = await ovm(['store', 'verify', '--json'], {home: c.path, env})
      expect(verify.code, verify.stdout).toBe(0)
      expect((JSON.parse(verify.stdout) as {staleIngest: number}).staleIngest).toBeGreaterThanOrEqual(1)

      proxy.opts.delayMs = 0
      const again = await ovm(['pull', slowRef, '--json'], {home: c.path, env})
      expect(again.code, again.stderr).toBe(0)
      const res = JSON.parse(again.stdout) as {blobs: {copied: number; skipped: number}}
      // 4 artifact blobs + the referrer's 2 (pulled along); those finished before the kill are skipped.
      expect(res.blobs.copied + res.blobs.skipped).toBe(6)
      expect(res.blobs.skipped).toBeGreaterThanOrEqual(1)
      const verify2 = await ovm(['store', 'verify', '--json'], {home: c.path, env})
      expect((JSON.parse(verify2.stdout) as {ok: boolean; checked: number}).checked).toBe(8)
      expect(verify2.code).toBe(0)
    } finally {
      c.cleanup()
      await proxy.stop()
    }
  })
})
