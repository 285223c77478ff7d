/**
 * Every command's --json output validates against its schema in schemas/cli/
 * (and every failure against schemas/cli/error.json, with the documented exit
 * code), run for real: a real store, Debian's docker-registry for the
 * registry commands, and a TCG guest through a real daemon for run, ps, logs,
 * snapshot, stop and serve.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ExitCode} from '../../src/errors/index.js'
import {heartbeatInitramfs, holdVmLock, KERNEL, lastHeartbeat, until, vmSkipReason} from '../engine/helpers.js'
import {BIN, FIXTURES, ROOT, type RunResult, ovm, packArgs, tempDir} from '../helpers/cli.js'
import {ID_BASE, cliFiles, cliSchemas, problems, validator} from '../helpers/cli-schemas.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {writeTestImage} from '../convert/image.js'

/** Schemas in schemas/cli/ that are not one command's output. */
const SHARED = new Set(['defs.json', 'error.json'])
/** Commands without --json, and why. A command missing here and in schemas/cli/ fails the test. */
const EXEMPT: Record<string, string> = {
  tui: 'an interactive terminal UI: it refuses to start without a terminal and prints no result',
}
/** The commands that need a daemon and a guest; covered in the VM block below. */
const VM_COMMANDS = ['run', 'ps', 'logs', 'snapshot', 'stop', 'serve']

const schemaFile = (id: string): string => `${id.replaceAll(':', '-')}.json`

