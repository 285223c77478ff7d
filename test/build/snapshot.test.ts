import {copyFileSync, mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'
import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'

const SERVICE = `ARG KERNEL_ROOT
FROM scratch 64M
KERNEL \${KERNEL_ROOT}/vmlinuz MODULES \${KERNEL_ROOT}/kernel-root/lib/modules/6.1.0-56-amd64
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENTRYPOINT ["/bin/sh", "-c", "echo service up; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
SNAPSHOT WHEN "^tick 3$" TIMEOUT 90s
`

describe.skipIf(vmSkipReason())('SNAPSHOT: a build that bakes a RAM snapshot', () => {
  const tmp = tempDir('ovm-bake-')
  const home = join(tmp.path, 'home')
  const ctx = join(tmp.path, 'ctx')
  let release: () => void

  beforeAll(async () => {
    release = await holdVmLock()
    mkdirSync(ctx, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    writeFileSync(join(ctx, 'Ovmfile'), SERVICE)
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('snapshots once the console says ready; the artifact restores and carries on from there', async () => {
    const r = await ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', 'test/svc:1', '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.snapshot.pausedMs).toBeGreaterThanOrEqual(0)
    const info = JSON.parse((await ovm(['inspect', 'test/svc:1', '--json'], {home})).stdout)
    expect(info.layers.map((l: {role: string}) => l.role)).toContain('ram-snapshot')
    expect(info.manifest.subject?.digest).toBe(out.snapshot.subject)
    expect(info.descriptor.digest).toBe(out.snapshot.digest)

    const run = await ovm(['run', '-d', 'test/svc:1', '--json'], {home})
    expect(run.code, run.stderr).toBe(0)
    const st = JSON.parse(run.stdout)
    expect(st.metrics.restored).toBe(true)
    let logs = ''
    for (let i = 0; i < 100 && !/tick [4-9]/.test(logs); i++) {
      await sleep(100)
      logs = (await ovm(['logs', st.instance_id], {home})).stdout
    }
    expect(logs).toMatch(/tick [4-9]/)
    expect(logs).not.toContain('service up') // restored, not booted: the counter did not start again
    expect(logs).not.toMatch(/^tick 0$/m)
    await ovm(['stop', st.instance_id], {home})
  })

  it('a rebuild with nothing changed is the same artifact and bakes nothing; a changed SNAPSHOT bakes again', async () => {
    const build = (): ReturnType<typeof ovm> => ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', 'test/svc:1', '-t', 'test/svc:again', '--json'], {home})
    const before = JSON.parse((await ovm(['inspect', 'test/svc:1', '--json'], {home})).stdout)
    const r = await build()
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.result.boots).toBe(0)
    // A new bake would hold new RAM bytes, so a new digest: the same digest means none was taken.
    expect(out.snapshot).toMatchObject({cached: true, digest: before.descriptor.digest, subject: before.manifest.subject.digest})
    for (const t of ['test/svc:1', 'test/svc:again']) {
      expect(JSON.parse((await ovm(['inspect', t, '--json'], {home})).stdout).descriptor.digest).toBe(before.descriptor.digest)
    }
    writeFileSync(join(ctx, 'Ovmfile'), SERVICE.replace('TIMEOUT 90s', 'TIMEOUT 100s'))
    try {
      const again = JSON.parse((await build()).stdout)
      expect(again.result.boots).toBe(0)
      expect(again.snapshot.cached).toBeUndefined()
      expect(again.snapshot.subject).toBe(before.manifest.subject.digest)
      expect(again.snapshot.digest).not.toBe(before.descriptor.digest)
    } finally {
      writeFileSync(join(ctx, 'Ovmfile'), SERVICE)
    }
  })

  it('WHEN-RUN: snapshots once a command run in the VM succeeds', async () => {
    const ctx2 = join(tmp.path, 'ctx2')
    mkdirSync(ctx2, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx2, 'busybox'))
    writeFileSync(
      join(ctx2, 'Ovmfile'),
      SERVICE.replace('echo tick $i;', 'echo tick $i; [ $i = 2 ] && mkdir -p /tmp && touch /tmp/ready;').replace('SNAPSHOT WHEN "^tick 3$" TIMEOUT 90s', 'SNAPSHOT WHEN-RUN "test -f /tmp/ready" TIMEOUT 90s'),
    )
    const r = await ovm(['build', ctx2, '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', 'test/svc2:1', '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    const run = await ovm(['run', '-d', 'test/svc2:1', '--json'], {home})
    expect(run.code, run.stderr).toBe(0)
    const st = JSON.parse(run.stdout)
    expect(st.metrics.restored).toBe(true)
    let logs = ''
    for (let i = 0; i < 100 && !/tick [3-9]/.test(logs); i++) {
      await sleep(100)
      logs = (await ovm(['logs', st.instance_id], {home})).stdout
    }
    expect(logs).toMatch(/tick [3-9]/)
    expect(logs).not.toMatch(/^tick [01]$/m) // the probe succeeded after tick 2; the restore carries on from there
    await ovm(['stop', st.instance_id], {home})
  })
})
