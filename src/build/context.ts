import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {lstat, readdir, readlink, realpath} from 'node:fs/promises'
import {join, relative, resolve, sep} from 'node:path'

import type {Ovmfile, Problem} from '../ovmfile/types.js'

/** A digest of one COPY source: a file's content and mode, or a folder's whole tree. */
export interface SourceDigest {
  source: string
  digest: string
  /** Files it holds (1 for a file). */
  files: number
  bytes: number
}

async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** Hash a file or a folder tree (names, modes, sizes, contents, link targets), deterministically. */
async function hashTree(path: string): Promise<{digest: string; files: number; bytes: number}> {
  const h = createHash('sha256')
  let files = 0
  let bytes = 0
  const walk = async (p: string, rel: string): Promise<void> => {
    const st = await lstat(p)
    const mode = (st.mode & 0o7777).toString(8)
    if (st.isDirectory()) {
      h.update(`d ${rel} ${mode}\n`)
      for (const name of (await readdir(p)).sort()) await walk(join(p, name), rel === '' ? name : `${rel}/${name}`)
    } else if (st.isSymbolicLink()) {
      h.update(`l ${rel} ${await readlink(p)}\n`)
    } else if (st.isFile()) {
      files++
      bytes += st.size
      h.update(`f ${rel} ${mode} ${st.size} ${await hashFile(p)}\n`)
    }
  }
  await walk(path, '')
  return {digest: `sha256:${h.digest('hex')}`, files, bytes}
}

/**
 * Check every COPY source against the build context (exists, stays inside it
 * after following links) and hash it for the cache keys. Problems name the
 * Ovmfile line.
 */
export async function checkContext(file: Ovmfile, contextDir: string): Promise<{problems: Problem[]; digests: Map<string, SourceDigest>}> {
  const problems: Problem[] = []
  const digests = new Map<string, SourceDigest>()
  let ctxReal: string
  try {
    ctxReal = await realpath(contextDir)
  } catch {
    problems.push({
      line: 1,
      col: 1,
      code: 'CONTEXT_NOT_FOUND',
      message: `build context folder ${contextDir} does not exist`,
      hint: 'Pass an existing folder as the build context.',
      severity: 'error',
    })
    return {problems, digests}
  }
  for (const step of file.steps) {
    if (step.kind !== 'COPY') continue
    for (const source of step.sources) {
      if (digests.has(source)) continue
      const abs = resolve(ctxReal, source)
      const at = {line: step.pos.line, col: step.pos.col}
      let real: string
      try {
        real = await realpath(abs)
      } catch {
        problems.push({...at, code: 'COPY_SOURCE_MISSING', message: `COPY source "${source}" does not exist in the build context ${contextDir}`, hint: 'Check the path; it is relative to the build context folder.', severity: 'error'})
        continue
      }
      if (real !== ctxReal && !real.startsWith(ctxReal + sep)) {
        problems.push({...at, code: 'COPY_OUTSIDE_CONTEXT', message: `COPY source "${source}" resolves outside the build context (${relative(ctxReal, real)})`, hint: 'Copy the file into the build context instead of linking to it.', severity: 'error'})
        continue
      }
      const t = await hashTree(real)
      digests.set(source, {source, ...t})
    }
  }
  return {problems, digests}
}
