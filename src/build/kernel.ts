/**
 * Kernel artifacts: a kernel plus its modules, for the builder and the runtime.
 *
 * `importKernel` makes one in the local store from a kernel image and its
 * /lib/modules/VERSION folder, from a Debian kernel package (.deb), or from
 * an unpacked root holding boot/vmlinuz-* and lib/modules/VERSION. The
 * modules go into one deterministic tar (`lib/modules/<version>/...`, sorted,
 * mtime 0, uid/gid 0): the kernel-modules layer of OVMS (RFC, extension).
 *
 * `resolveKernel` turns a kernel artifact (or a local path) back into files:
 * the kernel and the modules folder, unpacked once into
 * `<store>/cache/kernels/<manifest-digest-hex>/` and reused.
 */
import {execFile, spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {createWriteStream} from 'node:fs'
import {chmod, mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {basename, join, resolve} from 'node:path'
import {pipeline} from 'node:stream/promises'
import {promisify} from 'node:util'

import {loadArtifact} from '../artifact/load.js'
import {type CpioEntry, S_IFREG, firstInitramfsArchive, readCpioNewc} from '../disk/cpio.js'
import {indexModules, modinfo, resolveModulesIn} from '../disk/kmod.js'
import {AbortError, ExitCode, fileError, isErrno} from '../errors/index.js'
import {digestHex} from '../oci/digest.js'
import type {LayoutStore} from '../oci/layout.js'
import {parseReference} from '../oci/reference.js'
import {BUILDER_MODULES} from './initramfs.js'
import {type PackEvent, type PackResult, packArtifact} from './pack.js'
import {readHead} from '../util/fs.js'
import {probeKernel} from '../disk/kernel-image.js'

const run = promisify(execFile)

export interface ImportKernelOptions {
  /** A kernel image (bzImage or vmlinux), a Debian kernel package (.deb), or a root folder with boot/ and lib/modules/. */
  source: string
  /** The kernel's /lib/modules/VERSION folder (needed with a kernel image; overrides the one found in a .deb or root). */
  modules?: string
  /** Which kernel to take when a .deb or root holds several (a release such as 6.1.0-56-amd64). */
  kernelVersion?: string
  tags: string[]
  /** Artifact version; default: the kernel release. */
  version?: string
  cmdline?: string
  author?: string
  created?: string
  annotations?: Record<string, string>
}

export interface ImportKernelResult extends PackResult {
  /** The kernel release (`uname -r` in the guest), e.g. 6.1.0-56-amd64. */
  kernelVersion: string
  /** What the import read: a kernel image + modules folder, a .deb, or a root folder. */
  sourceKind: 'image' | 'deb' | 'root'
  /** Number of .ko files in the modules tar. */
  moduleCount: number
}

export interface ResolvedKernel {
  kernel: string
  /** A /lib/modules/VERSION folder. */
  modulesDir: string
  /** The kernel release (the modules folder's name). */
  version: string
  /** Removes what was unpacked only for this call (a .deb); store artifacts stay cached. */
  cleanup(): Promise<void>
}

export interface ResolveKernelOptions {
  /** With a kernel image path: its modules folder. */
  modules?: string
  /** Relative paths are resolved from here (default: the current directory). */
  cwd?: string
  /** Skip the check that the modules hold what the builder needs. */
  skipBuilderCheck?: boolean
}

/** The cache folder for unpacked kernel artifacts. */
export function kernelCacheDir(store: LayoutStore): string {
  return join(store.root, 'cache', 'kernels')
}

const VERSION_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/

// ---- kernel files ---------------------------------------------------------

/** The release the modules were built for, from a module's vermagic. */
async function modulesRelease(index: Map<string, string>): Promise<string | undefined> {
  const any = index.get('ext4') ?? index.values().next().value
  if (!any) return undefined
  try {
    const magic = modinfo(await readFile(any)).vermagic?.[0]
    const first = magic?.split(' ')[0]
    return first && VERSION_RE.test(first) ? first : undefined
  } catch {
    return undefined
  }
}

/**
 * Check a modules folder: it exists, holds the builder's modules (or the
 * kernel has them built in), and matches the kernel's release.
 */
export async function checkModules(dir: string, kernelRelease?: string, opts: {builder?: boolean} = {}): Promise<{version: string; moduleCount: number}> {
  const st = await stat(dir).catch((err: unknown) => {
    throw fileError(err, dir, 'kernel modules folder')
  })
  if (!st.isDirectory()) {
    throw new AbortError({
      code: 'MODULES_NOT_A_FOLDER',
      message: `kernel modules ${dir} is not a folder`,
      hint: 'Give the kernel\'s /lib/modules/VERSION folder.',
      exitCode: ExitCode.invalid,
      ref: dir,
    })
  }
  let index = await indexModules(dir)
  if (opts.builder !== false) {
    const r = await resolveModulesIn(dir, BUILDER_MODULES)
    index = r.index
    const {missing} = r
    // crc32c may come from an accelerated driver; initramfs.ts treats these two as optional as well
    const needed = missing.filter((m) => m !== 'libcrc32c' && m !== 'crc32c_generic')
    if (needed.length > 0) {
      const compressed = (await readdir(dir, {recursive: true}).catch(() => [] as string[])).some((n) => /\.ko\.(xz|zst|gz)$/.test(String(n)))
      throw new AbortError({
        code: 'MODULES_MISSING',
        message: `kernel modules folder ${dir} lacks ${needed.join(', ')}, which the builder needs (${BUILDER_MODULES.join(', ')})`,
        hint: compressed
          ? 'Its modules are compressed (.ko.xz/.ko.zst); decompress them first (e.g. `find DIR -name "*.ko.xz" -exec xz -d {} +`).'
          : 'Give the /lib/modules/VERSION folder that matches the kernel, or a kernel with these drivers built in.',
        exitCode: ExitCode.invalid,
        ref: dir,
      })
    }
  }
  const moduleRelease = await modulesRelease(index)
  if (kernelRelease && moduleRelease && kernelRelease !== moduleRelease) {
    throw new AbortError({
      code: 'MODULES_MISMATCH',
      message: `the kernel is ${kernelRelease} but the modules in ${dir} are for ${moduleRelease}`,
      hint: 'Give the /lib/modules folder of the same kernel build.',
      exitCode: ExitCode.invalid,
      ref: dir,
    })
  }
  const version = kernelRelease ?? moduleRelease ?? basename(resolve(dir))
  if (!VERSION_RE.test(version)) {
    throw new AbortError({
      code: 'KERNEL_VERSION_UNKNOWN',
      message: `cannot tell the kernel release of ${dir} (got ${JSON.stringify(version)})`,
      hint: 'Name the modules folder after the release, as /lib/modules/VERSION is.',
      exitCode: ExitCode.invalid,
      ref: dir,
    })
  }
  return {version, moduleCount: index.size}
}

// ---- sources --------------------------------------------------------------

interface FoundKernel {
  kernel: string
  modulesDir: string
}

/** In a root folder: boot/vmlinuz-V with lib/modules/V (or usr/lib/modules/V). */
async function findInRoot(root: string, what: string, wanted?: string, modulesOverride?: string): Promise<FoundKernel> {
  const boot = join(root, 'boot')
  const names = await readdir(boot).catch(() => [] as string[])
  const kernels = names.filter((n) => /^(vmlinuz|vmlinux|bzImage)-./.test(n)).sort()
  const modulesFor = async (v: string): Promise<string | undefined> => {
    for (const base of ['lib/modules', 'usr/lib/modules']) {
      const d = join(root, base, v)
      if (await stat(d).then((s) => s.isDirectory(), () => false)) return d
    }
    return undefined
  }
  const candidates: {version: string; kernel: string; modulesDir?: string}[] = []
  for (const k of kernels) {
    const version = k.slice(k.indexOf('-') + 1)
    candidates.push({version, kernel: join(boot, k), modulesDir: modulesOverride ?? (await modulesFor(version))})
  }
  const chosen = wanted ? candidates.filter((c) => c.version === wanted) : candidates
  if (chosen.length === 0) {
    throw new AbortError({
      code: 'NO_KERNEL',
      message: wanted
        ? `${what} holds no kernel ${wanted} (found: ${candidates.map((c) => c.version).join(', ') || 'none'})`
        : `${what} holds no kernel (no boot/vmlinuz-*)`,
      hint: 'Give a Debian linux-image-*.deb (not a linux-headers or meta package), a folder with boot/vmlinuz-VERSION and lib/modules/VERSION, or a kernel file with --modules.',
      exitCode: ExitCode.invalid,
      ref: what,
    })
  }
  if (chosen.length > 1) {
    throw new AbortError({
      code: 'SEVERAL_KERNELS',
      message: `${what} holds several kernels: ${chosen.map((c) => c.version).join(', ')}`,
      hint: 'Choose one with --kernel-version VERSION.',
      exitCode: ExitCode.usage,
      ref: what,
    })
  }
  const c = chosen[0]!
  if (!c.modulesDir) {
    throw new AbortError({
      code: 'MODULES_NOT_FOUND',
      message: `${what} has boot/${basename(c.kernel)} but no lib/modules/${c.version}`,
      hint: 'Give the modules folder with --modules /lib/modules/VERSION.',
      exitCode: ExitCode.notFound,
      ref: what,
    })
  }
  return {kernel: c.kernel, modulesDir: c.modulesDir}
}

async function isDeb(path: string): Promise<boolean> {
  const head = await readHead(path, 8)
  return head.toString('latin1') === '!<arch>\n'
}

/** Unpack a .deb's files into a new folder (dpkg-deb -x). */
async function extractDeb(deb: string, into: string): Promise<void> {
  await run('dpkg-deb', ['-x', deb, into], {maxBuffer: 16 * 1024 * 1024}).catch((err: unknown) => {
    if (isErrno(err, 'ENOENT')) {
      throw new AbortError({
        code: 'DPKG_DEB_MISSING',
        message: 'dpkg-deb is needed to read a .deb and was not found',
        hint: 'Install dpkg (apt-get install dpkg), or unpack the package yourself and import the folder.',
        exitCode: ExitCode.notFound,
        ref: deb,
      })
    }
    throw new AbortError({
      code: 'BAD_DEB',
      message: `cannot unpack ${deb}: ${(err as {stderr?: string}).stderr?.trim() || (err as Error).message}`,
      hint: 'Check that the file is a complete Debian package (dpkg-deb -c FILE lists it).',
      exitCode: ExitCode.invalid,
      ref: deb,
      cause: err,
    })
  })
}

interface LocalKernel extends FoundKernel {
  kind: 'image' | 'deb' | 'root'
  /** A temporary folder to remove when done. */
  temp?: string
}

/** Find the kernel and modules folder a local source names. */
async function locate(source: string, opts: {modules?: string; kernelVersion?: string}): Promise<LocalKernel> {
  const st = await stat(source).catch((err: unknown) => {
    throw fileError(err, source, 'kernel source')
  })
  if (st.isDirectory()) {
    return {kind: 'root', ...(await findInRoot(source, source, opts.kernelVersion, opts.modules))}
  }
  if (!st.isFile()) throw fileError(Object.assign(new Error('EISDIR'), {code: 'EISDIR'}), source, 'kernel source')
  if (await isDeb(source).catch((err: unknown) => Promise.reject(fileError(err, source, 'kernel source')))) {
    const temp = await mkdtemp(join(tmpdir(), 'ovm-kernel-deb-'))
    try {
      await extractDeb(source, temp)
      return {kind: 'deb', temp, ...(await findInRoot(temp, source, opts.kernelVersion, opts.modules))}
    } catch (err) {
      await rm(temp, {recursive: true, force: true})
      throw err
    }
  }
  await probeKernel(source)
  if (!opts.modules) {
    throw new AbortError({
      code: 'MODULES_REQUIRED',
      message: `${source} is a kernel image; its modules are needed too`,
      hint: 'Add --modules /lib/modules/VERSION (the folder of this kernel\'s modules).',
      exitCode: ExitCode.usage,
      ref: source,
    })
  }
  return {kind: 'image', kernel: source, modulesDir: opts.modules}
}

// ---- the modules tar ------------------------------------------------------

/** Write a deterministic tar of `dir` as lib/modules/<version>/… (GNU tar). */
export async function writeModulesTar(dir: string, version: string, out: string): Promise<void> {
  if (!VERSION_RE.test(version)) throw new Error(`bad kernel version ${JSON.stringify(version)}`)
  const skel = await mkdtemp(join(tmpdir(), 'ovm-modules-skel-'))
  try {
    await mkdir(join(skel, 'lib', 'modules'), {recursive: true})
    await chmod(join(skel, 'lib'), 0o755)
    await chmod(join(skel, 'lib', 'modules'), 0o755)
    const args = [
      '-c',
      '-f', out,
      '--format=gnu',
      '--sort=name',
      '--mtime=@0',
      '--owner=0',
      '--group=0',
      '--numeric-owner',
      '-C', skel,
      '--no-recursion', 'lib', 'lib/modules',
      '--recursion',
      '-C', resolve(dir),
      // member names only: symlink targets (build -> /usr/src/...) stay as they are
      `--transform=s,^\\.,lib/modules/${version},S`,
      '.',
    ]
    await run('tar', args, {maxBuffer: 16 * 1024 * 1024}).catch((err: unknown) => {
      throw new AbortError({
        code: 'MODULES_TAR_FAILED',
        message: `could not tar the modules in ${dir}: ${(err as {stderr?: string}).stderr?.trim() || (err as Error).message}`,
        hint: isErrno(err, 'ENOENT') ? 'GNU tar is needed (apt-get install tar).' : 'Check that the folder can be read.',
        exitCode: ExitCode.invalid,
        ref: dir,
        cause: err,
      })
    })
  } finally {
    await rm(skel, {recursive: true, force: true})
  }
}

// ---- import ---------------------------------------------------------------

/** Make a kernel artifact (kernel + kernel-modules layers) in the local store. */
export async function importKernel(store: LayoutStore, opts: ImportKernelOptions, emit?: (e: PackEvent) => void): Promise<ImportKernelResult> {
  if (opts.tags.length === 0) {
    throw new AbortError({code: 'MISSING_TAG', message: 'no tag given', hint: 'Add -t NAME:TAG, e.g. -t example/kernel:6.1.', exitCode: ExitCode.usage})
  }
  const first = parseReference(opts.tags[0]!)
  const found = await locate(opts.source, opts)
  let work: string | undefined
  try {
    const probe = await probeKernel(found.kernel)
    const {version, moduleCount} = await checkModules(found.modulesDir, probe.release)
    work = await mkdtemp(join(tmpdir(), 'ovm-kernel-'))
    const tar = join(work, 'modules.tar')
    await writeModulesTar(found.modulesDir, version, tar)
    const result = await packArtifact(
      store,
      {
        name: first.repository,
        version: opts.version ?? version,
        kernel: found.kernel,
        modules: tar,
        cmdline: opts.cmdline,
        disks: [],
        tags: opts.tags,
        author: opts.author,
        created: opts.created,
        annotations: opts.annotations,
      },
      emit,
    )
    return {...result, kernelVersion: version, sourceKind: found.kind, moduleCount}
  } finally {
    if (work) await rm(work, {recursive: true, force: true})
    if (found.temp) await rm(found.temp, {recursive: true, force: true})
  }
}

// ---- resolve --------------------------------------------------------------

/** Whether a KERNEL argument names a local path rather than a store reference. */
export function looksLikePath(arg: string): boolean {
  if (/^(\/|\.\.?\/|~\/)/.test(arg) || arg === '.' || arg === '..' || /\.deb$/.test(arg)) return true
  try {
    parseReference(arg)
    return false
  } catch {
    return true
  }
}

async function onlyChild(dir: string, what: string, ref: string): Promise<string> {
  const names = await readdir(dir).catch(() => [] as string[])
  if (names.length !== 1) {
    throw new AbortError({
      code: 'KERNEL_ARTIFACT_INVALID',
      message: `kernel artifact ${ref}: expected one ${what}, found ${names.length === 0 ? 'none' : names.join(', ')}`,
      hint: 'Import the kernel again with `ovm kernel import`.',
      exitCode: ExitCode.invalid,
      ref,
    })
  }
  return names[0]!
}

/**
 * Unpack a kernel artifact from the store into the cache (once). With
 * `fromInitrd` (FROM REF without KERNEL), any OVMS artifact will do that has a
 * kernel and either a kernel-modules layer or an initramfs that `ovm build`
 * made: the modules OVMS-Init loads are the builder's too.
 */
async function unpackKernelArtifact(store: LayoutStore, artifactRef: string, opts: {fromInitrd?: boolean; name?: string} = {}): Promise<{kernel: string; modulesDir: string; version: string}> {
  const a = await loadArtifact(store, artifactRef)
  // For messages: the reference as the user wrote it.
  const ref = opts.name ?? artifactRef
  const kernelLayer = a.layers.find((l) => l.role === 'kernel')
  const modulesLayer = a.layers.find((l) => l.role === 'kernel-modules')
  const initrdLayer = opts.fromInitrd && !modulesLayer ? a.layers.find((l) => l.role === 'initrd') : undefined
  if (!kernelLayer || (!modulesLayer && !initrdLayer)) {
    throw new AbortError(
      opts.fromInitrd
        ? {
            code: 'BASE_HAS_NO_KERNEL',
            message: `the base artifact ${ref} has ${kernelLayer ? 'neither a kernel-modules layer nor an initrd' : 'no kernel'}, so the build cannot take its kernel`,
            hint: 'Add KERNEL REF (a kernel artifact from `ovm kernel import`) or KERNEL PATH MODULES DIR to the Ovmfile.',
            exitCode: ExitCode.invalid,
            ref,
          }
        : {
            code: 'NOT_A_KERNEL_ARTIFACT',
            message: `${ref} is not a kernel artifact: it has ${kernelLayer ? 'no kernel-modules layer' : 'no kernel layer'}`,
            hint: 'Make one with `ovm kernel import PATH|DEB -t REF`, or give a kernel path with MODULES.',
            exitCode: ExitCode.invalid,
            ref,
          },
    )
  }
  const final = join(kernelCacheDir(store), digestHex(a.descriptor.digest))
  const read = async (dir: string): Promise<{kernel: string; modulesDir: string; version: string}> => {
    const version = await onlyChild(join(dir, 'lib', 'modules'), 'lib/modules/VERSION folder', ref)
    return {kernel: join(dir, 'kernel'), modulesDir: join(dir, 'lib', 'modules', version), version}
  }
  if (await stat(join(final, 'kernel')).then((s) => s.isFile(), () => false)) return read(final)

  await mkdir(kernelCacheDir(store), {recursive: true})
  const tmp = `${final}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  try {
    await mkdir(tmp)
    // Blobs are verified against their digests while read.
    await pipeline(await store.fetch(kernelLayer.descriptor), createWriteStream(join(tmp, 'kernel'), {mode: 0o644}))
    if (modulesLayer) await extractModulesTar(await store.fetch(modulesLayer.descriptor), tmp, ref)
    else await extractInitrdModules(await store.fetchBytes(initrdLayer!.descriptor), join(tmp, 'kernel'), tmp, ref)
    await read(tmp)
    await chmod(join(tmp, 'kernel'), 0o444)
    try {
      await rename(tmp, final)
    } catch (err) {
      // Another process unpacked it first: use theirs.
      if (!(isErrno(err, 'ENOTEMPTY') || isErrno(err, 'EEXIST'))) throw err
      await rm(tmp, {recursive: true, force: true})
    }
    return read(final)
  } catch (err) {
    await rm(tmp, {recursive: true, force: true})
    throw err
  }
}

/**
 * The modules an initramfs made by `ovm build` carries (`lib/modules/NAME.ko`,
 * in load order) as `into/lib/modules/RELEASE/` with a modules.order, so the
 * builder finds them as in any modules folder.
 */
async function extractInitrdModules(initrd: Buffer, kernel: string, into: string, ref: string): Promise<void> {
  const bad = (why: string): AbortError =>
    new AbortError({
      code: 'BASE_HAS_NO_KERNEL',
      message: `the base artifact ${ref}: its initrd ${why}, so the build cannot take its kernel modules from it`,
      hint: 'Add KERNEL REF (a kernel artifact from `ovm kernel import`) or KERNEL PATH MODULES DIR to the Ovmfile.',
      exitCode: ExitCode.invalid,
      ref,
    })
  let entries: CpioEntry[]
  try {
    entries = readCpioNewc(firstInitramfsArchive(initrd))
  } catch (err) {
    throw bad(`cannot be read (${(err as Error).message})`)
  }
  const modules = entries.filter((e) => /^lib\/modules\/[^/]+\.ko$/.test(e.name) && (e.mode & 0o170000) === S_IFREG && e.data)
  if (modules.length === 0) throw bad('holds no kernel modules (it was not made by `ovm build`)')
  const {release} = await probeKernel(kernel)
  const dir = join(into, 'lib', 'modules', release ?? 'unknown')
  await mkdir(dir, {recursive: true})
  for (const m of modules) await writeFile(join(dir, basename(m.name)), m.data!, {mode: 0o644})
  await writeFile(join(dir, 'modules.order'), modules.map((m) => basename(m.name)).join('\n') + '\n')
}

/** Extract only lib/modules/ from a modules tar stream into `into`. */
async function extractModulesTar(src: NodeJS.ReadableStream, into: string, ref: string): Promise<void> {
  const child = spawn('tar', ['-x', '-f', '-', '-C', into, '--no-same-owner', '--delay-directory-restore', 'lib/modules'], {stdio: ['pipe', 'ignore', 'pipe']})
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const exited = new Promise<number | null>((res, rej) => {
    child.on('error', rej)
    child.on('close', (code) => res(code))
  })
  try {
    await pipeline(src, child.stdin)
  } catch (err) {
    child.kill()
    await exited.catch(() => undefined)
    // A digest mismatch surfaces from the source stream; a broken pipe means tar stopped early.
    if (!isErrno(err, 'EPIPE')) throw err
  }
  const code = await exited
  if (code !== 0) {
    throw new AbortError({
      code: 'KERNEL_ARTIFACT_INVALID',
      message: `kernel artifact ${ref}: its modules tar cannot be unpacked: ${stderr.trim() || `tar exited ${code}`}`,
      hint: 'Import the kernel again with `ovm kernel import`; `ovm store verify` checks the blobs.',
      exitCode: ExitCode.invalid,
      ref,
    })
  }
}

/**
 * The kernel and modules folder for a `KERNEL` argument: a kernel artifact
 * in the store (unpacked once into `<store>/cache/kernels/<digest>/`), or a
 * local path (a kernel image with `modules`, a .deb, or a root folder).
 */
/** The kernel (and builder modules) of a base artifact, for FROM REF without KERNEL. */
export async function baseArtifactKernel(store: LayoutStore, digest: string, name: string): Promise<ResolvedKernel> {
  const k = await unpackKernelArtifact(store, digest, {fromInitrd: true, name})
  return {...k, cleanup: async () => undefined}
}

export async function resolveKernel(store: LayoutStore, ref: string, opts: ResolveKernelOptions = {}): Promise<ResolvedKernel> {
  const noop = async (): Promise<void> => undefined
  if (!looksLikePath(ref)) {
    const k = await unpackKernelArtifact(store, ref)
    return {...k, cleanup: noop}
  }
  const abs = (p: string): string => resolve(opts.cwd ?? process.cwd(), p)
  const found = await locate(abs(ref), {modules: opts.modules ? abs(opts.modules) : undefined})
  try {
    const probe = await probeKernel(found.kernel)
    const {version} = await checkModules(found.modulesDir, probe.release, {builder: !opts.skipBuilderCheck})
    const temp = found.temp
    return {
      kernel: found.kernel,
      modulesDir: found.modulesDir,
      version,
      cleanup: temp ? async () => rm(temp, {recursive: true, force: true}) : noop,
    }
  } catch (err) {
    if (found.temp) await rm(found.temp, {recursive: true, force: true})
    throw err
  }
}
