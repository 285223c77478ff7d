import {describe, expect, it} from 'vitest'

import {OvmError} from '../../src/errors/index.js'
import {formatReference, parseReference, refName} from '../../src/oci/reference.js'

describe('parseReference', () => {
  it.each([
    ['example/busybox', {repository: 'example/busybox', tag: 'latest'}],
    ['busybox:1.0', {repository: 'busybox', tag: '1.0'}],
    ['localhost:5000/a/b:v2', {registry: 'localhost:5000', repository: 'a/b', tag: 'v2'}],
    ['ghcr.io/acme/runner', {registry: 'ghcr.io', repository: 'acme/runner', tag: 'latest'}],
    [`x@sha256:${'a'.repeat(64)}`, {repository: 'x', digest: `sha256:${'a'.repeat(64)}`}],
    [`x:t@sha256:${'b'.repeat(64)}`, {repository: 'x', tag: 't', digest: `sha256:${'b'.repeat(64)}`}],
  ])('parses %s', (input, want) => {
    expect(parseReference(input)).toEqual({registry: undefined, tag: undefined, digest: undefined, ...want})
  })

  it.each([
    ['', 'empty'],
    ['Example/Busybox', 'repository'],
    ['x:bad tag', 'tag'],
    ['x:-t', 'tag'],
    ['x@sha256:abc', 'digest'],
    ['a//b', 'repository'],
  ])('rejects %j naming the bad part', (input, part) => {
    let err: unknown
    try {
      parseReference(input)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(OvmError)
    const e = err as OvmError
    expect(e.code).toBe('BAD_REFERENCE')
    expect(e.exitCode).toBe(3)
    expect(e.message).toContain(part === 'empty' ? 'empty' : part)
    expect(e.hint).toBeTruthy()
  })

  it('round-trips and names tags for the index', () => {
    const r = parseReference('localhost:5000/a/b:v2')
    expect(formatReference(r)).toBe('localhost:5000/a/b:v2')
    expect(refName(r)).toBe('localhost:5000/a/b:v2')
    expect(refName(parseReference(`a@sha256:${'c'.repeat(64)}`))).toBeUndefined()
  })
})