interface ManifestCommand {
  id: string
  flags: Record<string, unknown>
}
function manifestCommands(): ManifestCommand[] {
  const path = join(ROOT, 'oclif.manifest.json')
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm run build`)
  return Object.values((JSON.parse(readFileSync(path, 'utf8')) as {commands: Record<string, ManifestCommand>}).commands)
}
const COMMANDS = manifestCommands()
  .filter((c) => !(c.id in EXEMPT))
  .map((c) => c.id)
  .sort()

/** How many outputs of each command validated: every command must reach one. */
const validated = new Map<string, number>()

/** A successful --json run of `id`: exit 0 (or `exit`), one JSON document on stdout, valid against the command's schema. */
function ok<T = Record<string, unknown>>(id: string, r: RunResult, exit = 0): T {
  expect(r.code, `ovm ${id} exited ${r.code}:\n${r.stdout}\n${r.stderr}`).toBe(exit)
  let doc: unknown
  try {
    doc = JSON.parse(r.stdout)
  } catch {
    throw new Error(`ovm ${id} --json printed no single JSON document:\n${r.stdout}`)
  }
  const fn = validator(schemaFile(id))
  expect(fn(doc), `ovm ${id} --json does not match schemas/cli/${schemaFile(id)}:\n${problems(fn)}\n${JSON.stringify(doc, null, 2)}`).toBe(true)
  validated.set(id, (validated.get(id) ?? 0) + 1)
  return doc as T
}

/** A failed --json run: error.json on stdout, exiting with its exitCode, which is the documented `expected`. */
function failed(r: RunResult, expected: number, code?: string): {code: string; message: string; exitCode: number} {
  let doc: unknown
  try {
    doc = JSON.parse(r.stdout)
  } catch {
    throw new Error(`no JSON error on stdout (exit ${r.code}):\n${r.stdout}\n${r.stderr}`)
  }
  const fn = validator('error.json')
  expect(fn(doc), `error does not match schemas/cli/error.json:\n${problems(fn)}\n${r.stdout}`).toBe(true)
  const err = (doc as {error: {code: string; message: string; exitCode: number}}).error
  expect(err.exitCode).toBe(expected)
  expect(r.code).toBe(expected)
  if (code) expect(err.code).toBe(code)
  return err
}

describe('schemas/cli/', () => {
  it('has a schema for every command in the oclif manifest (or the command is exempt, with why)', () => {
    expect(COMMANDS.length).toBeGreaterThan(20)
    const missing = COMMANDS.filter((id) => !cliSchemas.has(schemaFile(id)))
    expect(missing, `commands without a schema in schemas/cli/ (add schemas/cli/<topic>-<command>.json, or list the command in EXEMPT with why): ${missing.join(', ')}`).toEqual([])
    const all = new Set(manifestCommands().map((c) => schemaFile(c.id)))
    const stale = cliFiles.filter((f) => !SHARED.has(f) && !all.has(f))
    expect(stale, `schemas for commands that do not exist: ${stale.join(', ')}`).toEqual([])
  })

  it('every non-exempt command takes --json', () => {
    const without = manifestCommands()
      .filter((c) => !(c.id in EXEMPT) && !('json' in c.flags))
      .map((c) => c.id)
    expect(without).toEqual([])
  })

  for (const f of cliFiles) {
    it(`${f}: 2020-12, its $id, a description on every field, and examples that validate`, () => {
      const s = cliSchemas.get(f)!
      expect(s.$schema).toBe('https://json-schema.org/draft/2020-12/schema')
      expect(s.$id).toBe(`${ID_BASE}${f}`)
      expect(typeof s.description).toBe('string')
      const undescribed: string[] = []
      const walk = (node: unknown, at: string): void => {
        if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${at}/${i}`))
        if (typeof node !== 'object' || node === null) return
        for (const [k, v] of Object.entries(node)) {
          if (k === 'properties') {
            for (const [name, sub] of Object.entries(v as Record<string, Record<string, unknown>>)) {
              // A branch of oneOf may narrow a field described at the top (a bare const).
              const narrowing = Object.keys(sub).every((key) => key === 'const')
              if (!narrowing && typeof sub.description !== 'string') undescribed.push(`${at}/properties/${name}`)
            }
          }
          if (k === '$defs') for (const [name, sub] of Object.entries(v as Record<string, Record<string, unknown>>)) if (typeof sub.description !== 'string') undescribed.push(`${at}/$defs/${name}`)
          walk(v, `${at}/${k}`)
        }
      }
      walk(s, '#')
      expect(undescribed, `fields without a description in ${f}`).toEqual([])
      const examples = s.examples as unknown[]
      expect(Array.isArray(examples) && examples.length > 0, `${f} has no examples`).toBe(true)
      const fn = validator(f)
      for (const ex of examples) expect(fn(ex), `${f} example does not validate:\n${problems(fn)}`).toBe(true)
    })
  }

  it('rejects what it should: a schema is no rubber stamp', () => {
    const tag = validator('tag.json')
    expect(tag({source: 'a:1', reference: 'a:2', digest: 'sha256:abc'})).toBe(false)
    expect(tag({source: 'a:1', reference: 'a:2', digest: `sha256:${'a'.repeat(64)}`, extra: 1})).toBe(false)
    const err = validator('error.json')
    expect(err({error: {code: 'X', message: 'm', exitCode: 42}})).toBe(false)
    expect(err({code: 'X', message: 'm', exitCode: 4})).toBe(false)
    const init = validator('init.json')
    expect(init({templates: [], template: 'x', dir: '.', files: []})).toBe(false)
    const validate = validator('validate.json')
    expect(validate({file: 'f', valid: true, kind: 'ovmfile', steps: 1, warnings: [], name: 'x'})).toBe(false)
  })
})

describe('every command prints error.json for bad usage under --json', () => {
  const tmp = tempDir('ovm-json-usage-')
  afterAll(() => tmp.cleanup())
  for (const id of COMMANDS) {
    it(`ovm ${id.replaceAll(':', ' ')} --no-such-flag --json`, async () => {
      const r = await ovm([...id.split(':'), '--no-such-flag', '--json'], {home: tmp.path})
      const err = failed(r, ExitCode.usage, 'USAGE')
      expect(err.message).toContain('--no-such-flag')
    })
  }
})

