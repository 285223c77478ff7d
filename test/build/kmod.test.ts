/**
 * Module lookup for the initramfs: modules.order gives the same index as
 * walking the folder, a module copied in without being listed is still
 * found (the folder is walked when something is missing), and a listed
 * module whose file is gone is reported missing, not a crash.
 */
import {cpSync, mkdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {BUILDER_MODULES} from '../../src/build/initramfs.js'
import {indexModules, resolveModulesIn} from '../../src/disk/kmod.js'
import {FIXTURES, tempDir} from '../helpers/cli.js'

const VERSION = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
const MODULES = join(FIXTURES, 'kernel-root', 'lib', 'modules', VERSION)

describe('kernel module index', () => {
  const tmp = tempDir('ovm-kmod-')
  afterAll(() => tmp.cleanup())

  it('modules.order and a walk of the folder give the same index', async () => {
    const fromOrder = await indexModules(MODULES)
    const walked = await indexModules(MODULES, {walk: true})
    expect(fromOrder.size).toBeGreaterThan(1000)
    expect([...fromOrder.entries()].sort()).toEqual([...walked.entries()].sort())
    expect(await indexModules(MODULES)).toBe(fromOrder) // once per folder per process
  })

  /** A copy of the modules folder whose modules.order lists only what `listed` accepts. */
  function smallFolder(name: string, listed: (rel: string) => boolean): {dir: string; rels: string[]} {
    const dir = join(tmp.path, name)
    const order = readFileSync(join(MODULES, 'modules.order'), 'utf8').split('\n').filter(Boolean)
    const rels: string[] = []
    for (const rel of order) {
      mkdirSync(join(dir, rel, '..'), {recursive: true})
      cpSync(join(MODULES, rel), join(dir, rel))
      rels.push(rel)
    }
    writeFileSync(join(dir, 'modules.builtin'), readFileSync(join(MODULES, 'modules.builtin')))
    writeFileSync(join(dir, 'modules.order'), `${rels.filter(listed).join('\n')}\n`)
    return {dir, rels}
  }

  it('a module missing from modules.order is found by walking the folder', async () => {
    const full = await resolveModulesIn(MODULES, BUILDER_MODULES)
    expect(full.missing.filter((m) => m !== 'libcrc32c' && m !== 'crc32c_generic')).toEqual([])
    const virtio = full.order.find((m) => m.name === 'virtio_blk')
    expect(virtio).toBeDefined()
    const {dir} = smallFolder('unlisted', (rel) => !rel.endsWith('/virtio_blk.ko'))
    const r = await resolveModulesIn(dir, BUILDER_MODULES)
    expect(r.order.map((m) => m.name)).toEqual(full.order.map((m) => m.name))
    expect(r.order.find((m) => m.name === 'virtio_blk')?.path.startsWith(dir)).toBe(true)
  }, 120_000)

  it('a listed module whose file is gone is reported missing', async () => {
    const {dir, rels} = smallFolder('gone', () => true)
    const rel = rels.find((r) => r.endsWith('/virtio_blk.ko')) as string
    rmSync(join(dir, rel))
    const r = await resolveModulesIn(dir, ['virtio_blk'])
    expect(r.missing).toEqual(['virtio_blk'])
    expect(r.order).toEqual([])
  }, 120_000)
})
