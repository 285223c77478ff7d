import {LITERAL_DOLLAR, type RawInstruction, type Word, lex, locate, words} from './lexer.js'
import type {CopyStep, DeviceSpec, Ovmfile, ParseResult, Position, Problem, RunStep} from './types.js'

export const INSTRUCTIONS = [
  'FROM', 'KERNEL', 'CMDLINE', 'INITRD', 'MEMORY', 'CPUS', 'DEVICE',
  'COPY', 'RUN', 'ENV', 'WORKDIR', 'ARG',
  'ENTRYPOINT', 'CMD', 'EXPOSE', 'LABEL', 'SNAPSHOT',
] as const

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i
const UNITS: Record<string, number> = {'': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4}

/** "512M", "2G", "1.5GiB", "4096" (bytes) → bytes; undefined when malformed. */
export function parseSize(text: string): number | undefined {
  const m = SIZE_RE.exec(text.trim())
  if (!m) return undefined
  const n = Number(m[1]) * (UNITS[(m[2] ?? '').toUpperCase()] as number)
  return Number.isFinite(n) ? Math.round(n) : undefined
}

/** "500ms", "30s", "2m", "1h" → milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim())
  if (!m) return undefined
  const mult = {ms: 1, s: 1000, m: 60_000, h: 3_600_000}[m[2] as 'ms' | 's' | 'm' | 'h']
  return Math.round(Number(m[1]) * mult)
}

export interface ParseOptions {
  /** --build-arg values; they override ARG defaults. */
  buildArgs?: Record<string, string>
}

/** Parse an Ovmfile, returning the tree and every problem at once. */
export function parseOvmfile(text: string, source: string, opts: ParseOptions = {}): ParseResult {
  const {instructions, problems: lexProblems} = lex(text)
  const p = new Parser(source, opts)
  p.problems.push(...lexProblems)
  for (const ins of instructions) p.instruction(ins)
  p.finish()
  const errors = p.problems.filter((x) => x.severity === 'error').sort(byPos)
  const warnings = p.problems.filter((x) => x.severity === 'warning').sort(byPos)
  return {ovmfile: p.file, errors, warnings}
}

function byPos(a: Position, b: Position): number {
  return a.line - b.line || a.col - b.col
}

class Parser {
  readonly problems: Problem[] = []
  readonly file: Ovmfile
  private readonly buildArgs: Record<string, string>
  /** Values visible to substitution: ARGs, then ENVs on top. */
  private readonly argValues: Record<string, string> = {}
  private readonly usedBuildArgs = new Set<string>()
  private readonly seen = new Map<string, Position>()
  private reportedFromFirst = false

  constructor(source: string, opts: ParseOptions) {
    this.buildArgs = opts.buildArgs ?? {}
    this.file = {source, devices: [], steps: [], env: {}, workdir: '/', exposedPorts: [], labels: {}, args: {}}
  }

  private err(at: Position, code: string, message: string, hint: string): void {
    this.problems.push({line: at.line, col: at.col, code, message, hint, severity: 'error'})
  }

  private warn(at: Position, code: string, message: string, hint: string): void {
    this.problems.push({line: at.line, col: at.col, code, message, hint, severity: 'warning'})
  }

  instruction(ins: RawInstruction): void {
    const before = this.problems.length
    this.dispatch(ins)
    // Columns so far count in the joined text; point into the line where the text was written.
    if (ins.segments.length > 1) {
      for (const p of this.problems.slice(before)) if (p.line === ins.pos.line) Object.assign(p, locate(ins, p.col))
    }
  }

