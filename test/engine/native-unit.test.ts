/**
 * The native engine's C unit tests (native/test/test_*.c), one vitest test
 * per test binary so CI counts them. Builds native/ with `make -C native`
 * first. A binary that exits 77 skipped itself (a tool it needs, such as
 * qemu-img, is missing) and is reported as skipped with its own message.
 * Set OVM_NATIVE_ASAN=1 to build and run them under
 * -fsanitize=address,undefined instead (slower).
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {readdirSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {beforeAll, describe, expect, it} from 'vitest'

const NATIVE = fileURLToPath(new URL('../../native/', import.meta.url))
const ASAN = process.env.OVM_NATIVE_ASAN === '1'
const BUILD = join(NATIVE, ASAN ? 'build/asan' : 'build')

function missingTools(): string | undefined {
  for (const tool of ['cc', 'make']) {
    const r = spawnSync(tool, ['--version'], {stdio: 'ignore'})
    if (r.error) return `${tool} is not installed, so the native unit tests cannot be built`
  }
  return undefined
}

const skipReason = missingTools()
const tests = readdirSync(join(NATIVE, 'test'))
  .filter((f) => /^test_.*\.c$/.test(f))
  .map((f) => f.replace(/\.c$/, ''))
  .sort()

describe.skipIf(skipReason !== undefined)(`native unit tests${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  beforeAll(() => {
    const args = ['-C', NATIVE, '-s', ...(ASAN ? ['B=build/asan', 'SAN=-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined'] : [])]
    execFileSync('make', args, {stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000})
  }, 600_000)

  it('finds the test binaries', () => {
    expect(tests.length).toBeGreaterThan(0)
  })

  for (const name of tests) {
    it(name, (ctx) => {
      const r = spawnSync(join(BUILD, name), [], {encoding: 'utf8', timeout: 300_000, cwd: NATIVE})
      const out = `${r.stdout ?? ''}${r.stderr ?? ''}`
      if (r.status === 77) ctx.skip(out.trim())
      expect(r.error, out).toBeUndefined()
      expect(r.status, out).toBe(0)
    }, 300_000)
  }
})
