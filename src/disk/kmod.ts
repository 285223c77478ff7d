import {readFile, readdir} from 'node:fs/promises'
import {join} from 'node:path'

import {AbortError, ExitCode} from '../errors/index.js'

/** The `.modinfo` key=value strings of an ELF64 kernel module (.ko, uncompressed). */
export function modinfo(elf: Buffer): Record<string, string[]> {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) throw new Error('not a little-endian ELF64 file')
  const shoff = Number(elf.readBigUInt64LE(0x28))
  const shentsize = elf.readUInt16LE(0x3a)
  const shnum = elf.readUInt16LE(0x3c)
  const shstrndx = elf.readUInt16LE(0x3e)
  const section = (i: number): {name: number; offset: number; size: number} => {
    const base = shoff + i * shentsize
    return {name: elf.readUInt32LE(base), offset: Number(elf.readBigUInt64LE(base + 0x18)), size: Number(elf.readBigUInt64LE(base + 0x20))}
  }
  const strtab = section(shstrndx)
  const out: Record<string, string[]> = {}
  for (let i = 0; i < shnum; i++) {
    const s = section(i)
    const nameEnd = elf.indexOf(0, strtab.offset + s.name)
    if (elf.toString('latin1', strtab.offset + s.name, nameEnd) !== '.modinfo') continue
    for (const kv of elf.toString('latin1', s.offset, s.offset + s.size).split('\0')) {
      const eq = kv.indexOf('=')
      if (eq > 0) (out[kv.slice(0, eq)] ??= []).push(kv.slice(eq + 1))
    }
  }
  return out
}

/** Indexes made from modules.order (which may not list a module added by hand). */
const fromOrder = new WeakSet<Map<string, string>>()
const indexes = new Map<string, Promise<Map<string, string>>>()

/**
 * Index a modules folder (`lib/modules/<version>`): module name → path of
 * its .ko. From its `modules.order` when it has one (one file read, where
 * walking Debian's 4,000 modules took 80 ms, twice per build), else by
 * walking it; each folder once per process. `walk` forces the walk.
 */
export function indexModules(dir: string, opts: {walk?: boolean} = {}): Promise<Map<string, string>> {
  const key = `${opts.walk ? 'walk' : 'any'}:${dir}`
  let p = indexes.get(key)
  if (!p) {
    p = (async () => (opts.walk ? undefined : await orderIndex(dir)) ?? walkIndex(dir))()
    p.catch(() => indexes.delete(key))
    indexes.set(key, p)
  }
  return p
}

async function orderIndex(dir: string): Promise<Map<string, string> | undefined> {
  const text = await readFile(join(dir, 'modules.order'), 'utf8').catch(() => undefined)
  if (text === undefined) return undefined
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const rel = line.trim()
    if (!rel.endsWith('.ko') || rel.includes('..') || rel.startsWith('/')) continue
    out.set((rel.split('/').pop() as string).slice(0, -3).replace(/-/g, '_'), join(dir, rel))
  }
  if (out.size === 0) return undefined
  fromOrder.add(out)
  return out
}

/**
 * resolveModules over a folder's index; when that index came from
 * modules.order and something is missing, the folder is walked and
 * resolved again (a module copied in without depmod is still found).
 */
export async function resolveModulesIn(dir: string, wanted: string[]): Promise<{order: {name: string; path: string}[]; missing: string[]; index: Map<string, string>}> {
  const builtin = await builtinModules(dir)
  let index = await indexModules(dir)
  let r = await resolveModules(index, wanted, builtin)
  if (r.missing.length > 0 && fromOrder.has(index)) {
    index = await indexModules(dir, {walk: true})
    r = await resolveModules(index, wanted, builtin)
  }
  return {...r, index}
}

async function walkIndex(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  let entries
  try {
    entries = await readdir(dir, {recursive: true, withFileTypes: true})
  } catch (err) {
    throw new AbortError({
      code: 'MODULES_NOT_FOUND',
      message: `kernel modules folder ${dir} cannot be read: ${(err as Error).message}`,
      hint: 'Give the kernel\'s /lib/modules/VERSION folder (KERNEL … MODULES PATH in the Ovmfile).',
      exitCode: ExitCode.notFound,
      ref: dir,
    })
  }
  for (const e of entries) {
    if (!e.isFile() || !e.name.endsWith('.ko')) continue
    out.set(e.name.slice(0, -3).replace(/-/g, '_'), join(e.parentPath, e.name))
  }
  return out
}

/**
 * The modules to load, dependencies first, for the named modules. Module
 * names normalise `-` to `_`, as the kernel does. Missing ones are reported
 * (a built-in module needs no file: pass `builtin` from modules.builtin).
 */
export async function resolveModules(
  index: Map<string, string>,
  wanted: string[],
  builtin: Set<string> = new Set(),
): Promise<{order: {name: string; path: string}[]; missing: string[]}> {
  const order: {name: string; path: string}[] = []
  const missing: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = async (raw: string): Promise<void> => {
    const name = raw.replace(/-/g, '_')
    if (state.get(name) === 'done' || state.get(name) === 'visiting' || builtin.has(name)) return
    const path = index.get(name)
    if (!path) {
      if (!missing.includes(name)) missing.push(name)
      return
    }
    const elf = await readFile(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined // listed (modules.order) but not there
      throw err
    })
    if (!elf) {
      if (!missing.includes(name)) missing.push(name)
      return
    }
    state.set(name, 'visiting')
    const info = modinfo(elf)
    for (const dep of (info.depends?.[0] ?? '').split(',').filter(Boolean)) await visit(dep)
    for (const soft of info.softdep ?? []) {
      // "pre: crc32c" style soft dependencies matter for ext4/jbd2 checksums
      const m = /pre:\s*([^\s]+(?:\s+[^\s:]+)*)/.exec(soft)
      for (const dep of m?.[1]?.split(/\s+/) ?? []) if (index.has(dep.replace(/-/g, '_'))) await visit(dep)
    }
    state.set(name, 'done')
    order.push({name, path})
  }
  for (const w of wanted) await visit(w)
  return {order, missing}
}

/** Names in `modules.builtin` (lines like kernel/fs/ext4/ext4.ko). */
export async function builtinModules(dir: string): Promise<Set<string>> {
  const text = await readFile(join(dir, 'modules.builtin'), 'utf8').catch(() => '')
  return new Set(
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => (l.split('/').pop() as string).replace(/\.ko$/, '').replace(/-/g, '_')),
  )
}
