import {copyFile, mkdir, readFile, readdir, rename, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {AbortError, ExitCode, fileError, isErrno} from '../errors/index.js'

/** The package's templates/ folder. */
export const TEMPLATE_DIR = fileURLToPath(new URL('../../templates/', import.meta.url))

export interface TemplateInfo {
  name: string
  description: string
  files: string[]
  /** Host files the template copies in (busybox from busybox-static). */
  needs: string[]
}

const HOST_FILES: Record<string, string> = {busybox: '/bin/busybox'}

export async function listTemplates(dir = TEMPLATE_DIR): Promise<TemplateInfo[]> {
  const out: TemplateInfo[] = []
  for (const name of (await readdir(dir)).sort()) {
    const meta = await readFile(join(dir, name, 'template.json'), 'utf8').catch(() => undefined)
    if (!meta) continue
    const m = JSON.parse(meta) as {description: string; needs?: string[]}
    const files = (await readdir(join(dir, name))).filter((f) => f !== 'template.json').sort()
    out.push({name, description: m.description, files, needs: m.needs ?? []})
  }
  return out
}

/** Write a template into `dest`; never overwrites a file unless `force`. */
export async function initTemplate(name: string, dest: string, opts: {force?: boolean; dir?: string} = {}): Promise<{template: string; dir: string; files: string[]}> {
  const all = await listTemplates(opts.dir)
  const t = all.find((x) => x.name === name)
  if (!t) {
    throw new AbortError({
      code: 'UNKNOWN_TEMPLATE',
      message: `no template named ${JSON.stringify(name)}`,
      hint: `Use one of: ${all.map((x) => x.name).join(', ')} (ovm init --list).`,
      exitCode: ExitCode.invalid,
      ref: name,
    })
  }
  const sources = new Map<string, string>(t.files.map((f) => [f, join(opts.dir ?? TEMPLATE_DIR, name, f)]))
  for (const n of t.needs) {
    const host = HOST_FILES[n]
    if (!host) continue
    try {
      await stat(host)
    } catch (err) {
      throw new AbortError({
        code: 'TEMPLATE_NEEDS_FILE',
        message: `template ${name} needs ${host}, which is missing`,
        hint: n === 'busybox' ? 'Install it: apt-get install busybox-static.' : `Provide ${host}.`,
        exitCode: ExitCode.notFound,
        ref: host,
        cause: err,
      })
    }
    sources.set(n, host)
  }
  await mkdir(dest, {recursive: true})
  if (!opts.force) {
    const clash: string[] = []
    for (const f of sources.keys()) {
      try {
        await stat(join(dest, f))
        clash.push(f)
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw fileError(err, join(dest, f))
      }
    }
    if (clash.length > 0) {
      throw new AbortError({
        code: 'FILES_EXIST',
        message: `${dest} already has ${clash.join(', ')}; nothing was written`,
        hint: 'Pick an empty folder, or pass --force to overwrite.',
        exitCode: ExitCode.conflict,
        ref: dest,
      })
    }
  }
  for (const [f, src] of sources) {
    const tmp = join(dest, `.${f}.ovm-init-${process.pid}`)
    await copyFile(src, tmp)
    await rename(tmp, join(dest, f))
  }
  return {template: name, dir: dest, files: [...sources.keys()]}
}
