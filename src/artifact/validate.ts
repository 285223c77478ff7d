import {createHash} from 'node:crypto'
import {readFileSync} from 'node:fs'
import {createRequire} from 'node:module'
import {fileURLToPath} from 'node:url'

import type {Ajv2020, ErrorObject, ValidateFunction} from 'ajv/dist/2020.js'

import {AbortError, BugError, type ErrorDetail, ExitCode} from '../errors/index.js'
import {jsonErrorOffset, lineCol} from '../util/json-position.js'
import type {BootstrapConfig, OvmsManifest} from './manifest.js'

const require = createRequire(import.meta.url)

/** Where the JSON Schemas live (the package's `schemas/` folder). */
export const SCHEMA_DIR = fileURLToPath(new URL('../../schemas/', import.meta.url))

export type SchemaName = 'manifest.v1' | 'bootstrap-config.v1' | 'policy.v1'

export interface ValidationProblem {
  /** JSON pointer to the offending value; for a missing or unknown field, the field itself. */
  pointer: string
  /** ajv's instancePath (the parent object for required/additionalProperties). */
  instancePath: string
  keyword: string
  message: string
  hint: string
}

let ajv: Ajv2020 | undefined
const compiled = new Map<SchemaName, ValidateFunction>()

type Precompiled = Record<string, ValidateFunction> & {schemaSha256?: Record<string, string>}
let precompiled: Precompiled | null | undefined

/**
 * The validators `npm run build` compiled (scripts/gen-validators.mjs), or
 * null when that module is missing (running from src/ under vitest, say).
 */
function loadPrecompiled(): Precompiled | null {
  if (precompiled === undefined) {
    try {
      precompiled = require('./validators.cjs') as Precompiled
    } catch {
      precompiled = null
    }
  }
  return precompiled
}

const compiledNow = new Map<SchemaName, ValidateFunction>()

/** Compile at run time with ajv (loaded only then), once per schema: the fallback when no precompiled validator matches the schema. */
function compile(name: SchemaName, schema: object): ValidateFunction {
  const had = compiledNow.get(name)
  if (had) return had
  if (!ajv) {
    const {Ajv2020: AjvClass} = require('ajv/dist/2020.js') as typeof import('ajv/dist/2020.js')
    const formats = require('ajv-formats') as {default?: (a: Ajv2020) => Ajv2020} & ((a: Ajv2020) => Ajv2020)
    // validateSchema: false: our own schemas need no check against the meta-schema on every run;
    // test/artifact/schema.test.ts checks them against it. Options as in scripts/gen-validators.mjs.
    ajv = new AjvClass({allErrors: true, strict: true, useDefaults: false, validateSchema: false})
    ;(formats.default ?? formats)(ajv)
  }
  const fn = ajv.compile(schema)
  compiledNow.set(name, fn)
  return fn
}

/** The validator for a schema: the precompiled one when it was made from this very schema file, else compiled now. */
export function validator(name: SchemaName, opts: {precompiled?: boolean} = {}): ValidateFunction {
  let fn = opts.precompiled === false ? undefined : compiled.get(name)
  if (fn) return fn
  let text: Buffer
  try {
    text = readFileSync(`${SCHEMA_DIR}${name}.json`)
  } catch (err) {
    throw new BugError(`cannot load schema ${name} from ${SCHEMA_DIR}`, err)
  }
  const pre = opts.precompiled === false ? null : loadPrecompiled()
  const ready = pre?.schemaSha256?.[name] === createHash('sha256').update(text).digest('hex') ? pre[name.replace(/[^a-z0-9]/gi, '_')] : undefined
  if (ready) fn = ready
  else {
    try {
      fn = compile(name, JSON.parse(text.toString('utf8')) as object)
    } catch (err) {
      throw new BugError(`cannot compile schema ${name} from ${SCHEMA_DIR}`, err)
    }
  }
  if (opts.precompiled !== false) compiled.set(name, fn)
  return fn
}