  private dispatch(ins: RawInstruction): void {
    const kw = ins.keyword.toUpperCase()
    if (!(INSTRUCTIONS as readonly string[]).includes(kw)) {
      const guess = closest(kw, INSTRUCTIONS)
      this.err(ins.pos, 'UNKNOWN_INSTRUCTION', `unknown instruction "${ins.keyword}"`, guess ? `Did you mean ${guess}?` : `Use one of: ${INSTRUCTIONS.join(', ')}.`)
      return
    }
    if (this.file.snapshot && kw !== 'SNAPSHOT') {
      this.err(ins.pos, 'SNAPSHOT_NOT_LAST', `${kw} after SNAPSHOT (line ${this.file.snapshot.pos.line})`, 'SNAPSHOT bakes the finished VM: make it the last instruction.')
    }
    if (kw !== 'ARG' && kw !== 'FROM' && !this.seen.has('FROM') && !this.reportedFromFirst) {
      this.err(ins.pos, 'FROM_FIRST', `${kw} before FROM`, 'Start the Ovmfile with FROM (only ARG may come before it).')
      this.reportedFromFirst = true
    }
    const at = {line: ins.pos.line, col: ins.restCol}
    if (ins.rest === '' && kw !== 'SNAPSHOT') {
      this.err(at, 'MISSING_ARGUMENT', `${kw} needs an argument`, usage(kw))
      return
    }
    const handler = (this as unknown as Record<string, (ins: RawInstruction, at: Position) => void>)[`i${kw}`]
    handler?.call(this, ins, at)
  }

  private once(kw: string, pos: Position): void {
    const prev = this.seen.get(kw)
    if (prev && kw !== 'FROM') this.warn(pos, 'DUPLICATE', `${kw} given again (first at line ${prev.line}); the last one wins`, `Keep one ${kw}.`)
    if (prev && kw === 'FROM') this.err(pos, 'DUPLICATE_FROM', `a second FROM (first at line ${prev.line})`, 'An Ovmfile has one FROM; multi-stage builds are not supported.')
    this.seen.set(kw, pos)
  }

  private split(ins: RawInstruction, at: Position): Word[] | undefined {
    const r = words(ins.rest, ins.restCol)
    if (r.error) {
      this.err({line: at.line, col: r.error.col}, 'SYNTAX', r.error.message, 'Close the quote.')
      return undefined
    }
    return r.words.map((w) => ({...w, value: this.subst(w.value, {line: at.line, col: w.col})}))
  }

