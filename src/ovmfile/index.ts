import {readFile} from 'node:fs/promises'

import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {type ParseOptions, parseOvmfile} from './parse.js'
import type {ParseResult, Problem} from './types.js'

export {parseOvmfile, parseSize, parseDuration, INSTRUCTIONS} from './parse.js'
export type * from './types.js'

export async function readOvmfile(path: string, opts: ParseOptions = {}): Promise<ParseResult> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw fileError(err, path, 'Ovmfile')
  }
  return parseOvmfile(text, path, opts)
}

/** One error carrying every problem, each as `file:line:col`. */
export function ovmfileError(source: string, problems: Problem[]): AbortError {
  return new AbortError({
    code: 'OVMFILE_INVALID',
    message: `${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}`,
    hint: 'Fix each line listed above; rfc/ovmfile.md describes every instruction.',
    exitCode: ExitCode.invalid,
    ref: source,
    details: problems.map((p) => ({at: `${source}:${p.line}:${p.col}`, message: `${p.message} [${p.code}]`, hint: p.hint})),
  })
}