describe('local store commands', () => {
  const tmp = tempDir('ovm-json-')
  const home = join(tmp.path, 'home')
  const env = {OVM_KEY_PASSWORD: ''}
  const run = (args: string[]): Promise<RunResult> => ovm([...args, '--json'], {home, env, cwd: tmp.path})
  let digest = ''
  afterAll(() => tmp.cleanup())

  it('key generate, pack, kernel import, ls, tag, inspect', async () => {
    const key = ok<{keyId: string}>('key:generate', await run(['key', 'generate', '--out', join(tmp.path, 'ovm')]))
    expect(existsSync(join(tmp.path, 'ovm.key'))).toBe(true)
    expect(key.keyId).toMatch(/^[a-f0-9]{64}$/)
    const pack = ok<{digest: string; references: string[]}>('pack', await run(packArgs('example/busybox:1.0')))
    digest = pack.digest
    expect(pack.references).toEqual(['example/busybox:1.0'])
    const kernel = ok<{kernelVersion: string; sourceKind: string}>('kernel:import', await run(['kernel', 'import', join(FIXTURES, 'kernel-root'), '-t', 'example/kernel:6.1']))
    expect(kernel.sourceKind).toBe('root')
    expect(kernel.kernelVersion).toBe(readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim())
    const tag = ok<{digest: string}>('tag', await run(['tag', 'example/busybox:1.0', 'example/busybox:latest']))
    expect(tag.digest).toBe(digest)
    const ls = ok<{artifacts: {reference: string}[]}>('ls', await run(['ls']))
    expect(ls.artifacts.map((a) => a.reference).sort()).toEqual(['example/busybox:1.0', 'example/busybox:latest', 'example/kernel:6.1'])
    const inspect = ok<{layers: {role: string}[]; ovms: unknown}>('inspect', await run(['inspect', 'example/busybox:1.0']))
    expect(inspect.layers.map((l) => l.role)).toEqual(['kernel', 'initrd', 'disk'])
    writeFileSync(join(tmp.path, 'manifest.json'), JSON.stringify(inspect.ovms, null, 2))
    ok('inspect', await run(['inspect', 'example/kernel:6.1']))
  })

  it('sign, verify, discover (local)', async () => {
    const none = ok<{referrers: unknown[]}>('discover', await run(['discover', 'example/busybox:1.0']))
    expect(none.referrers).toEqual([])
    const sig = ok<{subject: string}>('sign', await run(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'ovm.key')]))
    expect(sig.subject).toBe(digest)
    const v = ok<{verified: unknown[]}>('verify', await run(['verify', 'example/busybox:1.0', '--key', join(tmp.path, 'ovm.pub')]))
    expect(v.verified).toHaveLength(1)
    const d = ok<{referrers: unknown[]; source: string}>('discover', await run(['discover', 'example/busybox:1.0']))
    expect(d.source).toBe('local')
    expect(d.referrers).toHaveLength(1)
    // A key that signed nothing: no signature verifies.
    await run(['key', 'generate', '--out', join(tmp.path, 'other')])
    failed(await run(['verify', 'example/busybox:1.0', '--key', join(tmp.path, 'other.pub')]), ExitCode.policy)
  })

  it('validate (an Ovmfile with a warning, and an OVMS manifest), init --list and --template', async () => {
    const list = ok<{templates: {name: string}[]}>('init', await run(['init', '--list']))
    expect(list.templates.map((t) => t.name)).toContain('busybox')
    const dir = join(tmp.path, 'tpl')
    const init = ok<{files: string[]}>('init', await run(['init', '--template', 'busybox', dir]))
    expect(init.files).toContain('Ovmfile')
    writeFileSync(join(dir, 'Ovmfile'), `${readFileSync(join(dir, 'Ovmfile'), 'utf8')}\nMEMORY 256M\nMEMORY 128M\n`)
    const v = ok<{kind: string; warnings: {code: string}[]}>('validate', await run(['validate', join(dir, 'Ovmfile'), '--build-arg', `KERNEL_ROOT=${join(FIXTURES, 'kernel-root')}`]))
    expect(v.kind).toBe('ovmfile')
    expect(v.warnings.map((w) => w.code)).toContain('DUPLICATE')
    const m = ok<{kind: string; name: string}>('validate', await run(['validate', join(tmp.path, 'manifest.json')]))
    expect(m).toMatchObject({kind: 'ovms-manifest', name: 'example/busybox'})
    const plan = ok<{plan: {steps: unknown[]; fullyCached: boolean}; result?: unknown}>('build', await run(['build', '--dry-run', dir, '--build-arg', `KERNEL_ROOT=${join(FIXTURES, 'kernel-root')}`]))
    expect(plan.plan.steps.length).toBeGreaterThan(0)
    expect(plan.result).toBeUndefined()
  })

  it('build (no steps, so no builder VM) with --sign and --provenance', async () => {
    const kv = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    const ctx = join(tmp.path, 'b0')
    mkdirSync(ctx, {recursive: true})
    writeFileSync(
      join(ctx, 'Ovmfile'),
      [
        `FROM disk:${join(FIXTURES, 'disk.qcow2')}`,
        `KERNEL ${join(FIXTURES, 'kernel-root', 'boot', `vmlinuz-${kv}`)} MODULES ${join(FIXTURES, 'kernel-root', 'lib', 'modules', kv)}`,
        'CMDLINE "console=ttyS0"',
        'LABEL org.example.purpose=json-schema-test',
        '',
      ].join('\n'),
    )
    const b = ok<{result: {boots: number; references: string[]}; signatures: string[]}>(
      'build',
      await run(['build', ctx, '-t', 'example/b0:1', '--sign', '--provenance', '--key', join(tmp.path, 'ovm.key')]),
    )
    expect(b.result.boots).toBe(0)
    expect(b.result.references).toEqual(['example/b0:1'])
    expect(b.signatures).toHaveLength(2)
  })

  it('rm, prune, store verify (sound, then with a corrupt blob: exit 5 and the same schema)', async () => {
    const rm = ok<{removed: unknown[]; prune?: unknown}>('rm', await run(['rm', 'example/busybox:latest']))
    expect(rm.prune).toBeUndefined()
    const dry = ok<{dryRun: boolean}>('prune', await run(['prune', '--dry-run']))
    expect(dry.dryRun).toBe(true)
    const rm2 = ok<{prune: {removed: unknown[]}}>('rm', await run(['rm', 'example/kernel:6.1', '--prune']))
    expect(rm2.prune.removed.length).toBeGreaterThan(0)
    ok('prune', await run(['prune']))
    const sound = ok<{ok: boolean}>('store:verify', await run(['store', 'verify']))
    expect(sound.ok).toBe(true)
    // Corrupt the busybox kernel layer (the largest blob), keeping its length.
    const inspect = JSON.parse((await run(['inspect', 'example/busybox:1.0'])).stdout) as {layers: {role: string; digest: string}[]}
    const kernelBlob = join(home, 'blobs', 'sha256', inspect.layers.find((l) => l.role === 'kernel')!.digest.slice(7))
    expect(existsSync(kernelBlob)).toBe(true)
    const bytes = readFileSync(kernelBlob)
    bytes[100] = (bytes[100] ?? 0) ^ 0xff
    writeFileSync(kernelBlob, bytes)
    const bad = ok<{ok: boolean; bad: unknown[]}>('store:verify', await run(['store', 'verify', '--no-quarantine']), ExitCode.integrity)
    expect(bad.ok).toBe(false)
    expect(bad.bad).toHaveLength(1)
  })

  it('failures print error.json with the documented exit code', async () => {
    failed(await run(['inspect', 'example/nope:1']), ExitCode.notFound, 'REF_NOT_FOUND')
    failed(await run(['tag', 'example/nope:1', 'example/nope:2']), ExitCode.notFound, 'REF_NOT_FOUND')
    writeFileSync(join(tmp.path, 'Bad.Ovmfile'), 'FORM scratch 64M\n')
    const inv = failed(await run(['validate', join(tmp.path, 'Bad.Ovmfile')]), ExitCode.invalid, 'OVMFILE_INVALID')
    expect(inv.message).toContain('Bad.Ovmfile')
    failed(await run(['validate', join(tmp.path, 'no-such-file')]), ExitCode.notFound, 'FILE_NOT_FOUND')
    failed(await run(['tag']), ExitCode.usage, 'USAGE')
    failed(await run(['ps']), ExitCode.notFound, 'DAEMON_NOT_RUNNING')
    failed(await run(['logs', 'abcdefabcdef']), ExitCode.notFound, 'DAEMON_NOT_RUNNING')
  })
})

