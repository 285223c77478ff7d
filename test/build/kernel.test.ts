import {execFile} from 'node:child_process'
import {existsSync, readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FIXTURES, ovm, rejects, tempDir} from '../helpers/cli.js'
import {type ImportKernelResult, importKernel, resolveKernel} from '../../src/build/kernel.js'
import {OvmsMediaType} from '../../src/artifact/media-types.js'
import {indexModules} from '../../src/disk/kmod.js'
import {ExitCode, type OvmError} from '../../src/errors/index.js'
import {LayoutStore} from '../../src/oci/layout.js'

const run = promisify(execFile)
const VERSION = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
const DEB = (() => {
  const dir = join(FIXTURES, 'debs')
  const name = existsSync(dir) ? readdirSync(dir).find((n) => n.startsWith('linux-image-') && n.endsWith('.deb')) : undefined
  return name ? join(dir, name) : undefined
})()
const ROOT = join(FIXTURES, 'kernel-root')
const MODULES = join(ROOT, 'lib', 'modules', VERSION)
const CREATED = '2026-01-01T00:00:00Z'

describe('ovm kernel import', () => {
  const tmp = tempDir('ovm-kernel-')
  const home = join(tmp.path, 'home')
  const store = new LayoutStore(home)
  let fromRoot: ImportKernelResult

  beforeAll(async () => {
    fromRoot = await importKernel(store, {source: ROOT, tags: ['example/kernel:root'], created: CREATED})
  }, 300_000)
  afterAll(() => tmp.cleanup())

  it('imports an unpacked root: kernel + kernel-modules layers, kernel.modules.ref set', async () => {
    expect(fromRoot.kernelVersion).toBe(VERSION)
    expect(fromRoot.sourceKind).toBe('root')
    expect(fromRoot.ovms.name).toBe('example/kernel')
    expect(fromRoot.ovms.version).toBe(VERSION)
    const layers = fromRoot.manifest.layers
    expect(layers.map((l) => l.mediaType)).toEqual([OvmsMediaType.kernel, OvmsMediaType.kernelModules])
    expect(fromRoot.ovms.kernel?.ref).toBe(layers[0]!.digest)
    expect(fromRoot.ovms.kernel?.modules?.ref).toBe(layers[1]!.digest)

    const r = await ovm(['inspect', 'example/kernel:root', '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    const info = JSON.parse(r.stdout)
    expect(info.layers.map((l: {role: string}) => l.role)).toEqual(['kernel', 'kernel-modules'])

    const listing = (await run('tar', ['-tf', store.blobPath(layers[1]!.digest)], {maxBuffer: 64 * 1024 * 1024})).stdout.split('\n')
    expect(listing).toContain(`lib/modules/${VERSION}/kernel/fs/ext4/ext4.ko`)
    expect(listing.every((n) => n === '' || n === 'lib/' || n.startsWith('lib/modules/'))).toBe(true)
    const verbose = (await run('tar', ['-tvf', store.blobPath(layers[1]!.digest), `lib/modules/${VERSION}/kernel/fs/ext4/ext4.ko`])).stdout
    expect(verbose).toMatch(/ 0\/0 .*1970-01-01 00:00 /)
  })

  it.skipIf(!DEB)('imports a Debian kernel package: the same kernel and modules digests as the root', async () => {
    const r = await ovm(['kernel', 'import', DEB!, '-t', 'example/kernel:6.1', '--created', CREATED, '--json'], {home})
    expect(r.code, r.stderr + r.stdout).toBe(0)
    const out = JSON.parse(r.stdout).result ?? JSON.parse(r.stdout)
    expect(out.sourceKind).toBe('deb')
    expect(out.kernelVersion).toBe(VERSION)
    expect(out.ovms.kernel.ref).toBe(fromRoot.ovms.kernel?.ref)
    // kernel-root is `dpkg-deb -x` of the same package (scripts/fixtures.sh) and the tar is deterministic:
    // the modules layer, and so the whole artifact, come out the same.
    expect(out.ovms.kernel.modules.ref).toBe(fromRoot.ovms.kernel?.modules?.ref)
    expect(out.digest).toBe(fromRoot.digest)
    const info = JSON.parse((await ovm(['inspect', 'example/kernel:6.1', '--json'], {home})).stdout)
    expect(info.layers.map((l: {role: string}) => l.role)).toEqual(['kernel', 'kernel-modules'])
  }, 300_000)

  it('imports a kernel image with --modules (same digest as the root)', async () => {
    const r = await importKernel(store, {source: join(FIXTURES, 'vmlinuz'), modules: MODULES, tags: ['example/kernel:image'], created: CREATED})
    expect(r.sourceKind).toBe('image')
    expect(r.digest).toBe(fromRoot.digest)
  }, 300_000)

  it('resolveKernel unpacks the artifact once into the cache: the same kernel bytes, modules with ext4', async () => {
    const k = await resolveKernel(store, 'example/kernel:root')
    expect(k.kernel.startsWith(join(home, 'cache', 'kernels', fromRoot.digest.slice('sha256:'.length)))).toBe(true)
    expect(readFileSync(k.kernel).equals(readFileSync(join(FIXTURES, 'vmlinuz')))).toBe(true)
    expect(k.modulesDir).toBe(join(home, 'cache', 'kernels', fromRoot.digest.slice('sha256:'.length), 'lib', 'modules', VERSION))
    const index = await indexModules(k.modulesDir)
    expect(index.has('ext4')).toBe(true)
    expect(index.has('virtio_blk')).toBe(true)
    await k.cleanup()
    // Reused: nothing new beside the one folder.
    const again = await resolveKernel(store, 'example/kernel:root')
    expect(again.kernel).toBe(k.kernel)
    expect(readdirSync(join(home, 'cache', 'kernels'))).toEqual([fromRoot.digest.slice('sha256:'.length)])
  }, 120_000)

  it('resolveKernel takes a local kernel path with its modules folder', async () => {
    const k = await resolveKernel(store, join(FIXTURES, 'vmlinuz'), {modules: MODULES})
    expect(k).toMatchObject({kernel: join(FIXTURES, 'vmlinuz'), modulesDir: MODULES, version: VERSION})
  })

  it('refuses a missing source (exit 4) and a file that is not a kernel (exit 3)', async () => {
    const missing = await rejects<OvmError>(importKernel(store, {source: join(tmp.path, 'nope'), tags: ['x/k:1']}))
    expect(missing.exitCode).toBe(ExitCode.notFound)
    expect(missing.message).toContain('nope')

    const junk = join(tmp.path, 'junk.bin')
    writeFileSync(junk, Buffer.alloc(4096, 7))
    const notKernel = await rejects<OvmError>(importKernel(store, {source: junk, modules: MODULES, tags: ['x/k:1']}))
    expect(notKernel.code).toBe('NOT_A_KERNEL')
    expect(notKernel.exitCode).toBe(ExitCode.invalid)

    const r = await ovm(['kernel', 'import', join(tmp.path, 'nope'), '-t', 'x/k:1'], {home})
    expect(r.code).toBe(ExitCode.notFound)
    expect(r.stderr).toContain('not found')
    const r2 = await ovm(['kernel', 'import', junk, '--modules', MODULES, '-t', 'x/k:1', '--json'], {home})
    expect(r2.code).toBe(ExitCode.invalid)
    expect(JSON.parse(r2.stdout).error.code).toBe('NOT_A_KERNEL')
  })

  it('refuses modules without the builder\'s drivers, naming them', async () => {
    const mods = join(tmp.path, 'modules', VERSION)
    await run('mkdir', ['-p', join(mods, 'kernel', 'fs', 'ext4')])
    await run('cp', [join(MODULES, 'kernel', 'fs', 'ext4', 'ext4.ko'), join(mods, 'kernel', 'fs', 'ext4')])
    const err = await rejects<OvmError>(importKernel(store, {source: join(FIXTURES, 'vmlinuz'), modules: mods, tags: ['x/k:1']}))
    expect(err.code).toBe('MODULES_MISSING')
    expect(err.exitCode).toBe(ExitCode.invalid)
    expect(err.message).toMatch(/virtio_blk/)
  })

  it('refuses a kernel image without --modules, a folder without a kernel, and a .deb without a kernel', async () => {
    const noMods = await rejects<OvmError>(importKernel(store, {source: join(FIXTURES, 'vmlinuz'), tags: ['x/k:1']}))
    expect(noMods.code).toBe('MODULES_REQUIRED')

    const empty = join(tmp.path, 'empty-root')
    await run('mkdir', ['-p', join(empty, 'boot')])
    const noKernel = await rejects<OvmError>(importKernel(store, {source: empty, tags: ['x/k:1']}))
    expect(noKernel.code).toBe('NO_KERNEL')
    expect(noKernel.exitCode).toBe(ExitCode.invalid)

    const pkg = join(tmp.path, 'pkg')
    await run('mkdir', ['-p', join(pkg, 'DEBIAN'), join(pkg, 'usr', 'share', 'doc', 'nokernel')])
    writeFileSync(join(pkg, 'DEBIAN', 'control'), 'Package: nokernel\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: no kernel here\n')
    writeFileSync(join(pkg, 'usr', 'share', 'doc', 'nokernel', 'README'), 'hi\n')
    const deb = join(tmp.path, 'nokernel.deb')
    await run('dpkg-deb', ['--build', '--root-owner-group', pkg, deb])
    const noKernelDeb = await rejects<OvmError>(importKernel(store, {source: deb, tags: ['x/k:1']}))
    expect(noKernelDeb.code).toBe('NO_KERNEL')
    expect(noKernelDeb.message).toContain('nokernel.deb')
  })

  it('resolveKernel refuses an artifact that is not a kernel artifact', async () => {
    const r = await ovm(
      ['pack', '--name', 'x/plain', '--version', '1', '--kernel', join(FIXTURES, 'vmlinuz'), '--created', CREATED, '-t', 'x/plain:1'],
      {home},
    )
    expect(r.code, r.stderr).toBe(0)
    const err = await rejects<OvmError>(resolveKernel(store, 'x/plain:1'))
    expect(err.code).toBe('NOT_A_KERNEL_ARTIFACT')
    const missing = await rejects<OvmError>(resolveKernel(store, 'x/none:1'))
    expect(missing.exitCode).toBe(ExitCode.notFound)
  })
})
