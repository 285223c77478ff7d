/**
 * One Ajv for every schema a --json output may name: the CLI schemas in
 * schemas/cli/, the OVMS manifest schema, and the contract document.
 */
import {readFileSync, readdirSync} from 'node:fs'
import {join} from 'node:path'

import {Ajv2020, type ValidateFunction} from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'

import {ROOT} from './cli.js'

const addFormats = ((addFormatsModule as unknown as {default?: unknown}).default ?? addFormatsModule) as (ajv: Ajv2020) => Ajv2020

export const SCHEMAS = join(ROOT, 'schemas')
export const CLI_SCHEMAS = join(SCHEMAS, 'cli')
export const ID_BASE = 'https://ovm.dev/schemas/cli/'

// One Ajv for everything: the CLI schemas, the OVMS manifest schema, and the
// contract document (OpenAPI 3.1, whose schemas are 2020-12) under its URL.
// Strict, except two standard idioms: `required` naming a property declared
// in the parent (oneOf branches), and keywords without a `type` beside them.
export const ajv = new Ajv2020({allErrors: true, strict: true, strictRequired: false, strictTypes: false})
addFormats(ajv)
ajv.addVocabulary(['openapi', 'info', 'servers', 'paths', 'components', 'tags', 'webhooks', 'security', 'externalDocs'])
ajv.addSchema(JSON.parse(readFileSync(join(SCHEMAS, 'contract.openapi.json'), 'utf8')), 'https://ovm.dev/schemas/contract.openapi.json')
ajv.addSchema(JSON.parse(readFileSync(join(SCHEMAS, 'manifest.v1.json'), 'utf8')))
ajv.addSchema(JSON.parse(readFileSync(join(SCHEMAS, 'bootstrap-config.v1.json'), 'utf8')))
export const cliFiles = readdirSync(CLI_SCHEMAS).filter((f) => f.endsWith('.json')).sort()
export const cliSchemas = new Map<string, Record<string, unknown>>()
for (const f of cliFiles) {
  const s = JSON.parse(readFileSync(join(CLI_SCHEMAS, f), 'utf8')) as Record<string, unknown>
  cliSchemas.set(f, s)
  ajv.addSchema(s)
}

export function validator(file: string): ValidateFunction {
  const fn = ajv.getSchema(`${ID_BASE}${file}`)
  if (!fn) throw new Error(`no schema ${ID_BASE}${file}`)
  return fn
}


/** Problems of the last validation, one per line. */
export function problems(fn: ValidateFunction): string {
  return (fn.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`).join('\n')
}
