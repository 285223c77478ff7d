/**
 * Flatten container image layers onto one folder (rfc/convert.md §2).
 *
 * Layers are applied in order with tar-stream. OCI whiteouts: `.wh.NAME`
 * deletes NAME from the layers below; `.wh..wh..opq` empties its folder of
 * what the layers below put there. Regular files, folders, symlinks, hard
 * links and fifos are made with their mode (setuid/setgid/sticky included),
 * owner (uid/gid; as root) and mtime; `SCHILY.xattr.*` PAX records are
 * collected for the file-system step (ext4: written with debugfs).
 *
 * Refused, with the layer and entry named: names with a `..` component or an
 * absolute name, a parent path that goes through a symlink whose target
 * leaves the root, a hard link to something outside the root or to a
 * folder, device nodes. A symlink that lies inside the root (absolute
 * targets count from the image's root, as in the image itself) is followed,
 * so merged-/usr images (`lib -> usr/lib`) work.
 */
import {execFile} from 'node:child_process'
import {createWriteStream} from 'node:fs'
import {chmod, lchown, link, lstat, lutimes, mkdir, readdir, readlink, rm, symlink} from 'node:fs/promises'
import {join, posix} from 'node:path'
import type {Readable} from 'node:stream'
import {once} from 'node:events'
import {finished} from 'node:stream/promises'
import {promisify} from 'node:util'
import {createGunzip} from 'node:zlib'

import {extract, type Header} from 'tar-stream'

import {AbortError, ExitCode, isErrno} from '../errors/index.js'

const run = promisify(execFile)

export interface FlattenLayer {
  /** For messages: "layer 2 (sha256:abcd…)". */
  label: string
  /** The layer's tar bytes (gzip'd or not: detected). */
  open(): Promise<Readable>
}

export interface XattrRecord {
  /** Path inside the root, starting with '/'. */
  path: string
  name: string
  value: Buffer
}

export interface OwnerRecord {
  path: string
  uid: number
  gid: number
}

export interface FlattenResult {
  /** Entries applied (after whiteouts), over all layers. */
  entries: number
  /** Whiteouts honoured. */
  whiteouts: number
  /** Extended attributes to put on files (the host folder may not hold them). */
  xattrs: XattrRecord[]
  /** Owners not set on the host folder (not root): fixed in the file system afterwards. */
  owners: OwnerRecord[]
}

export type FlattenEvent = {type: 'layer-start'; index: number; label: string} | {type: 'layer-done'; index: number; label: string; entries: number}

export interface FlattenOptions {
  /** Set owners with lchown (default: when running as root); otherwise they are returned in `owners`. */
  chown?: boolean
  onEvent?: (e: FlattenEvent) => void
}

const WH = '.wh.'
const OPAQUE = '.wh..wh..opq'

function refused(layer: FlattenLayer, entry: string, why: string): AbortError {
  return new AbortError({
    code: 'LAYER_UNSAFE',
    message: `${layer.label}: entry ${JSON.stringify(entry)} ${why}`,
    hint: 'The image is malformed or hostile; nothing was written. Rebuild it without that entry, or use another image.',
    exitCode: ExitCode.invalid,
    ref: `${layer.label}:${entry}`,
  })
}

/** The entry's name as clean in-root components, or a refusal. */
export function entryComponents(layer: FlattenLayer, raw: string): string[] {
  let name = raw
  if (name.startsWith('/')) throw refused(layer, raw, 'has an absolute name')
  while (name.startsWith('./')) name = name.slice(2)
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw refused(layer, raw, 'has a ".." component that leaves the root')
  return parts
}

/**
 * Follow `parts` inside `root`, resolving symlinks as the image would see
 * them (absolute targets from the image's root). Every component but the
 * last is resolved; the result is the real in-root components.
 */
async function resolveParent(root: string, parts: string[], layer: FlattenLayer, raw: string): Promise<string[]> {
  const out: string[] = []
  const todo = parts.slice(0, -1)
  let hops = 0
  while (todo.length > 0) {
    const c = todo.shift() as string
    if (c === '.' || c === '') continue
    if (c === '..') {
      if (out.length === 0) throw refused(layer, raw, 'goes through a symlink whose target leaves the root')
      out.pop()
      continue
    }
    const here = join(root, ...out, c)
    let st
    try {
      st = await lstat(here)
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        out.push(c, ...todo.filter((x) => x !== '.' && x !== ''))
        if (out.includes('..')) throw refused(layer, raw, 'goes through a symlink whose target leaves the root')
        return [...out, parts[parts.length - 1] as string]
      }
      throw err
    }
    if (st.isSymbolicLink()) {
      if (++hops > 40) throw refused(layer, raw, 'goes through too many symlinks (a loop?)')
      const target = await readlink(here)
      const norm = posix.normalize(target.startsWith('/') ? target : posix.join('/', ...out, target))
      // A relative target that climbs above the root points out of it: refuse (an absolute one counts from the image's root).
      if (!target.startsWith('/') && posix.normalize(posix.join(out.join('/') || '.', target)).split('/')[0] === '..') {
        throw refused(layer, raw, `is written through the symlink /${[...out, c].join('/')} -> ${target}, which points outside the root`)
      }
      todo.unshift(...norm.split('/').filter((p) => p !== ''))
      out.length = 0
      continue
    }
    if (!st.isDirectory()) {
      // A file where a folder is needed: the layer replaces it (as overlayfs would show it).
      await rm(here, {force: true})
      out.push(c)
      continue
    }
    out.push(c)
  }
  return [...out, parts[parts.length - 1] as string]
}