  /** Replace $NAME, ${NAME} and ${NAME:-default}; a `$` the lexer marked literal stays `$`. */
  private subst(value: string, at: Position): string {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_all, braced?: string, dflt?: string, bare?: string) => {
      const name = (braced ?? bare) as string
      const v = this.file.env[name] ?? this.argValues[name]
      // As in the shell, `:-` also replaces an empty value.
      if (v !== undefined && !(dflt !== undefined && v === '')) return v
      if (dflt !== undefined) return dflt
      this.warn(at, 'UNDEFINED_VARIABLE', `$${name} is not defined here; it expands to ""`, `Declare it with ARG ${name}=… or ENV ${name}=… before this line.`)
      return ''
    }).replaceAll(LITERAL_DOLLAR, '$')
  }

  /**
   * An exec-form JSON array, or undefined when `rest` is shell form. Text that
   * is not JSON is shell form (`RUN [ -f x ] || …`) unless it starts with `["`,
   * `['` or `[]`, which no shell command does: then it is a broken exec form.
   */
  private jsonArray(ins: RawInstruction, at: Position): string[] | undefined | null {
    const t = ins.rest.trim()
    if (!t.startsWith('[')) return undefined
    try {
      const v = JSON.parse(t) as unknown
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[]
    } catch {
      if (!/^\[["'\]]/.test(t)) return undefined
    }
    this.err(at, 'BAD_EXEC_FORM', `${ins.keyword.toUpperCase()} starts with [ but is not a JSON array of strings`, 'Write ["prog", "arg"] with double quotes, or drop the brackets for the shell form.')
    return null
  }

  iFROM(ins: RawInstruction, at: Position): void {
    this.once('FROM', ins.pos)
    const w = this.split(ins, at)
    if (!w || w.length === 0) return
    const first = w[0] as Word
    if (first.value === 'scratch') {
      const sizeW = w[1]
      if (!sizeW) return this.err(at, 'MISSING_ARGUMENT', 'FROM scratch needs a disk size', 'Write FROM scratch 2G [ext4].')
      const size = parseSize(sizeW.value)
      if (size === undefined || size < 16 * 1024 * 1024) {
        this.err({line: at.line, col: sizeW.col}, 'BAD_SIZE', `disk size "${sizeW.value}" is ${size === undefined ? 'not a size' : 'below 16M'}`, 'Write a size such as 512M or 2G (at least 16M).')
        return
      }
      const fsW = w[2]
      const fs = (fsW?.value ?? 'ext4') as 'ext4'
      if (fsW && fs !== 'ext4') {
        this.err({line: at.line, col: fsW.col}, 'UNSUPPORTED_FS', `file system "${fsW.value}" is not supported`, 'ovm makes ext4 disks; write FROM scratch SIZE ext4 or leave the file system out.')
      }
      if (w.length > 3) this.err({line: at.line, col: (w[3] as Word).col}, 'EXTRA_ARGUMENT', `unexpected "${(w[3] as Word).value}"`, 'FROM scratch takes a size and a file system.')
      this.file.from = {kind: 'scratch', size, sizeText: sizeW.value, fs, pos: ins.pos}
      return
    }
    if (first.value.startsWith('docker://') || first.value.startsWith('oci:')) {
      const source = first.value
      if (source === 'docker://' || source === 'oci:') return this.err(at, 'MISSING_ARGUMENT', `FROM ${source} needs an image`, 'Write FROM docker://alpine:3.19 or FROM oci:path/to/layout[:TAG].')
      const sizeW = w[1]
      let size: number | undefined
      if (sizeW) {
        size = parseSize(sizeW.value)
        if (size === undefined || size < 16 * 1024 * 1024) {
          this.err({line: at.line, col: sizeW.col}, 'BAD_SIZE', `disk size "${sizeW.value}" is ${size === undefined ? 'not a size' : 'below 16M'}`, 'Write a size such as 2G, or leave it out (the content plus 1G).')
          return
        }
      }
      if (w.length > 2) this.err({line: at.line, col: (w[2] as Word).col}, 'EXTRA_ARGUMENT', `unexpected "${(w[2] as Word).value}"`, 'FROM docker://IMAGE takes an optional disk size.')
      this.file.from = {kind: 'image', source, ...(size !== undefined ? {size, sizeText: (sizeW as Word).value} : {}), pos: ins.pos}
      return
    }
    if (w.length > 1) this.err({line: at.line, col: (w[1] as Word).col}, 'EXTRA_ARGUMENT', `unexpected "${(w[1] as Word).value}"`, 'FROM takes one reference, or scratch SIZE [FS].')
    if (first.value.startsWith('disk:')) {
      const path = first.value.slice(5)
      if (path === '') return this.err(at, 'MISSING_ARGUMENT', 'FROM disk: needs a path', 'Write FROM disk:path/to/image.qcow2.')
      this.file.from = {kind: 'disk', path, pos: ins.pos}
      return
    }
    if (!/^[a-z0-9][a-z0-9._\-/:@]*$/i.test(first.value)) {
      this.err({line: at.line, col: first.col}, 'BAD_REFERENCE', `"${first.value}" is not an artifact reference`, 'Write FROM scratch SIZE, FROM disk:PATH, FROM docker://IMAGE, or FROM name:tag.')
      return
    }
    this.file.from = {kind: 'artifact', ref: first.value, pos: ins.pos}
  }

  iKERNEL(ins: RawInstruction, at: Position): void {
    this.once('KERNEL', ins.pos)
    const w = this.split(ins, at)
    if (!w || w.length === 0) return
    const ref = (w[0] as Word).value
    let modules: string | undefined
    if (w.length > 1) {
      if ((w[1] as Word).value.toUpperCase() !== 'MODULES' || w.length !== 3) {
        this.err({line: at.line, col: (w[1] as Word).col}, 'BAD_KERNEL', `unexpected "${w.slice(1).map((x) => x.value).join(' ')}"`, 'Write KERNEL PATH|REF [MODULES PATH].')
        return
      }
      modules = (w[2] as Word).value
    }
    this.file.kernel = {ref, modules, pos: ins.pos}
  }

  iCMDLINE(ins: RawInstruction, at: Position): void {
    this.once('CMDLINE', ins.pos)
    const w = this.split(ins, at)
    if (!w) return
    this.file.cmdline = w.length === 1 && w[0]!.quoted ? w[0]!.value : w.map((x) => x.value).join(' ')
  }

  iINITRD(ins: RawInstruction, at: Position): void {
    this.once('INITRD', ins.pos)
    const w = this.split(ins, at)
    if (!w) return
    if (w.length !== 1) return this.err(at, 'EXTRA_ARGUMENT', 'INITRD takes one path', 'Write INITRD path/to/initrd.img.')
    this.file.initrd = (w[0] as Word).value
  }

  iMEMORY(ins: RawInstruction, at: Position): void {
    this.once('MEMORY', ins.pos)
    const w = this.split(ins, at)
    if (!w) return
    const size = w.length === 1 ? parseSize((w[0] as Word).value) : undefined
    if (size === undefined || size < 32 * 1024 * 1024) {
      return this.err(at, 'BAD_SIZE', `MEMORY "${ins.rest}" is ${size === undefined ? 'not a size' : 'below 32M'}`, 'Write a size such as 256M or 1G.')
    }
    this.file.memory = size
  }

  iCPUS(ins: RawInstruction, at: Position): void {
    this.once('CPUS', ins.pos)
    const w = this.split(ins, at)
    if (!w) return
    const n = w.length === 1 && /^\d+$/.test(w[0]!.value) ? Number(w[0]!.value) : Number.NaN
    if (!Number.isInteger(n) || n < 1 || n > 64) return this.err(at, 'BAD_CPUS', `CPUS "${ins.rest}" is not a whole number from 1 to 64`, 'Write CPUS 2.')
    this.file.cpus = n
  }

  iDEVICE(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    if (!w) return
    const kv = this.pairs(w, at, 'DEVICE type=ivshmem name=shm0 size=64M')
    if (!kv) return
    const dev: Partial<DeviceSpec> = {}
    for (const [k, v, col] of kv) {
      if (k === 'type' || k === 'name') dev[k] = v
      else if (k === 'size') {
        const s = parseSize(v)
        if (s === undefined) this.err({line: at.line, col}, 'BAD_SIZE', `device size "${v}" is not a size`, 'Write size=64M.')
        else dev.size = s
      } else if (k === 'mmio_addr') {
        if (!/^0x[0-9a-f]+$/i.test(v)) this.err({line: at.line, col}, 'BAD_ADDRESS', `mmio_addr "${v}" is not a hex address`, 'Write mmio_addr=0x10000000.')
        else dev.mmio_addr = v
      } else this.err({line: at.line, col}, 'UNKNOWN_KEY', `unknown DEVICE key "${k}"`, 'DEVICE takes type=, name=, size= and mmio_addr=.')
    }
    if (!dev.type || !dev.name) return this.err(at, 'MISSING_ARGUMENT', 'DEVICE needs type= and name=', 'Write DEVICE type=ivshmem name=shm0 size=64M.')
    this.file.devices.push(dev as DeviceSpec)
  }

  private pairs(w: Word[], at: Position, example: string): [string, string, number][] | undefined {
    const out: [string, string, number][] = []
    for (const x of w) {
      const i = x.value.indexOf('=')
      if (i <= 0) {
        this.err({line: at.line, col: x.col}, 'BAD_PAIR', `"${x.value}" is not KEY=VALUE`, `Write ${example}.`)
        return undefined
      }
      out.push([x.value.slice(0, i), x.value.slice(i + 1), x.col])
    }
    return out
  }

  private step(ins: RawInstruction, body: CopyStep | RunStep): void {
    const args: Record<string, string> = {}
    for (const name of Object.keys(this.file.args)) if (this.argValues[name] !== undefined) args[name] = this.argValues[name] as string
    this.file.steps.push({
      ...body,
      index: this.file.steps.length,
      pos: ins.pos,
      text: ins.text,
      env: {...this.file.env},
      args,
      workdir: this.file.workdir,
    })
  }

  iCOPY(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    if (!w) return
    let chown: {user: string; group?: string} | undefined
    let chmod: number | undefined
    const rest: Word[] = []
    for (const x of w) {
      if (x.value.startsWith('--chown=')) {
        const m = /^--chown=([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.-]+))?$/.exec(x.value)
        if (!m) this.err({line: at.line, col: x.col}, 'BAD_CHOWN', `"${x.value}" is not --chown=USER[:GROUP]`, 'Write --chown=1000:1000 or --chown=app:app.')
        else chown = {user: m[1] as string, ...(m[2] ? {group: m[2]} : {})}
      } else if (x.value.startsWith('--chmod=')) {
        const m = /^--chmod=([0-7]{3,4})$/.exec(x.value)
        if (!m) this.err({line: at.line, col: x.col}, 'BAD_CHMOD', `"${x.value}" is not --chmod=OCTAL`, 'Write --chmod=0644 or --chmod=755.')
        else chmod = Number.parseInt(m[1] as string, 8)
      } else if (x.value.startsWith('--') && rest.length === 0) {
        this.err({line: at.line, col: x.col}, 'UNKNOWN_FLAG', `unknown COPY flag "${x.value}"`, 'COPY takes --chown=USER[:GROUP] and --chmod=OCTAL.')
      } else rest.push(x)
    }
    if (rest.length < 2) return this.err(at, 'MISSING_ARGUMENT', 'COPY needs at least one source and a destination', 'Write COPY SRC... DEST.')
    const dest = rest.at(-1) as Word
    const sources = rest.slice(0, -1)
    // Sources refused here are left out of the step, so that checkContext does not report them again.
    const inside = sources.filter((s) => {
      const v = s.value.replace(/^\.\/+/, '')
      if (s.value.startsWith('/') || v === '..' || v.startsWith('../') || v.includes('/../') || v.endsWith('/..')) {
        this.err({line: at.line, col: s.col}, 'COPY_OUTSIDE_CONTEXT', `COPY source "${s.value}" is outside the build context`, 'Name files inside the build context folder, by paths relative to it.')
        return false
      }
      return true
    })
    // A destination ending in `/`, or `.`/`..` (as in `COPY a b .`), is a folder.
    const isDir = dest.value.endsWith('/') || /(^|\/)\.\.?$/.test(dest.value)
    if (sources.length > 1 && !isDir) {
      this.err({line: at.line, col: dest.col}, 'COPY_DEST_NOT_DIR', `COPY with ${sources.length} sources needs a folder destination ending in "/"`, `Write ${dest.value}/ as the destination.`)
    }
    const abs = normalisePath(dest.value.startsWith('/') ? dest.value : `${this.file.workdir}/${dest.value}`)
    const destAbs = isDir && abs !== '/' ? `${abs}/` : abs
    this.step(ins, {kind: 'COPY', sources: inside.map((s) => s.value), dest: destAbs, ...(dest.value.startsWith('/') ? {} : {relDest: dest.value}), ...(chown ? {chown} : {}), ...(chmod === undefined ? {} : {chmod})})
  }

  iRUN(ins: RawInstruction, at: Position): void {
    const exec = this.jsonArray(ins, at)
    if (exec === null) return
    if (exec && exec.length === 0) return this.err(at, 'MISSING_ARGUMENT', 'RUN [] has no command', 'Name a program: RUN ["prog", "arg"].')
    this.step(ins, {kind: 'RUN', command: exec ?? ins.rest})
  }

  iENV(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    if (!w || w.length === 0) return
    if (!w[0]!.value.includes('=')) {
      // ENV KEY value with spaces
      const key = w[0]!.value
      if (!validName(key)) return this.err({line: at.line, col: w[0]!.col}, 'BAD_NAME', `"${key}" is not a variable name`, 'Use letters, digits and _, not starting with a digit.')
      if (w.length < 2) return this.err(at, 'MISSING_ARGUMENT', `ENV ${key} needs a value`, `Write ENV ${key}=value.`)
      this.file.env[key] = w.slice(1).map((x) => x.value).join(' ')
      return
    }
    for (const [k, v, col] of this.pairs(w, at, 'ENV KEY=value') ?? []) {
      if (!validName(k)) this.err({line: at.line, col}, 'BAD_NAME', `"${k}" is not a variable name`, 'Use letters, digits and _, not starting with a digit.')
      else this.file.env[k] = v
    }
  }

  iARG(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    if (!w) return
    for (const x of w) {
      const i = x.value.indexOf('=')
      const name = i < 0 ? x.value : x.value.slice(0, i)
      if (!validName(name)) {
        this.err({line: at.line, col: x.col}, 'BAD_NAME', `"${name}" is not an ARG name`, 'Use letters, digits and _, not starting with a digit.')
        continue
      }
      const dflt = i < 0 ? undefined : x.value.slice(i + 1)
      this.file.args[name] = dflt
      const value = this.buildArgs[name] ?? dflt
      if (this.buildArgs[name] !== undefined) this.usedBuildArgs.add(name)
      if (value !== undefined) this.argValues[name] = value
    }
  }

  iWORKDIR(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    if (!w) return
    if (w.length !== 1) return this.err(at, 'EXTRA_ARGUMENT', 'WORKDIR takes one path', 'Write WORKDIR /srv/app.')
    const v = w[0]!.value
    this.file.workdir = normalisePath(v.startsWith('/') ? v : `${this.file.workdir}/${v}`)
  }

  private commandForm(ins: RawInstruction, at: Position): string[] | undefined {
    const exec = this.jsonArray(ins, at)
    if (exec === null) return undefined
    return exec ?? ['/bin/sh', '-c', ins.rest]
  }

  iENTRYPOINT(ins: RawInstruction, at: Position): void {
    this.once('ENTRYPOINT', ins.pos)
    const c = this.commandForm(ins, at)
    if (c) this.file.entrypoint = c
  }

  iCMD(ins: RawInstruction, at: Position): void {
    this.once('CMD', ins.pos)
    const c = this.commandForm(ins, at)
    if (c) this.file.cmd = c
  }

  iEXPOSE(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    for (const x of w ?? []) {
      const m = /^(\d{1,5})(?:\/(tcp|udp))?$/i.exec(x.value)
      if (!m || Number(m[1]) < 1 || Number(m[1]) > 65_535) {
        this.err({line: at.line, col: x.col}, 'BAD_PORT', `"${x.value}" is not a port`, 'Write EXPOSE 8080 or EXPOSE 8080/tcp 53/udp.')
        continue
      }
      const port = `${Number(m[1])}/${(m[2] ?? 'tcp').toLowerCase()}`
      if (!this.file.exposedPorts.includes(port)) this.file.exposedPorts.push(port)
    }
  }

  iLABEL(ins: RawInstruction, at: Position): void {
    const w = this.split(ins, at)
    for (const [k, v] of (w && this.pairs(w, at, 'LABEL org.opencontainers.image.source=https://…')) ?? []) this.file.labels[k] = v
  }

  iSNAPSHOT(ins: RawInstruction, at: Position): void {
    this.once('SNAPSHOT', ins.pos)
    const w = this.split(ins, at) ?? []
    const spec: NonNullable<Ovmfile['snapshot']> = {timeoutMs: 120_000, pos: ins.pos}
    for (let i = 0; i < w.length; i++) {
      const k = w[i]!.value.toUpperCase()
      const v = w[i + 1]
      if ((k === 'WHEN' || k === 'WHEN-RUN' || k === 'TIMEOUT') && !v) {
        this.err({line: at.line, col: w[i]!.col}, 'MISSING_ARGUMENT', `${k} needs a value`, usage('SNAPSHOT'))
        break
      }
      if (k === 'WHEN') {
        try {
          new RegExp(v!.value)
          spec.when = {kind: 'console', pattern: v!.value}
        } catch (e) {
          this.err({line: at.line, col: v!.col}, 'BAD_REGEXP', `WHEN "${v!.value}" is not a valid regular expression: ${(e as Error).message}`, 'Fix the pattern; it is a JavaScript regular expression matched against each console line.')
        }
        i++
      } else if (k === 'WHEN-RUN') {
        spec.when = {kind: 'run', command: v!.value}
        i++
      } else if (k === 'TIMEOUT') {
        const ms = parseDuration(v!.value)
        if (ms === undefined || ms <= 0) this.err({line: at.line, col: v!.col}, 'BAD_DURATION', `TIMEOUT "${v!.value}" is not a duration`, 'Write TIMEOUT 60s, 2m or 500ms.')
        else spec.timeoutMs = ms
        i++
      } else {
        this.err({line: at.line, col: w[i]!.col}, 'BAD_SNAPSHOT', `unexpected "${w[i]!.value}" in SNAPSHOT`, usage('SNAPSHOT'))
        break
      }
    }
    this.file.snapshot = spec
  }

  finish(): void {
    if (!this.seen.has('FROM')) {
      this.err({line: 1, col: 1}, 'MISSING_FROM', 'the Ovmfile has no FROM', 'Start it with FROM scratch 2G, FROM disk:PATH or FROM name:tag.')
    }
    if (this.file.from && this.file.from.kind !== 'artifact' && !this.file.kernel) {
      this.err(this.file.from.pos, 'MISSING_KERNEL', `FROM ${this.file.from.kind} needs a KERNEL`, 'Add KERNEL /boot/vmlinuz-… (or a kernel artifact reference). Only FROM name:tag inherits one.')
    }
    for (const name of Object.keys(this.buildArgs)) {
      if (!this.usedBuildArgs.has(name)) this.warn({line: 1, col: 1}, 'UNUSED_BUILD_ARG', `--build-arg ${name} is not declared by any ARG`, `Add ARG ${name} to the Ovmfile or drop the flag.`)
    }
    this.file.env = {...this.file.env}
  }
}

function validName(s: string): boolean {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(s)
}

export function normalisePath(p: string): string {
  const out: string[] = []
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') out.pop()
    else out.push(part)
  }
  return `/${out.join('/')}`
}

