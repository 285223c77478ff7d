/** FROM docker:// and FROM oci: in Ovmfiles: parsing, and how the image's config becomes the Ovmfile's defaults. */
import {describe, expect, it} from 'vitest'

import {inheritImageConfig} from '../../src/build/prepare.js'
import {parseOvmfile} from '../../src/ovmfile/index.js'

const parse = (text: string) => parseOvmfile(text, 'Ovmfile')

describe('FROM docker://IMAGE [SIZE] and FROM oci:PATH[:TAG] [SIZE]', () => {
  it('parses both forms, with and without a size; a KERNEL is still needed', () => {
    const a = parse('FROM docker://alpine:3.19\nKERNEL k:1\n')
    expect(a.errors).toEqual([])
    expect(a.ovmfile.from).toMatchObject({kind: 'image', source: 'docker://alpine:3.19'})
    const b = parse('FROM oci:image:app 2G\nKERNEL k:1\n')
    expect(b.errors).toEqual([])
    expect(b.ovmfile.from).toMatchObject({kind: 'image', source: 'oci:image:app', size: 2 * 1024 ** 3})
    const c = parse('FROM docker://alpine\n')
    expect(c.errors.map((e) => e.code)).toEqual(['MISSING_KERNEL'])
  })

  it('reports a bad size, an extra word and a missing image at their line:col', () => {
    const r = parse('FROM docker://alpine 1X\nKERNEL k:1\n')
    expect(r.errors).toMatchObject([{code: 'BAD_SIZE', line: 1, col: 22}])
    const r2 = parse('FROM oci:img 1G extra\nKERNEL k:1\n')
    expect(r2.errors).toMatchObject([{code: 'EXTRA_ARGUMENT', line: 1, col: 17}])
    const r3 = parse('FROM docker://\nKERNEL k:1\n')
    expect(r3.errors.map((e) => e.code)).toContain('MISSING_ARGUMENT')
  })

  it("the image's config gives the defaults, as a Dockerfile's FROM does", () => {
    const r = parse('FROM docker://x\nKERNEL k:1\nENV B=ovmfile\nCOPY a.txt ./\nCOPY b.txt sub/\nRUN echo hi\nCMD ["only-cmd"]\n')
    expect(r.errors).toEqual([])
    const f = r.ovmfile
    inheritImageConfig(f, {config: {Env: ['A=image', 'B=image'], WorkingDir: '/srv', Entrypoint: ['/entry'], Cmd: ['image-cmd'], ExposedPorts: {'80/tcp': {}}, User: 'app'}})
    expect(f.env).toEqual({A: 'image', B: 'ovmfile'})
    expect(f.workdir).toBe('/srv')
    // CMD in the Ovmfile replaces the image's Cmd; its Entrypoint stays
    expect(f.entrypoint).toEqual(['/entry'])
    expect(f.cmd).toEqual(['only-cmd'])
    expect(f.exposedPorts).toEqual(['80/tcp'])
    expect(f.user).toBe('app')
    // steps see the image's env and workdir; relative COPY destinations follow it
    const [copyA, copyB, runStep] = f.steps
    expect(copyA).toMatchObject({dest: '/srv/', workdir: '/srv', env: {A: 'image'}})
    expect(copyB).toMatchObject({dest: '/srv/sub/'})
    expect(runStep).toMatchObject({workdir: '/srv', env: {A: 'image'}})
  })

  it('ENTRYPOINT in the Ovmfile drops the image Cmd; WORKDIR in the Ovmfile wins', () => {
    const f = parse('FROM docker://x\nKERNEL k:1\nWORKDIR /mine\nENTRYPOINT ["/mine"]\n').ovmfile
    inheritImageConfig(f, {config: {WorkingDir: '/srv', Entrypoint: ['/entry'], Cmd: ['image-cmd']}})
    expect(f.entrypoint).toEqual(['/mine'])
    expect(f.cmd).toBeUndefined()
    expect(f.workdir).toBe('/mine')
  })
})