async function removeLowerChildren(dir: string, rel: string, created: Set<string>): Promise<void> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return
  }
  for (const n of names) {
    const childRel = rel === '' ? n : `${rel}/${n}`
    const p = join(dir, n)
    if (!created.has(childRel)) {
      await rm(p, {recursive: true, force: true})
      continue
    }
    const st = await lstat(p)
    if (st.isDirectory()) await removeLowerChildren(p, childRel, created)
  }
}

function paxXattrs(h: Header): {name: string; value: Buffer}[] {
  const pax = (h.pax ?? {}) as Record<string, string>
  const out: {name: string; value: Buffer}[] = []
  for (const [k, v] of Object.entries(pax)) {
    if (k.startsWith('SCHILY.xattr.')) out.push({name: k.slice('SCHILY.xattr.'.length), value: Buffer.from(v, 'latin1')})
  }
  return out
}

/** Sniff gzip (1f 8b) and hand back a plain tar stream. */
async function plainTar(src: Readable, layer: FlattenLayer): Promise<Readable> {
  const first: Buffer = await new Promise((resolve, reject) => {
    const onReadable = (): void => {
      const chunk = src.read() as Buffer | null
      if (chunk === null) return
      cleanup()
      resolve(chunk)
    }
    const onEnd = (): void => {
      cleanup()
      resolve(Buffer.alloc(0))
    }
    const onError = (err: Error): void => {
      cleanup()
      reject(err)
    }
    const cleanup = (): void => {
      src.off('readable', onReadable)
      src.off('end', onEnd)
      src.off('error', onError)
    }
    src.on('readable', onReadable)
    src.on('end', onEnd)
    src.on('error', onError)
  })
  src.unshift(first)
  if (first[0] === 0x1f && first[1] === 0x8b) {
    const gz = createGunzip()
    src.on('error', (err) => gz.destroy(err))
    return src.pipe(gz)
  }
  if (first.readUInt32LE(0) === 0xfd2fb528) {
    throw new AbortError({
      code: 'LAYER_ZSTD',
      message: `${layer.label} is zstd-compressed, which this ovm cannot read`,
      hint: 'Convert the image with gzip layers (e.g. `skopeo copy --dest-compress-format gzip`) and try again.',
      exitCode: ExitCode.invalid,
      ref: layer.label,
    })
  }
  return src
}

