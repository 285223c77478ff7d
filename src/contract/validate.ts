/** Validation of contract bodies against schemas/contract.openapi.json (JSON Schema 2020-12 inside OpenAPI 3.1). */
import {readFileSync} from 'node:fs'

import {Ajv2020, type ErrorObject, type ValidateFunction} from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'

import {SCHEMA_DIR} from '../artifact/validate.js'
import {BugError, type ErrorDetail} from '../errors/index.js'

const addFormats = ((addFormatsModule as unknown as {default?: unknown}).default ?? addFormatsModule) as (ajv: Ajv2020) => Ajv2020

export const CONTRACT_DOC = `${SCHEMA_DIR}contract.openapi.json`
const DOC_ID = 'ovm-contract'

export type ContractSchema =
  | 'StartRequest'
  | 'StopRequest'
  | 'StopResponse'
  | 'SnapshotRequest'
  | 'SnapshotResponse'
  | 'InjectRequest'
  | 'OkResponse'
  | 'InstanceStatus'
  | 'InstanceList'
  | 'LogRecord'
  | 'Error'

let ajv: Ajv2020 | undefined
const cache = new Map<ContractSchema, ValidateFunction>()

export function contractValidator(name: ContractSchema): ValidateFunction {
  const hit = cache.get(name)
  if (hit) return hit
  if (!ajv) {
    let doc: Record<string, unknown>
    try {
      doc = JSON.parse(readFileSync(CONTRACT_DOC, 'utf8'))
    } catch (err) {
      throw new BugError(`cannot load the contract document ${CONTRACT_DOC}`, err)
    }
    // OpenAPI's own keywords (openapi, paths...) are not JSON Schema: not strict.
    ajv = new Ajv2020({allErrors: true, strict: false})
    addFormats(ajv)
    ajv.addSchema(doc, DOC_ID)
  }
  const fn = ajv.getSchema(`${DOC_ID}#/components/schemas/${name}`)
  if (!fn) throw new BugError(`the contract document has no schema ${name}`)
  cache.set(name, fn)
  return fn
}

function detail(e: ErrorObject): ErrorDetail {
  const p = e.params as Record<string, unknown>
  if (e.keyword === 'required') return {at: `${e.instancePath}/${String(p.missingProperty)}`, message: `required field "${String(p.missingProperty)}" is missing`}
  if (e.keyword === 'additionalProperties') return {at: `${e.instancePath}/${String(p.additionalProperty)}`, message: `unknown field "${String(p.additionalProperty)}"`}
  return {at: e.instancePath || '/', message: e.message ?? e.keyword}
}

/** The problems of `value` against a contract schema (empty when valid). */
export function contractProblems(name: ContractSchema, value: unknown): ErrorDetail[] {
  const fn = contractValidator(name)
  if (fn(value)) return []
  const seen = new Set<string>()
  const out: ErrorDetail[] = []
  for (const e of fn.errors ?? []) {
    const d = detail(e)
    const key = `${d.at} ${d.message}`
    if (seen.has(key)) continue
    seen.add(key)
    out.push(d)
  }
  return out
}