describe.skipIf(!registryAvailable())('registry commands against docker-registry (htpasswd)', () => {
  let reg: TestRegistry
  const tmp = tempDir('ovm-json-reg-')
  const home = join(tmp.path, 'home')
  const config = join(tmp.path, 'docker', 'config.json')
  const env = {OVM_KEY_PASSWORD: '', OVM_REGISTRY_CONFIG: config}
  const run = (args: string[], stdin?: string): Promise<RunResult> => ovm([...args, '--json'], {home, env, stdin})
  beforeAll(async () => {
    reg = await startRegistry({auth: 'htpasswd', users: {alice: 'wonderland'}})
    expect((await ovm(packArgs('example/busybox:1.0'), {home, env})).code).toBe(0)
    expect((await ovm(['key', 'generate', '--out', join(tmp.path, 'ovm')], {home, env})).code).toBe(0)
    expect((await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'ovm.key')], {home, env})).code).toBe(0)
  })
  afterAll(async () => {
    await reg?.stop()
    tmp.cleanup()
  })

  it('login (a wrong password is exit 7), push, pull, copy, discover, inspect, sign, verify, logout', async () => {
    failed(await run(['login', reg.host, '-u', 'alice', '--password-stdin'], 'wrong\n'), ExitCode.auth)
    const login = ok<{storedIn: string}>('login', await run(['login', reg.host, '-u', 'alice', '--password-stdin'], 'wonderland\n'))
    expect(login.storedIn).toBe(config)
    const ref = `${reg.host}/vm/json:1.0`
    const push = ok<{blobs: {copied: number}; referrers: unknown[]; source: string}>('push', await run(['push', ref, '--from', 'example/busybox:1.0']))
    expect(push.blobs.copied).toBe(6) // config, kernel, initrd, disk; the signature's empty config and bundle
    expect(push.referrers).toHaveLength(1)
    expect(push.source).toBe('example/busybox:1.0')
    const copy = ok<{reference: string}>('copy', await run(['copy', ref, `${reg.host}/mirror/json:1.0`]))
    expect(copy.reference).toBe(`${reg.host}/mirror/json:1.0`)
    const d = ok<{source: string; referrers: unknown[]}>('discover', await run(['discover', `${reg.host}/mirror/json:1.0`]))
    expect(d.source).toBe('registry')
    expect(d.referrers).toHaveLength(1)
    ok('inspect', await run(['inspect', ref]))
    ok('sign', await run(['sign', ref, '--key', join(tmp.path, 'ovm.key')]))
    const v = ok<{verified: unknown[]}>('verify', await run(['verify', ref, '--key', join(tmp.path, 'ovm.pub')]))
    expect(v.verified).toHaveLength(2)
    const other = join(tmp.path, 'pulled')
    const pull = ok<{reference: string; source: string}>('pull', await ovm(['pull', ref, '--json'], {home: other, env}))
    expect(pull.source).toBe(ref)
    failed(await ovm(['pull', `${reg.host}/vm/nope:1`, '--json'], {home: other, env}), ExitCode.notFound)
    // A build that pushes.
    const ctx = join(tmp.path, 'b0')
    mkdirSync(ctx, {recursive: true})
    const kv = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    writeFileSync(
      join(ctx, 'Ovmfile'),
      `FROM disk:${join(FIXTURES, 'disk.qcow2')}\nKERNEL ${join(FIXTURES, 'kernel-root', 'boot', `vmlinuz-${kv}`)} MODULES ${join(FIXTURES, 'kernel-root', 'lib', 'modules', kv)}\n`,
    )
    const b = ok<{pushed: string[]}>('build', await run(['build', ctx, '-t', `${reg.host}/vm/built:1`, '--push', '--sign', '--key', join(tmp.path, 'ovm.key')]))
    expect(b.pushed).toEqual([expect.stringMatching(new RegExp(`^${reg.host}/vm/built:1@sha256:[a-f0-9]{64}$`))])
    const out = ok<{removed: boolean}>('logout', await run(['logout', reg.host]))
    expect(out.removed).toBe(true)
    const again = ok<{removed: boolean}>('logout', await run(['logout', reg.host]))
    expect(again.removed).toBe(false)
    failed(await run(['push', ref, '--from', 'example/busybox:1.0']), ExitCode.auth)
  })
})

