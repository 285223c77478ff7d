import {mkdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {checkContext} from '../../src/build/context.js'
import {type BuildPlan, type CacheIndex, planBuild} from '../../src/build/plan.js'
import {type ParseOptions, parseOvmfile} from '../../src/ovmfile/parse.js'
import {tempDir} from '../helpers/cli.js'

let tmp: {path: string; cleanup: () => void}
let n = 0
beforeAll(() => {
  tmp = tempDir('ovm-plan-')
})
afterAll(() => tmp.cleanup())

/** A fresh context folder holding `files`. */
function context(files: Record<string, string>): string {
  const dir = join(tmp.path, `ctx${n++}`)
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), {recursive: true})
    writeFileSync(join(dir, name), content)
  }
  mkdirSync(dir, {recursive: true})
  return dir
}

async function plan(text: string, files: Record<string, string> = {}, opts: {cache?: CacheIndex; baseKey?: string; parse?: ParseOptions} = {}): Promise<BuildPlan> {
  const r = parseOvmfile(text, 'Ovmfile', opts.parse)
  expect(r.errors).toEqual([])
  const ctx = await checkContext(r.ovmfile, context(files))
  expect(ctx.problems).toEqual([])
  return planBuild(r.ovmfile, {baseKey: opts.baseKey ?? 'scratch:1073741824:ext4', baseDescription: 'scratch 1G ext4', sources: ctx.digests}, opts.cache ?? {})
}

const keys = (p: BuildPlan): string[] => p.steps.map((s) => s.cacheKey)

const FILES = {'a.txt': 'a\n', 'b.txt': 'b\n', 'conf/app.toml': 'port = 1\n'}
const TEXT = [
  'FROM scratch 1G',
  'KERNEL /boot/vmlinuz',
  'ARG V=1',
  'ENV HOME=/root',
  'WORKDIR /srv',
  'COPY a.txt ./',
  'RUN echo one > /one',
  'COPY b.txt conf ./',
  'RUN echo two > /two',
].join('\n')

