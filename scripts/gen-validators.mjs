#!/usr/bin/env node
// Compile the JSON Schemas ovm validates with (schemas/*.v1.json) into one
// CommonJS module of standalone ajv validators: dist/artifact/validators.cjs.
// src/artifact/validate.ts uses it when the schema file's SHA-256 matches the
// one recorded here, and compiles the schema with ajv otherwise, so a stale
// module costs time, never correctness. Compiling at run time took a no-op
// `ovm build` ~50 ms (loading ajv and generating the code); this takes none.
// Run by `npm run build` after tsc.
import {createHash} from 'node:crypto'
import {readFileSync, renameSync, writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {Ajv2020} from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'
import {_} from 'ajv/dist/compile/codegen/index.js'
import standaloneModule from 'ajv/dist/standalone/index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const addFormats = addFormatsModule.default ?? addFormatsModule
const standaloneCode = standaloneModule.default ?? standaloneModule
// Keep these options the same as validate.ts's run-time compile.
const ajv = new Ajv2020({
  allErrors: true,
  strict: true,
  useDefaults: false,
  code: {source: true, formats: _`require("ajv-formats/dist/formats").fullFormats`},
})
addFormats(ajv)

const names = ['manifest.v1', 'bootstrap-config.v1', 'policy.v1']
const exportName = (n) => n.replace(/[^a-z0-9]/gi, '_')
const hashes = {}
for (const n of names) {
  const text = readFileSync(join(root, 'schemas', `${n}.json`))
  hashes[n] = createHash('sha256').update(text).digest('hex')
  ajv.addSchema(JSON.parse(text.toString('utf8')), exportName(n))
}
let code = standaloneCode(ajv, Object.fromEntries(names.map((n) => [exportName(n), exportName(n)])))
code += `\nmodule.exports.schemaSha256 = ${JSON.stringify(hashes)};\n`
const out = join(root, 'dist', 'artifact', 'validators.cjs')
writeFileSync(`${out}.tmp`, code)
renameSync(`${out}.tmp`, out)
