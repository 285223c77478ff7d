import {createHash} from 'node:crypto'
import {readFileSync, readdirSync} from 'node:fs'
import {createRequire} from 'node:module'
import {join} from 'node:path'

import {Ajv2020} from 'ajv/dist/2020.js'
import {describe, expect, it} from 'vitest'

import {assertManifest, validateAgainst, validator} from '../../src/artifact/validate.js'
import {OvmError} from '../../src/errors/index.js'
import {ROOT} from '../helpers/cli.js'

const dir = (...p: string[]): string => join(ROOT, 'examples', ...p)
const json = (path: string): unknown => JSON.parse(readFileSync(path, 'utf8'))
const manifests = (kind: 'valid' | 'invalid'): string[] =>
  readdirSync(dir('manifests', kind)).filter((f) => f.endsWith('.json') && !f.endsWith('.expected.json'))

describe('the schemas ovm validates with', () => {
  // ovm compiles them without checking them against the meta-schema (a no-op build's largest cost): this does.
  it.each(['manifest.v1', 'bootstrap-config.v1', 'policy.v1'])('schemas/%s.json is a valid JSON Schema 2020-12', (name) => {
    const ajv = new Ajv2020({strict: false})
    const schema = json(join(ROOT, 'schemas', `${name}.json`)) as object
    expect(ajv.validateSchema(schema), JSON.stringify(ajv.errors)).toBe(true)
  })
})

describe('the validators npm run build compiles (dist/artifact/validators.cjs)', () => {
  type Fn = ((d: unknown) => boolean) & {errors?: {keyword: string; instancePath: string}[] | null}
  const pre = createRequire(import.meta.url)(join(ROOT, 'dist', 'artifact', 'validators.cjs')) as Record<string, Fn> & {schemaSha256: Record<string, string>}

  it('were made from the schema files as they are now', () => {
    for (const name of ['manifest.v1', 'bootstrap-config.v1', 'policy.v1']) {
      expect(pre.schemaSha256[name], name).toBe(createHash('sha256').update(readFileSync(join(ROOT, 'schemas', `${name}.json`))).digest('hex'))
    }
  })

  it.each([...manifests('valid').map((f) => ['valid', f]), ...manifests('invalid').map((f) => ['invalid', f])])('judge %s/%s as ajv compiling the schema now does', (kind, f) => {
    const doc = json(dir('manifests', kind as string, f as string))
    const now = validator('manifest.v1', {precompiled: false}) as unknown as Fn
    const okNow = now(doc)
    const errorsNow = (now.errors ?? []).map((e) => `${e.keyword} ${e.instancePath}`)
    const okPre = pre.manifest_v1!(doc)
    expect(okPre).toBe(okNow)
    expect((pre.manifest_v1!.errors ?? []).map((e) => `${e.keyword} ${e.instancePath}`)).toEqual(errorsNow)
    expect(okNow).toBe(kind === 'valid')
  })
})

describe('schemas/manifest.v1.json', () => {
  it('has examples on both sides', () => {
    expect(manifests('valid').length).toBeGreaterThanOrEqual(4)
    expect(manifests('invalid').length).toBeGreaterThanOrEqual(6)
  })

  it.each(manifests('valid'))('accepts valid/%s', (f) => {
    expect(validateAgainst('manifest.v1', json(dir('manifests', 'valid', f)))).toEqual([])
  })

  it.each(manifests('invalid'))('reports every error of invalid/%s at once', (f) => {
    const problems = validateAgainst('manifest.v1', json(dir('manifests', 'invalid', f)))
    const expected = json(dir('manifests', 'invalid', f.replace(/\.json$/, '.expected.json'))) as string[]
    expect(new Set(problems.map((p) => p.instancePath))).toEqual(new Set(expected))
    for (const p of problems) {
      expect(p.hint.length).toBeGreaterThan(0)
      expect(p.message.length).toBeGreaterThan(0)
    }
  })

  it('names the missing and the unknown field itself, not only its parent', () => {
    const problems = validateAgainst('manifest.v1', {
      schemaVersion: 1,
      mediaType: 'application/vnd.ovms.manifest.v1+json',
      version: '1',
      kernal: {ref: 'x'},
      diskLayers: [{ref: `sha256:${'a'.repeat(64)}`, format: 'vmdk'}],
    })
    const pointers = problems.map((p) => p.pointer).sort()
    expect(pointers).toEqual(['/diskLayers/0/format', '/kernal', '/name'])
    expect(problems.find((p) => p.pointer === '/diskLayers/0/format')!.message).toMatch(/qcow2.*raw/)
  })

  it('assertManifest throws one error carrying every detail', () => {
    let err: OvmError | undefined
    try {
      assertManifest({schemaVersion: 2, mediaType: 'x'}, 'm.json')
    } catch (e) {
      err = e as OvmError
    }
    expect(err?.code).toBe('MANIFEST_INVALID')
    expect(err?.exitCode).toBe(3)
    expect(err?.message).toContain('m.json')
    const at = err!.details.map((d) => d.at).sort()
    expect(at).toEqual(['/mediaType', '/name', '/schemaVersion', '/version'])
  })
})

describe('schemas/bootstrap-config.v1.json', () => {
  it('accepts the valid example and rejects the invalid one at the listed pointers', () => {
    expect(validateAgainst('bootstrap-config.v1', json(dir('bootstrap', 'valid.json')))).toEqual([])
    const problems = validateAgainst('bootstrap-config.v1', json(dir('bootstrap', 'invalid.json')))
    expect(new Set(problems.map((p) => p.instancePath))).toEqual(new Set(json(dir('bootstrap', 'invalid.expected.json')) as string[]))
  })
})