describe('planBuild', () => {
  it('the same input gives the same plan; keys chain from one step to the next', async () => {
    const p1 = await plan(TEXT, FILES)
    const p2 = await plan(TEXT, FILES)
    expect(keys(p1)).toEqual(keys(p2))
    expect(new Set(keys(p1)).size).toBe(4)
    for (const k of keys(p1)) expect(k).toMatch(/^sha256:[0-9a-f]{64}$/)
    for (let i = 1; i < p1.steps.length; i++) expect(p1.steps[i]?.parentKey).toBe(p1.steps[i - 1]?.cacheKey)
    expect(p1).toMatchObject({version: 1, source: 'Ovmfile', base: {key: 'scratch:1073741824:ext4'}, kernel: {ref: '/boot/vmlinuz'}, toRun: 4, fullyCached: false})
    expect(p1.steps.map((s) => [s.index, s.line, s.kind])).toEqual([[0, 6, 'COPY'], [1, 7, 'RUN'], [2, 8, 'COPY'], [3, 9, 'RUN']])
    expect(p1.steps[2]?.inputs.map((i) => i.source)).toEqual(['b.txt', 'conf'])
  })

  it("changing a COPY input's content changes that step's key and every later one, not earlier ones", async () => {
    const p1 = await plan(TEXT, FILES)
    const p2 = await plan(TEXT, {...FILES, 'conf/app.toml': 'port = 2\n'})
    const [a, b] = [keys(p1), keys(p2)]
    expect(b.slice(0, 2)).toEqual(a.slice(0, 2))
    expect(b[2]).not.toBe(a[2])
    expect(b[3]).not.toBe(a[3])
    const p3 = await plan(TEXT, {...FILES, 'a.txt': 'A\n'})
    expect(keys(p3).filter((k, i) => k === a[i])).toEqual([])
  })

  it('a different base changes every key', async () => {
    const a = keys(await plan(TEXT, FILES))
    const b = keys(await plan(TEXT, FILES, {baseKey: 'sha256:other'}))
    expect(b.filter((k, i) => k === a[i])).toEqual([])
  })

  it('an ENV, ARG or WORKDIR change before a step changes it and what follows; after it, nothing before', async () => {
    const base = keys(await plan(TEXT, FILES))
    const envBefore = keys(await plan(TEXT.replace('ENV HOME=/root', 'ENV HOME=/home'), FILES))
    expect(envBefore.filter((k, i) => k === base[i])).toEqual([])
    const envMiddle = keys(await plan(TEXT.replace('COPY b.txt', 'ENV X=1\nCOPY b.txt'), FILES))
    expect(envMiddle.slice(0, 2)).toEqual(base.slice(0, 2))
    expect(envMiddle.slice(2).filter((k, i) => k === base[i + 2])).toEqual([])
    const argOverride = keys(await plan(TEXT, FILES, {parse: {buildArgs: {V: '2'}}}))
    expect(argOverride.filter((k, i) => k === base[i])).toEqual([])
    const workdir = keys(await plan(TEXT.replace('RUN echo two', 'WORKDIR /tmp\nRUN echo two'), FILES))
    expect(workdir.slice(0, 3)).toEqual(base.slice(0, 3))
    expect(workdir[3]).not.toBe(base[3])
    // ENV after the last step changes no step.
    expect(keys(await plan(`${TEXT}\nENV LATE=1\nEXPOSE 80`, FILES))).toEqual(base)
  })

  it('COPY flags are part of the key', async () => {
    const base = keys(await plan(TEXT, FILES))
    const chmod = keys(await plan(TEXT.replace('COPY b.txt', 'COPY --chmod=600 b.txt'), FILES))
    expect(chmod.slice(0, 2)).toEqual(base.slice(0, 2))
    expect(chmod[2]).not.toBe(base[2])
  })

  it('formatting does not change a key: comments, keyword case, spacing between words, line continuations, ENV order', async () => {
    const base = keys(await plan(TEXT, FILES))
    const reformatted = [
      '# a comment',
      'from   scratch 1G',
      'KERNEL /boot/vmlinuz',
      'ARG V=1',
      'ENV HOME=/root',
      '',
      'workdir    /srv/',
      'COPY   a.txt   ./',
      'run    echo one > /one   ',
      'COPY b.txt \\',
      '     conf \\',
      '     ./',
      'RUN echo two \\',
      '    > /two',
    ].join('\n')
    expect(keys(await plan(reformatted, FILES))).toEqual(base)
    // The same variables set in another order give the same state, hence the same key.
    const ab = keys(await plan('FROM scratch 1G\nKERNEL k\nENV A=1\nENV B=2\nRUN true'))
    const ba = keys(await plan('FROM scratch 1G\nKERNEL k\nENV B=2 A=1\nRUN true'))
    expect(ba).toEqual(ab)
  })

  it('whitespace inside a shell-form RUN command does change its key (it can matter to the shell)', async () => {
    const one = keys(await plan('FROM scratch 1G\nKERNEL k\nRUN echo "a b" > /f'))
    const two = keys(await plan('FROM scratch 1G\nKERNEL k\nRUN echo "a  b" > /f'))
    expect(two[0]).not.toBe(one[0])
    // Exec form and shell form of the "same" command are different steps too.
    const exec = keys(await plan('FROM scratch 1G\nKERNEL k\nRUN ["echo", "a b"]'))
    const shell = keys(await plan('FROM scratch 1G\nKERNEL k\nRUN echo "a b"'))
    expect(exec[0]).not.toBe(shell[0])
  })

  it('marks steps cached only up to the first miss', async () => {
    const k = keys(await plan(TEXT, FILES))
    const at = '2026-01-01T00:00:00Z'
    // Everything but step 2 is in the cache: steps 2 and 3 must run (3's parent will be new).
    const partial: CacheIndex = {[k[0]!]: {layer: 'sha256:l0', createdAt: at}, [k[1]!]: {createdAt: at}, [k[3]!]: {layer: 'sha256:l3', createdAt: at}}
    const p = await plan(TEXT, FILES, {cache: partial})
    expect(p.steps.map((s) => s.cached)).toEqual([true, true, false, false])
    expect(p.steps.map((s) => s.layer)).toEqual(['sha256:l0', undefined, undefined, undefined])
    expect(p.toRun).toBe(2)
    expect(p.fullyCached).toBe(false)

    const full: CacheIndex = Object.fromEntries(k.map((key, i) => [key, {layer: `sha256:l${i}`, createdAt: at}]))
    const all = await plan(TEXT, FILES, {cache: full})
    expect(all.steps.every((s) => s.cached)).toBe(true)
    expect(all).toMatchObject({toRun: 0, fullyCached: true})

    const none = await plan(TEXT, FILES, {cache: {[k[1]!]: {createdAt: at}}})
    expect(none.steps.map((s) => s.cached)).toEqual([false, false, false, false])
    expect(none.toRun).toBe(4)
  })

  it('carries the SNAPSHOT spec and leaves out a kernel the file does not name', async () => {
    const p = await plan('FROM example/base:1\nRUN true\nSNAPSHOT WHEN "up" TIMEOUT 5s')
    expect(p.kernel).toBeUndefined()
    expect(p.snapshot).toMatchObject({when: {kind: 'console', pattern: 'up'}, timeoutMs: 5000})
  })
})
