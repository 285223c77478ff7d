/**
 * The first KVM test: /dev/kvm opens and runs guest code. It runs where
 * /dev/kvm works (inside the nested harness in CI: `npm run test:kvm`) and
 * skips, saying why, everywhere else.
 */
import {closeSync, constants, fstatSync, openSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'

import {IN_NESTED, PROBE_MODES, REPO, expectedBytes, kvmSkipReason, kvmTitle, runProbe} from './helpers.js'

const skip = await kvmSkipReason()

describe.skipIf(skip !== undefined)(kvmTitle('KVM harness', skip), () => {
  it('opens /dev/kvm read-write, a character device', () => {
    const fd = openSync('/dev/kvm', constants.O_RDWR)
    try {
      const st = fstatSync(fd)
      expect(st.isCharacterDevice()).toBe(true)
    } finally {
      closeSync(fd)
    }
  })

  it.each([
    {count: 8, seed: 0x42},
    {count: 300, seed: 250}, // wraps past 0xff, and more than one 8-bit loop's worth
  ])('runs the probe guests ($count bytes from seed $seed) in every mode, each writing the expected bytes then halting', async ({count, seed}) => {
    const r = await runProbe(count, seed)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const lines = r.stdout.trim().split('\n')
    expect(lines).toHaveLength(PROBE_MODES.length)
    const want = expectedBytes(count, seed)
    for (const [i, mode] of PROBE_MODES.entries()) {
      const m = /^kvm-probe: ok: (.+), api (\d+), (\d+) bytes on port 0x3f8: ([0-9a-f ]+), then hlt \(([\d.]+) ms\)$/.exec(lines[i] as string)
      expect(m, lines[i]).not.toBeNull()
      expect(m?.[1]).toBe(mode)
      expect(Number(m?.[2])).toBe(12)
      expect(Number(m?.[3])).toBe(count)
      expect(m?.[4]).toBe(want)
    }
  })

  it('reports a probe that was asked for something impossible as a usage error, not a pass', async () => {
    const r = await runProbe(0, 0x42)
    expect(r.code).toBe(2)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(/COUNT must be a number in \[1, 4096\], got '0'/)
  })

  it.runIf(IN_NESTED)('runs inside the nested harness with the checkout writable and the host root behind an overlay', () => {
    const f = join(REPO, 'test', '.cache', 'nested', `written-in-guest-${process.pid}`)
    writeFileSync(f, 'x')
    expect(readFileSync(f, 'utf8')).toBe('x')
    rmSync(f)
    const mounts = readFileSync('/proc/mounts', 'utf8')
    expect(mounts).toMatch(/^overlay \/ overlay /m)
    expect(mounts).toMatch(new RegExp(`^checkout ${REPO.replace(/\/$/, '')} 9p `, 'm'))
  })
})
