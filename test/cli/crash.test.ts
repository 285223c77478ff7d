import {existsSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {hashAllBlobs, ovm, packArgs, spawnOvm, tempDir} from '../helpers/cli.js'

let tmp: {path: string; cleanup: () => void}
let home: string

beforeAll(() => {
  tmp = tempDir()
  home = join(tmp.path, 'home')
})
afterAll(() => tmp.cleanup())

function ingestFiles(): {name: string; size: number}[] {
  const dir = join(home, 'ingest')
  if (!existsSync(dir)) return []
  return readdirSync(dir).map((name) => ({name, size: statSync(join(dir, name)).size}))
}

describe('a crash never leaves a bad blob', () => {
  it('SIGKILL in the middle of `ovm pack`: no partial blob, store verify passes, prune cleans up', async () => {
    // Something already in the store, to show it survives.
    expect((await ovm(packArgs('example/busybox:1.0'), {home})).code).toBe(0)
    const before = new Set(hashAllBlobs(home).map((b) => b.digest))

    const big = join(tmp.path, 'big.raw')
    writeFileSync(big, '')
    truncateSync(big, 768 * 1024 * 1024)
    const child = spawnOvm([...packArgs('example/big:1'), '--disk', `${big}:raw`], {home})
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)))
    const deadline = Date.now() + 30_000
    while (!ingestFiles().some((f) => f.size > 32 * 1024 * 1024)) {
      if (Date.now() > deadline) throw new Error('pack never reached the big disk')
      await sleep(10)
    }
    child.kill('SIGKILL')
    expect(await exited).toBe('SIGKILL')

    // The half-written disk is in ingest/, never in blobs/.
    expect(ingestFiles().length).toBe(1)
    const blobs = hashAllBlobs(home)
    expect(blobs.filter((b) => !b.ok)).toEqual([])
    for (const b of blobs) expect(statSync(join(home, 'blobs', 'sha256', b.digest.slice(7))).size).toBeLessThan(512 * 1024 * 1024)
    // The kill left the index as it was.
    const ls = JSON.parse((await ovm(['ls', '--json'], {home})).stdout)
    expect(ls.artifacts.map((a: {reference: string}) => a.reference)).toEqual(['example/busybox:1.0'])

    const v = await ovm(['store', 'verify', '--json'], {home})
    expect(v.code).toBe(0)
    const report = JSON.parse(v.stdout)
    expect(report).toMatchObject({ok: true, bad: [], missing: [], staleIngest: 1})

    const p = JSON.parse((await ovm(['prune', '--json'], {home})).stdout)
    expect(p.ingestRemoved).toBe(1)
    // Blobs the dead pack wrote before the disk (kernel, initrd, qcow2 disk) were the same as the tagged ones.
    expect(p.removed).toEqual([])
    expect(ingestFiles()).toEqual([])
    expect(new Set(hashAllBlobs(home).map((b) => b.digest))).toEqual(before)
  })

  it('a flipped byte is found by `ovm store verify` (exit 5) and quarantined', async () => {
    const info = JSON.parse((await ovm(['inspect', 'example/busybox:1.0', '--json'], {home})).stdout)
    const kernel = info.layers.find((l: {role: string}) => l.role === 'kernel')
    const path = join(home, 'blobs', 'sha256', kernel.digest.slice(7))
    const buf = readFileSync(path)
    buf[4096] = buf[4096]! ^ 0x01
    writeFileSync(path, buf)

    const v = await ovm(['store', 'verify'], {home})
    expect(v.code).toBe(5)
    expect(v.stdout).toContain(`CORRUPT ${kernel.digest}`)
    expect(existsSync(path)).toBe(false)
    expect(existsSync(join(home, 'quarantine', 'sha256', kernel.digest.slice(7)))).toBe(true)

    // Now the artifact is incomplete, and verify says which blob of which reference is missing.
    const again = await ovm(['store', 'verify', '--json'], {home})
    expect(again.code).toBe(5)
    expect(JSON.parse(again.stdout).missing).toEqual([{digest: kernel.digest, reference: 'example/busybox:1.0'}])
    const r = await ovm(['pack', ...packArgs('example/busybox:1.0').slice(1)], {home})
    expect(r.code).toBe(0) // packing again restores the blob
    expect((await ovm(['store', 'verify'], {home})).code).toBe(0)
    expect(hashAllBlobs(home).filter((b) => !b.ok)).toEqual([])
  })
})
