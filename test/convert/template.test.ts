/**
 * templates/container: `ovm init` writes it, its make-image.sh makes an OCI
 * layout with umoci, `ovm build` takes it as `FROM oci:image:app` (the image
 * converted to the base disk, its config inherited, one COPY on top), and
 * the result boots under QEMU running the image's entrypoint as its user.
 */
import {execFile} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'
import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'

const run = promisify(execFile)
const KERNEL_ROOT = join(FIXTURES, 'kernel-root')

describe.skipIf(vmSkipReason())('templates/container builds FROM an OCI layout and boots', () => {
  const tmp = tempDir('ovm-tpl-container-')
  const home = join(tmp.path, 'home')
  const dir = join(tmp.path, 'app')
  let release: () => void
  beforeAll(async () => {
    release = await holdVmLock()
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('make-image.sh + ovm build + ovm run: the entrypoint runs as the image user, with the Ovmfile COPY in its workdir', async () => {
    const init = await ovm(['init', '--template', 'container', dir], {home})
    expect(init.code, init.stderr).toBe(0)
    const mk = await run('sh', [join(dir, 'make-image.sh')])
    expect(mk.stdout).toContain('oci:image:app')
    const plan = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'tpl/container:1', '--dry-run', '--json'], {home})
    expect(plan.code, plan.stderr).toBe(0)
    expect(JSON.stringify(JSON.parse(plan.stdout).plan)).toContain('oci:image:app')
    const b = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'tpl/container:1', '--json'], {home})
    expect(b.code, b.stderr).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'tpl/container:1', '--json'], {home})).stdout)
    const bootLayer = info.layers.find((l: {role: string}) => l.role === 'bootstrap')
    const bootstrap = JSON.parse(readFileSync(join(home, 'blobs', 'sha256', bootLayer.digest.slice(7)), 'utf8'))
    expect(bootstrap).toMatchObject({env: ['GREETING=hello'], workdir: '/app', entrypoint: ['/app/app.sh'], cmd: ['world'], exposedPorts: ['8080/tcp'], user: 'app'})
    const r = await ovm(['run', 'tpl/container:1'], {home})
    expect(r.stdout).toContain('hello world from ovm: user app (1000:1000) in /app')
    expect(r.stdout).toContain('This line was added by the Ovmfile on top of the image.')
    expect(r.stdout).toContain('@@ovm-exit 0')
    expect(r.code, r.stderr).toBe(0)
    // A rebuild takes the converted base from the cache: nothing boots.
    const again = await ovm(['build', dir, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'tpl/container:1', '--json'], {home})
    expect(again.code, again.stderr).toBe(0)
    expect(JSON.parse(again.stdout).result).toMatchObject({boots: 0})
  })
})
