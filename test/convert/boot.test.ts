/**
 * `ovm convert` end to end under QEMU (TCG here): the test image from an OCI
 * layout, and the same image pushed to Debian's docker-registry with skopeo
 * and converted from there; each artifact booted once with OVMS-Init.
 */
import {execFile, execFileSync} from 'node:child_process'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'
import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {type TestRegistry, registryAvailable, startRegistry} from '../helpers/registry.js'
import {writeTestImage} from './image.js'

const run = promisify(execFile)
const hasMksquashfs = (): boolean => {
  try {
    execFileSync('mksquashfs', ['-version'], {stdio: 'ignore'})
    return true
  } catch {
    return false
  }
}
const skip = vmSkipReason()

/** The lines the test image's entrypoint prints, as OVMS-Init runs it. */
function expectWorkload(stdout: string, args: string, user = '1000:1000 home=/home/app', host = 'convert-test'): void {
  expect(stdout).toContain(`greeting=hello from oci cwd=/srv/app args=${args} user=${user} host=${host}`)
  // /home/app is 0750 app:app: another uid is refused, which shows the privileges really were dropped
  if (user.startsWith('1000:1000')) expect(stdout).toContain('owned 1000:1000 640')
  else expect(stdout).toContain("stat: can't stat '/home/app/owned.txt': Permission denied")
  expect(stdout).toContain('suid 0:0 4755')
  expect(stdout).toContain('links 2')
  expect(stdout).toContain('opt: c ')
  expect(stdout).toContain('doomed-absent')
  expect(stdout).toContain('marker through lib -> usr/lib')
  expect(stdout).toContain('@@ovm-exit 7')
}

describe.skipIf(skip)('ovm convert: a container image booted with OVMS-Init', () => {
  const tmp = tempDir('ovm-convert-boot-')
  const home = join(tmp.path, 'home')
  const image = join(tmp.path, 'image')
  let release: () => void
  let registry: TestRegistry | undefined

  beforeAll(async () => {
    release = await holdVmLock()
    await writeTestImage(image)
    const k = await ovm(['kernel', 'import', join(FIXTURES, 'kernel-root'), '-t', 'test/kernel:6.1'], {home})
    expect(k.code, k.stderr).toBe(0)
  })
  afterAll(async () => {
    await stopDaemon(home)
    await registry?.stop()
    release?.()
    tmp.cleanup()
  })

  it('converts an OCI layout; the VM runs entrypoint + cmd as the image user with its env and workdir, and ovm run exits with its status', async () => {
    const c = await ovm(['convert', `oci:${image}:v1`, '-t', 'test/convert-test:1', '--kernel', 'test/kernel:6.1', '--size-buffer', '16M', '--json'], {home})
    expect(c.code, c.stderr).toBe(0)
    const res = JSON.parse(c.stdout)
    expect(res).toMatchObject({fs: 'ext4', whiteouts: 2, references: ['test/convert-test:1'], bootstrap: {user: 'app', workdir: '/srv/app', exposedPorts: ['8080/tcp']}})
    const info = JSON.parse((await ovm(['inspect', 'test/convert-test:1', '--json'], {home})).stdout)
    expect(info.layers.map((l: {role: string}) => l.role)).toEqual(['kernel', 'initrd', 'disk', 'bootstrap'])
    const boot = await ovm(['run', 'test/convert-test:1'], {home})
    expectWorkload(boot.stdout, '2:first|two words')
    expect(boot.code, boot.stderr).toBe(7)
  })

  it.skipIf(!registryAvailable())('converts the same image pushed to docker-registry with skopeo; `ovm run REF -- ARGS` replaces cmd', async () => {
    registry = await startRegistry()
    await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${image}:v1`, `docker://${registry.host}/convert/test:v1`])
    const c = await ovm(['convert', `docker://${registry.host}/convert/test:v1`, '-t', 'test/convert-test:2', '--kernel', 'test/kernel:6.1', '--json'], {home})
    expect(c.code, c.stderr).toBe(0)
    const res = JSON.parse(c.stdout)
    expect(res.source).toBe(`${registry.host}/convert/test:v1`)
    const boot = await ovm(['run', 'test/convert-test:2', '--', 'over', 'an arg', ''], {home})
    expectWorkload(boot.stdout, '3:over|an arg')
    expect(boot.code, boot.stderr).toBe(7)
  })

  it.skipIf(!hasMksquashfs())('squashfs root under a tmpfs overlay; a uid:gid the image has no passwd entry for', async () => {
    const img = join(tmp.path, 'image-uid')
    await writeTestImage(img, '/bin/busybox', '4242:4343')
    const c = await ovm(['convert', `oci:${img}:v1`, '--fs', 'squashfs', '-t', 'test/sq:1', '--kernel', 'test/kernel:6.1'], {home})
    expect(c.code, c.stderr).toBe(0)
    const boot = await ovm(['run', 'test/sq:1'], {home})
    expectWorkload(boot.stdout, '2:first|two words', '4242:4343 home=/', 'sq')
    expect(boot.code, boot.stderr).toBe(7)
  })
})