function describe(e: ErrorObject): {pointer: string; message: string; hint: string} {
  const at = e.instancePath
  const p = e.params as Record<string, unknown>
  switch (e.keyword) {
    case 'required': {
      const field = String(p.missingProperty)
      return {pointer: `${at}/${field}`, message: `required field "${field}" is missing`, hint: `Add "${field}" to ${at || 'the top level'}.`}
    }
    case 'additionalProperties': {
      const field = String(p.additionalProperty)
      return {
        pointer: `${at}/${field}`,
        message: `unknown field "${field}"`,
        hint: `Remove "${field}" or check its spelling; annotations go under "annotations".`,
      }
    }
    case 'enum':
      return {
        pointer: at,
        message: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`,
        hint: 'Use one of the listed values.',
      }
    case 'const':
      return {pointer: at, message: `must be ${JSON.stringify(p.allowedValue)}`, hint: `Set it to ${JSON.stringify(p.allowedValue)}.`}
    case 'type':
      return {pointer: at, message: `must be ${String(p.type)}`, hint: `Change the value to a ${String(p.type)}.`}
    case 'pattern':
      return {pointer: at, message: `does not match the expected form (${String(p.pattern)})`, hint: patternHint(at)}
    case 'format':
      return {pointer: at, message: `must be a valid ${String(p.format)}`, hint: p.format === 'date-time' ? 'Write an RFC 3339 time, e.g. 2026-01-31T12:00:00Z.' : `Write a valid ${String(p.format)}.`}
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'minLength':
    case 'maxLength':
    case 'minItems':
    case 'maxItems':
      return {pointer: at, message: e.message ?? e.keyword, hint: 'Change the value to fit the limit.'}
    default:
      return {pointer: at, message: e.message ?? e.keyword, hint: 'See schemas/manifest.v1.json for the expected shape.'}
  }
}

function patternHint(pointer: string): string {
  if (/\/ref$/.test(pointer)) return 'A ref is sha256: followed by 64 lowercase hex characters, or a registry reference.'
  if (pointer === '/name') return 'Use lowercase letters, digits, . _ - and / between components, e.g. example/busybox.'
  if (pointer.endsWith('/mmio_addr')) return 'Write the address in hex, e.g. "0x10000000".'
  return 'See the schema for the expected form.'
}

/** Validate a parsed document against one of ovm's schemas; every problem at once. */
export function validateAgainst(name: SchemaName, doc: unknown): ValidationProblem[] {
  const fn = validator(name)
  if (fn(doc)) return []
  const seen = new Set<string>()
  const out: ValidationProblem[] = []
  for (const e of fn.errors ?? []) {
    // "if"/"anyOf"/"not" wrappers repeat what their branches say.
    if (e.keyword === 'if' || e.keyword === 'anyOf' || (e.keyword === 'oneOf' && (fn.errors?.length ?? 0) > 1)) continue
    const d = describe(e)
    const key = `${d.pointer}|${d.message}`
    if (seen.has(key)) continue
    seen.add(key)
    out.push({...d, instancePath: e.instancePath, keyword: e.keyword})
  }
  return out
}

export function toDetails(problems: ValidationProblem[]): ErrorDetail[] {
  return problems.map((p) => ({at: p.pointer || '/', message: p.message, hint: p.hint}))
}

export function invalidManifestError(source: string, problems: ValidationProblem[], what = 'OVMS manifest'): AbortError {
  return new AbortError({
    code: 'MANIFEST_INVALID',
    message: `${source}: ${what} is invalid (${problems.length} problem${problems.length === 1 ? '' : 's'})`,
    hint: 'Fix each field listed above; schemas/manifest.v1.json documents every field.',
    exitCode: ExitCode.invalid,
    ref: source,
    details: toDetails(problems),
  })
}

/** Parse JSON text, turning a syntax error into `file:line:col`. */
export function parseJsonText(text: string, source: string): unknown {
  try {
    return JSON.parse(text)
  } catch (err) {
    const msg = (err as Error).message
    const offset = jsonErrorOffset(text)
    let where = source
    if (offset >= 0) {
      const {line, col} = lineCol(text, offset)
      where = `${source}:${line}:${col}`
    }
    throw new AbortError({
      code: 'JSON_SYNTAX',
      message: `${where}: not valid JSON: ${msg}`,
      hint: 'Fix the JSON syntax at that position (a missing comma or quote is common).',
      exitCode: ExitCode.invalid,
      ref: source,
      cause: err,
    })
  }
}

export function assertManifest(doc: unknown, source: string): OvmsManifest {
  const problems = validateAgainst('manifest.v1', doc)
  if (problems.length > 0) throw invalidManifestError(source, problems)
  return doc as OvmsManifest
}

export function assertBootstrapConfig(doc: unknown, source: string): BootstrapConfig {
  const problems = validateAgainst('bootstrap-config.v1', doc)
  if (problems.length > 0) throw invalidManifestError(source, problems, 'bootstrap config')
  return doc as BootstrapConfig
}
