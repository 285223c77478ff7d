/**
 * INITRD in an Ovmfile: the extra initramfs is appended to OVMS-Init's in
 * the artifact's initrd layer, and the kernel unpacks both (here the extra
 * one replaces /init, which proves its files reach the guest).
 */
import {mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {S_IFREG, cpioNewc} from '../../src/disk/cpio.js'
import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'

const skip = vmSkipReason()

describe.skipIf(skip)(`INITRD (an extra initramfs)${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const tmp = tempDir('ovm-initrd-')
  const home = join(tmp.path, 'home')
  const ctx = join(tmp.path, 'ctx')
  let release: () => void
  const extra = gzipSync(
    cpioNewc([{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from('#!/bin/busybox sh\n/bin/busybox echo EXTRA-INIT-OK\n/bin/busybox poweroff -f\n')}]),
  )
  beforeAll(async () => {
    release = await holdVmLock()
    const kv = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    mkdirSync(ctx, {recursive: true})
    writeFileSync(join(ctx, 'extra.cpio.gz'), extra)
    writeFileSync(
      join(ctx, 'Ovmfile'),
      [
        `FROM disk:${join(FIXTURES, 'disk.qcow2')}`,
        `KERNEL ${join(FIXTURES, 'kernel-root', 'boot', `vmlinuz-${kv}`)} MODULES ${join(FIXTURES, 'kernel-root', 'lib', 'modules', kv)}`,
        'INITRD extra.cpio.gz',
        'CMDLINE "console=ttyS0 panic=-1"',
        '',
      ].join('\n'),
    )
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('appends the extra initramfs to OVMS-Init\'s, and the guest runs what it holds', async () => {
    const b = await ovm(['build', ctx, '-t', 'example/initrd:1', '--json'], {home})
    expect(b.code, b.stderr).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'example/initrd:1', '--json'], {home})).stdout) as {layers: {role: string; digest: string; size: number}[]}
    const layer = info.layers.find((l) => l.role === 'initrd')
    expect(layer).toBeDefined()
    const bytes = readFileSync(join(home, 'blobs', 'sha256', (layer as {digest: string}).digest.slice('sha256:'.length)))
    expect(bytes.length).toBeGreaterThan(extra.length)
    expect(bytes.subarray(bytes.length - extra.length).equals(extra)).toBe(true)
    expect(bytes.subarray(0, 2).equals(Buffer.from([0x1f, 0x8b]))).toBe(true) // OVMS-Init's own (gzip) comes first
    const r = await ovm(['run', 'example/initrd:1'], {home})
    expect(r.stdout + r.stderr).toContain('EXTRA-INIT-OK')
  })

  it('FROM that artifact (no KERNEL, no INITRD) keeps its extra initramfs: the guest still runs what it holds', async () => {
    const child = join(tmp.path, 'child')
    mkdirSync(child, {recursive: true})
    writeFileSync(join(child, 'Ovmfile'), 'FROM example/initrd:1\nLABEL child=yes\n')
    const b = await ovm(['build', child, '-t', 'example/initrd-child:1', '--json'], {home})
    expect(b.code, b.stderr).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'example/initrd-child:1', '--json'], {home})).stdout) as {layers: {role: string; digest: string}[]}
    const layer = info.layers.find((l) => l.role === 'initrd') as {digest: string}
    const bytes = readFileSync(join(home, 'blobs', 'sha256', layer.digest.slice('sha256:'.length)))
    expect(bytes.subarray(bytes.length - extra.length).equals(extra)).toBe(true)
    const r = await ovm(['run', 'example/initrd-child:1'], {home})
    expect(r.stdout + r.stderr).toContain('EXTRA-INIT-OK')
  })

  it('a missing INITRD file is named, with exit 4, and nothing is tagged', async () => {
    writeFileSync(join(ctx, 'Ovmfile'), readFileSync(join(ctx, 'Ovmfile'), 'utf8').replace('INITRD extra.cpio.gz', 'INITRD missing.cpio.gz'))
    const b = await ovm(['build', ctx, '-t', 'example/initrd:2'], {home})
    expect(b.code).toBe(4)
    expect(b.stderr).toContain('INITRD not found')
    expect(b.stderr).toContain('missing.cpio.gz')
    expect((await ovm(['inspect', 'example/initrd:2'], {home})).code).toBe(4)
  })
})