/** Apply `layers` in order onto the (empty) folder `root`. On failure the caller removes `root`. */
export async function flattenLayers(root: string, layers: FlattenLayer[], opts: FlattenOptions = {}): Promise<FlattenResult> {
  const doChown = opts.chown ?? process.getuid?.() === 0
  await mkdir(root, {recursive: true})
  const result: FlattenResult = {entries: 0, whiteouts: 0, xattrs: [], owners: []}
  // Metadata of folders is set after each layer (writing into a folder changes its mtime; a read-only folder blocks writes).
  for (const [index, layer] of layers.entries()) {
    opts.onEvent?.({type: 'layer-start', index, label: layer.label})
    const created = new Set<string>()
    const dirMeta: {path: string; h: Header}[] = []
    let count = 0
    const src = await plainTar(await layer.open(), layer)
    const ex = extract()
    const applyEntry = async (h: Header, body: Readable): Promise<void> => {
      const parts = entryComponents(layer, h.name)
      if (parts.length === 0) {
        // The root itself: take its metadata, nothing else.
        if (h.type === 'directory') dirMeta.push({path: root, h})
        body.resume()
        return
      }
      const base = parts[parts.length - 1] as string
      if (h.type === 'character-device' || h.type === 'block-device') {
        throw refused(layer, h.name, `is a ${h.type.replace('-', ' ')} node (${h.devmajor}:${h.devminor}); images may not carry device nodes (OVMS-Init mounts devtmpfs on /dev)`)
      }
      const real = await resolveParent(root, parts, layer, h.name)
      const parentRel = real.slice(0, -1).join('/')
      const parentAbs = join(root, ...real.slice(0, -1))
      if (base === OPAQUE) {
        await mkdir(parentAbs, {recursive: true})
        await removeLowerChildren(parentAbs, parentRel, created)
        result.whiteouts++
        body.resume()
        return
      }
      if (base.startsWith(WH)) {
        const victim = base.slice(WH.length)
        const rel = parentRel === '' ? victim : `${parentRel}/${victim}`
        if (!created.has(rel)) await rm(join(parentAbs, victim), {recursive: true, force: true})
        result.whiteouts++
        body.resume()
        return
      }
      const rel = real.join('/')
      const abs = join(root, ...real)
      await mkdir(parentAbs, {recursive: true})
      const existing = await lstat(abs).catch(() => undefined)
      if (existing && !(existing.isDirectory() && h.type === 'directory')) await rm(abs, {recursive: true, force: true})
      created.add(rel)
      switch (h.type) {
        case 'directory':
          if (!existing?.isDirectory()) await mkdir(abs)
          dirMeta.push({path: abs, h})
          body.resume()
          break
        case 'file':
        case 'contiguous-file':
          // 'wx': never follows a symlink, never writes into something that exists.
          await writeBody(body, abs)
          break
        case 'symlink':
          body.resume()
          await symlink(h.linkname, abs)
          break
        case 'link': {
          body.resume()
          if (h.linkname.startsWith('/') || h.linkname.split('/').includes('..')) throw refused(layer, h.name, `is a hard link to ${JSON.stringify(h.linkname)}, which leaves the root`)
          const tparts = entryComponents(layer, h.linkname)
          if (tparts.length === 0) throw refused(layer, h.name, `is a hard link to the root folder`)
          const treal = await resolveParent(root, tparts, layer, h.name)
          const tabs = join(root, ...treal)
          const tst = await lstat(tabs).catch(() => undefined)
          if (!tst) throw refused(layer, h.name, `is a hard link to ${JSON.stringify(h.linkname)}, which no layer so far holds`)
          if (tst.isDirectory()) throw refused(layer, h.name, `is a hard link to the folder ${JSON.stringify(h.linkname)}`)
          await link(tabs, abs)
          count++
          return // a hard link shares its target's metadata
        }
        case 'fifo':
          body.resume()
          await run('mkfifo', [abs])
          break
        default:
          throw refused(layer, h.name, `has an entry type (${String(h.type)}) ovm does not know`)
      }
      count++
      if (h.type !== 'directory') await setMeta(abs, rel, h, doChown, result)
      for (const x of paxXattrs(h)) result.xattrs.push({path: `/${rel}`, ...x})
    }
    const done = new Promise<void>((resolve, reject) => {
      ex.on('entry', (h, body, next) => {
        applyEntry(h, body as unknown as Readable).then(
          () => next(),
          (err: unknown) => {
            ;(body as unknown as Readable).resume()
            next(err as Error)
          },
        )
      })
      ex.on('finish', resolve)
      ex.on('error', reject)
      src.on('error', reject)
    })
    src.pipe(ex as unknown as NodeJS.WritableStream)
    try {
      await done
    } catch (err) {
      src.destroy()
      if (err instanceof AbortError) throw err
      throw new AbortError({
        code: 'LAYER_UNREADABLE',
        message: `${layer.label} is not a readable tar archive: ${(err as Error).message}`,
        hint: 'The image is damaged; fetch it again, or use another image.',
        exitCode: ExitCode.invalid,
        ref: layer.label,
        cause: err,
      })
    }
    // Folders deepest first, so setting one's mtime is not undone by its children.
    dirMeta.sort((a, b) => b.path.length - a.path.length)
    for (const d of dirMeta) {
      const rel = d.path === root ? '' : d.path.slice(root.length + 1)
      await setMeta(d.path, rel, d.h, doChown, result)
      for (const x of paxXattrs(d.h)) result.xattrs.push({path: `/${rel}`, ...x})
    }
    result.entries += count
    opts.onEvent?.({type: 'layer-done', index, label: layer.label, entries: count})
  }
  return result
}

async function setMeta(abs: string, rel: string, h: Header, doChown: boolean, result: FlattenResult): Promise<void> {
  const uid = h.uid ?? 0
  const gid = h.gid ?? 0
  if (doChown) await lchown(abs, uid, gid)
  else if (uid !== 0 || gid !== 0) result.owners.push({path: `/${rel}`, uid, gid})
  // chmod after chown: chown clears setuid/setgid bits. A symlink has no mode of its own on Linux.
  if (h.type !== 'symlink') await chmod(abs, h.mode & 0o7777)
  const t = h.mtime ?? new Date(0)
  await lutimes(abs, t, t)
}

async function writeBody(body: Readable, abs: string): Promise<void> {
  const ws = createWriteStream(abs, {flags: 'wx', mode: 0o600})
  const failed = once(ws, 'error').then(([err]) => {
    throw err
  })
  failed.catch(() => undefined)
  await Promise.race([once(ws, 'open'), failed])
  for await (const chunk of body) {
    if (!ws.write(chunk as Buffer)) await Promise.race([once(ws, 'drain'), failed])
  }
  ws.end()
  await finished(ws)
}

/** Remove a folder even where a layer left it read-only. */
export async function removeTree(path: string): Promise<void> {
  await rm(path, {recursive: true, force: true}).catch(async () => {
    await run('chmod', ['-R', 'u+rwx', path]).catch(() => undefined)
    await rm(path, {recursive: true, force: true})
  })
}
