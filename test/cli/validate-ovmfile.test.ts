import {readFileSync, readdirSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ROOT, ovm, tempDir} from '../helpers/cli.js'

let tmp: {path: string; cleanup: () => void}
let home: string

beforeAll(() => {
  tmp = tempDir()
  home = join(tmp.path, 'home')
})
afterAll(() => tmp.cleanup())

/** Paths relative to the repository root, where ovm() runs. */
const INVALID = 'examples/ovmfiles/invalid'
const HELLO = 'examples/ovmfiles/valid/hello-scratch'

function expected(name: string): string[] {
  return JSON.parse(readFileSync(join(ROOT, INVALID, `${name}.expected.json`), 'utf8')) as string[]
}

describe('ovm validate Ovmfile', () => {
  it.each(readdirSync(join(ROOT, INVALID)).filter((n) => n.endsWith('.Ovmfile')).map((n) => n.replace(/\.Ovmfile$/, '')))(
    '%s: exit 3, every problem as file:line:col on stderr, nothing on stdout',
    async (name) => {
      const file = `${INVALID}/${name}.Ovmfile`
      const r = await ovm(['validate', file], {home})
      expect(r.code).toBe(3)
      expect(r.stdout).toBe('')
      const want = expected(name)
      expect(r.stderr).toContain(`Error: ${file}: ${want.length} problem${want.length === 1 ? '' : 's'}`)
      for (const e of want) {
        const [at, code] = e.split(' ') as [string, string]
        expect(r.stderr).toMatch(new RegExp(`^  - ${file.replaceAll('.', '\\.')}:${at}: .*\\[${code}\\]$`, 'm'))
      }
      expect(r.stderr).toContain('Code: OVMFILE_INVALID (exit 3)')
    },
  )

  it('--json gives each problem with where, what (with its code) and a hint', async () => {
    const file = `${INVALID}/copy.Ovmfile`
    const r = await ovm(['validate', file, '--json'], {home})
    expect(r.code).toBe(3)
    const {error} = JSON.parse(r.stdout)
    expect(error).toMatchObject({code: 'OVMFILE_INVALID', exitCode: 3, ref: file})
    const details = error.details as {at: string; message: string; hint: string}[]
    expect(details.map((d) => `${d.at.slice(file.length + 1)} ${/\[([A-Z_]+)\]$/.exec(d.message)?.[1]}`)).toEqual(expected('copy'))
    expect(details[0]).toEqual({
      at: `${file}:3:6`,
      message: 'COPY source "/etc/passwd" is outside the build context [COPY_OUTSIDE_CONTEXT]',
      hint: 'Name files inside the build context folder, by paths relative to it.',
    })
    for (const d of details) expect(d.hint.length).toBeGreaterThan(0)
  })

  it('--context decides where COPY sources are looked up', async () => {
    const r = await ovm(['validate', `${HELLO}/Ovmfile`, '--context', INVALID, '--json'], {home})
    expect(r.code).toBe(3)
    const {error} = JSON.parse(r.stdout)
    expect(error.details.map((d: {at: string}) => d.at)).toEqual([`${HELLO}/Ovmfile:9:1`])
    expect(error.details[0].message).toContain('COPY source "hello.sh" does not exist')
  })

  it('a valid Ovmfile exits 0; warnings go to stderr, and into the JSON result', async () => {
    const file = `${HELLO}/Ovmfile`
    const plain = await ovm(['validate', file, '--build-arg', 'UNUSED=1'], {home})
    expect(plain.code).toBe(0)
    expect(plain.stdout).toBe(`${file}: valid Ovmfile (2 steps)\n`)
    expect(plain.stderr).toBe(`${file}:1:1: warning: --build-arg UNUSED is not declared by any ARG [UNUSED_BUILD_ARG]\n`)
    const json = await ovm(['validate', file, '--json'], {home})
    expect(json.code).toBe(0)
    expect(json.stderr).toBe('')
    expect(JSON.parse(json.stdout)).toEqual({file, valid: true, kind: 'ovmfile', steps: 2, warnings: []})
  })

  it('--build-arg values must be KEY=VALUE (a usage error)', async () => {
    const r = await ovm(['validate', `${HELLO}/Ovmfile`, '--build-arg', 'NOEQUALS', '--json'], {home})
    expect(r.code).toBe(2)
    expect(JSON.parse(r.stdout).error.code).toBe('BAD_BUILD_ARG')
  })
})

describe('ovm build --dry-run', () => {
  it('--json returns the plan (version 1) with a key per step, all misses in an empty cache; a second run gives the same keys', async () => {
    const args = ['build', '--dry-run', '--json', '-f', `${HELLO}/Ovmfile`, HELLO]
    const r = await ovm(args, {home})
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const {plan} = JSON.parse(r.stdout)
    expect(plan).toMatchObject({
      version: 1,
      source: `${HELLO}/Ovmfile`,
      base: {description: 'scratch 1G ext4', key: `scratch:${1024 ** 3}:ext4`},
      kernel: {ref: '/boot/vmlinuz-6.1.0-56-amd64', modules: '/lib/modules/6.1.0-56-amd64'},
      toRun: 2,
      fullyCached: false,
      snapshot: {when: {kind: 'console', pattern: '^hello: listening'}, timeoutMs: 30_000},
    })
    expect(plan.steps.map((s: {line: number; kind: string; cached: boolean}) => [s.line, s.kind, s.cached])).toEqual([[9, 'COPY', false], [10, 'RUN', false]])
    expect(plan.steps[0].inputs).toEqual([{source: 'hello.sh', digest: expect.stringMatching(/^sha256:[0-9a-f]{64}$/)}])
    expect(plan.steps[1].parentKey).toBe(plan.steps[0].cacheKey)
    const again = JSON.parse((await ovm(args, {home})).stdout).plan
    expect(again.steps.map((s: {cacheKey: string}) => s.cacheKey)).toEqual(plan.steps.map((s: {cacheKey: string}) => s.cacheKey))
  })

  it('prints the plan for people, one line per step with its Ovmfile line', async () => {
    const r = await ovm(['build', '--dry-run', HELLO], {home})
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('  base: scratch 1G ext4\n')
    expect(r.stdout).toMatch(/^ {3}1\. MISS {3}\S+ {2}line 9: COPY --chmod=0755 hello\.sh \/usr\/local\/bin\/hello$/m)
    expect(r.stdout).toMatch(/^ {3}2\. MISS {3}\S+ {2}line 10: RUN mkdir -p/m)
    expect(r.stdout).toContain('2 of 2 steps to run\n')
  })

  it('a bad Ovmfile stops the dry run with exit 3 and its problems', async () => {
    const r = await ovm(['build', '--dry-run', '--json', '-f', `${INVALID}/copy.Ovmfile`, INVALID], {home})
    expect(r.code).toBe(3)
    expect(JSON.parse(r.stdout).error.details).toHaveLength(expected('copy').length)
  })

  it('without --dry-run, a build needs a tag (exit 2) before booting anything', async () => {
    const r = await ovm(['build', '--json', HELLO], {home})
    expect(r.code).toBe(2)
    expect(JSON.parse(r.stdout).error.code).toBe('MISSING_TAG')
  })
})