describe.skipIf(vmSkipReason())('daemon commands with a TCG guest: serve, run, ps, logs, snapshot, stop', () => {
  const tmp = tempDir('ovm-json-vm-')
  const home = join(tmp.path, 'home')
  const socket = join(home, 'ovm.sock')
  let release: () => void = () => undefined
  let serve: ChildProcess | undefined
  let serveOut = ''
  let serveExit: Promise<number | null> = Promise.resolve(null)
  beforeAll(async () => {
    release = await holdVmLock()
    const initrd = heartbeatInitramfs(join(tmp.path, 'initrd'))
    const r = await ovm(['pack', '--name', 'test/hb', '--version', '1', '--kernel', KERNEL, '--initrd', initrd, '--cmdline', 'console=ttyS0 panic=-1', '-t', 'test/hb:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    serve = spawn(process.execPath, [BIN, 'serve', '--json'], {env: {...process.env, OVM_HOME: home, NO_COLOR: '1', CI: 'true'}, stdio: ['ignore', 'pipe', 'ignore']})
    serve.stdout!.on('data', (d: Buffer) => (serveOut += d.toString()))
    serveExit = new Promise((r) => serve!.on('close', r))
    await until(() => existsSync(socket), 30_000, 'the daemon socket')
  })
  afterAll(async () => {
    if (serve && serve.exitCode === null) {
      serve.kill('SIGTERM')
      await serveExit
    }
    release()
    tmp.cleanup()
  })

  it('run --json returns the started instance; ps, logs (NDJSON), snapshot, stop validate; serve prints its socket when stopped', async () => {
    const st = ok<{instance_id: string; state: string}>('run', await ovm(['run', 'test/hb:1', '--json'], {home}))
    expect(st.state).toBe('running')
    const id = st.instance_id
    const ps = ok<{instances: {instance_id: string}[]}>('ps', await ovm(['ps', '--json'], {home}))
    expect(ps.instances.map((i) => i.instance_id)).toContain(id)
    // Wait for a heartbeat, then read the log as NDJSON: every line one valid record.
    let lines: string[] = []
    const logsFn = validator('logs.json')
    for (let i = 0; i < 600; i++) {
      const r = await ovm(['logs', id, '--json'], {home})
      expect(r.code, r.stderr).toBe(0)
      lines = r.stdout.split('\n').filter(Boolean)
      const consoleLines = lines.map((l) => JSON.parse(l) as {type: string; line?: string}).filter((x) => x.type === 'console').map((x) => x.line ?? '')
      if (lastHeartbeat(consoleLines) >= 1) break
      await new Promise((r) => setTimeout(r, 250))
    }
    expect(lines.length).toBeGreaterThan(1)
    for (const l of lines) expect(logsFn(JSON.parse(l)), `${l}\n${problems(logsFn)}`).toBe(true)
    expect(lines.some((l) => l.includes('OVM-HEARTBEAT'))).toBe(true)
    validated.set('logs', lines.length)
    const snap = ok<{snapshot_ref: string}>('snapshot', await ovm(['snapshot', id, '-t', 'test/hb:warm', '--json'], {home}))
    expect(snap.snapshot_ref).toBe('test/hb:warm')
    const stop = ok<{instance_id: string; status: string}>('stop', await ovm(['stop', id, '--json'], {home}))
    expect(stop.instance_id).toBe(id)
    failed(await ovm(['stop', 'abcdefabcdef', '--json'], {home}), ExitCode.notFound)
    failed(await ovm(['logs', 'abcdefabcdef', '--json'], {home}), ExitCode.notFound)
    serve!.kill('SIGTERM')
    expect(await serveExit).toBe(0)
    const doc = ok<{socket: string}>('serve', {code: 0, signal: null, stdout: serveOut, stderr: ''})
    expect(doc.socket).toBe(socket)
  }, 300_000)

  it('build with SNAPSHOT (no steps: no builder VM, one boot to bake) has plan.snapshot and snapshot', async () => {
    const kv = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    const ctx = join(tmp.path, 'bake')
    mkdirSync(ctx, {recursive: true})
    writeFileSync(
      join(ctx, 'Ovmfile'),
      [
        `FROM disk:${join(FIXTURES, 'disk.qcow2')}`,
        `KERNEL ${join(FIXTURES, 'kernel-root', 'boot', `vmlinuz-${kv}`)} MODULES ${join(FIXTURES, 'kernel-root', 'lib', 'modules', kv)}`,
        'CMDLINE "console=ttyS0 panic=-1"',
        'SNAPSHOT WHEN "Run /init as init process" TIMEOUT 60s',
        '',
      ].join('\n'),
    )
    const b = ok<{plan: {snapshot: {when: {kind: string}}}; result: {digest: string}; snapshot: {digest: string; subject: string}}>(
      'build',
      await ovm(['build', ctx, '-t', 'test/bake:1', '--json'], {home}),
    )
    expect(b.plan.snapshot.when.kind).toBe('console')
    expect(b.snapshot.digest).toBe(b.result.digest)
    expect(b.snapshot.subject).not.toBe(b.snapshot.digest)
  }, 300_000)
})

describe('convert (an OCI layout made in the test; no VM)', () => {
  const tmp = tempDir('ovm-json-convert-')
  const home = join(tmp.path, 'home')
  const run = (args: string[]): Promise<RunResult> => ovm([...args, '--json'], {home, cwd: tmp.path})
  afterAll(() => tmp.cleanup())

  it('convert --output (a bare ext4 image) and convert -t REF --kernel REF (an artifact)', async () => {
    await writeTestImage(join(tmp.path, 'image'))
    const bare = ok<{fs: string; output: string; whiteouts: number}>('convert', await run(['convert', 'oci:image:v1', '--output', join(tmp.path, 'root.ext4')]))
    expect(bare.fs).toBe('ext4')
    expect(existsSync(bare.output)).toBe(true)
    expect(bare.whiteouts).toBeGreaterThan(0)
    ok('kernel:import', await run(['kernel', 'import', join(FIXTURES, 'kernel-root'), '-t', 'example/kernel:6.1']))
    const art = ok<{references: string[]; digest: string}>('convert', await run(['convert', 'oci:image:v1', '-t', 'example/app:1.0', '--kernel', 'example/kernel:6.1']))
    expect(art.references).toEqual(['example/app:1.0'])
    const failure = failed(await run(['convert', 'oci:image:v1', '-t', 'example/app:2.0']), ExitCode.usage)
    expect(failure.message).toMatch(/kernel/i)
  }, 300_000)
})

describe('coverage', () => {
  it('every command (not exempt) had real --json output validated above', () => {
    const skipped = new Set([...(vmSkipReason() ? VM_COMMANDS : []), ...(registryAvailable() ? [] : ['login', 'logout', 'push', 'pull', 'copy'])])
    const unchecked = COMMANDS.filter((id) => !skipped.has(id) && !validated.has(id))
    expect(unchecked, `commands whose --json output no scenario validated: add one to test/cli/json-schemas.test.ts`).toEqual([])
  })
})