export function usage(kw: string): string {
  const u: Record<string, string> = {
    FROM: 'Write FROM scratch SIZE [ext4], FROM disk:PATH or FROM name:tag.',
    KERNEL: 'Write KERNEL PATH|REF [MODULES PATH].',
    CMDLINE: 'Write CMDLINE "console=ttyS0 quiet".',
    INITRD: 'Write INITRD path/to/initrd.img.',
    MEMORY: 'Write MEMORY 512M.',
    CPUS: 'Write CPUS 2.',
    DEVICE: 'Write DEVICE type=ivshmem name=shm0 size=64M.',
    COPY: 'Write COPY [--chown=U:G] [--chmod=0644] SRC... DEST.',
    RUN: 'Write RUN command args, or RUN ["prog", "arg"].',
    ENV: 'Write ENV KEY=value [KEY2=value2].',
    ARG: 'Write ARG NAME[=default].',
    WORKDIR: 'Write WORKDIR /path.',
    ENTRYPOINT: 'Write ENTRYPOINT ["/app", "--flag"].',
    CMD: 'Write CMD ["arg"].',
    EXPOSE: 'Write EXPOSE 8080/tcp.',
    LABEL: 'Write LABEL key=value.',
    SNAPSHOT: 'Write SNAPSHOT [WHEN "regexp" | WHEN-RUN "command"] [TIMEOUT 60s].',
  }
  return u[kw] ?? ''
}

/** The closest instruction name within edit distance 2, for "did you mean". */
function closest(word: string, options: readonly string[]): string | undefined {
  let best: string | undefined
  let bestD = 3
  for (const o of options) {
    const d = distance(word, o)
    if (d < bestD) {
      bestD = d
      best = o
    }
  }
  return best
}

function distance(a: string, b: string): number {
  const dp = Array.from({length: a.length + 1}, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) dp[0]![j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      dp[i]![j] = Math.min(dp[i - 1]![j]! + 1, dp[i]![j - 1]! + 1, dp[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
  }
  return dp[a.length]![b.length]!
}
