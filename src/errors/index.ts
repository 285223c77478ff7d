/**
 * One error model for all of ovm.
 *
 * - `AbortError`: the user can fix it (bad input, missing file, unknown ref).
 * - `BugError`: ours; the message asks for a report.
 *
 * Every error has a stable `code`, a message that names the file, field or
 * reference at fault, an optional `hint` ("Try this"), and an exit code from
 * the table below. Only the CLI entry point turns them into a process exit.
 */

/** Exit codes. Documented in the README; stable across releases. */
export const ExitCode = {
  ok: 0,
  /** Internal error (a bug in ovm). */
  bug: 1,
  /** Bad command line: unknown flag, missing argument. */
  usage: 2,
  /** Invalid input: a manifest, Ovmfile or flag value fails validation. */
  invalid: 3,
  /** Something named does not exist: file, reference, blob. */
  notFound: 4,
  /** Integrity: digest or size mismatch, corrupt store. */
  integrity: 5,
  /** Conflict: the store is locked by another process, or a name is taken. */
  conflict: 6,
  /** Authentication or authorisation refused by a registry. */
  auth: 7,
  /** Network or registry error. */
  network: 8,
  /** The engine (VMM) failed to start, run or snapshot a VM. */
  engine: 9,
  /** Refused by trust policy: missing or bad signature. */
  policy: 10,
  /** A build step (RUN/COPY) failed inside the builder VM. */
  buildFailed: 11,
  /** Interrupted by a signal (SIGINT). */
  interrupted: 130,
} as const

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode]

export interface ErrorDetail {
  /** Where the problem is: a JSON pointer, `file:line:col`, a flag name. */
  at: string
  message: string
  hint?: string
}

export interface OvmErrorOptions {
  code: string
  message: string
  hint?: string
  exitCode?: ExitCodeValue
  /** The file, reference or field the error is about. */
  ref?: string
  /** Individual problems, when there are several (validation). */
  details?: ErrorDetail[]
  cause?: unknown
}

export class OvmError extends Error {
  readonly code: string
  readonly hint?: string
  readonly exitCode: ExitCodeValue
  readonly ref?: string
  readonly details: ErrorDetail[]

  constructor(opts: OvmErrorOptions) {
    super(opts.message, opts.cause === undefined ? undefined : {cause: opts.cause})
    this.name = new.target.name
    this.code = opts.code
    this.hint = opts.hint
    this.exitCode = opts.exitCode ?? ExitCode.bug
    this.ref = opts.ref
    this.details = opts.details ?? []
  }

  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      ...(this.hint ? {hint: this.hint} : {}),
      ...(this.ref ? {ref: this.ref} : {}),
      ...(this.details.length > 0 ? {details: this.details} : {}),
      exitCode: this.exitCode,
    }
  }
}

/** A problem the user can fix. */
export class AbortError extends OvmError {
  constructor(opts: OvmErrorOptions & {exitCode: ExitCodeValue}) {
    super(opts)
  }
}

/** A bug in ovm. */
export class BugError extends OvmError {
  constructor(message: string, cause?: unknown) {
    super({
      code: 'INTERNAL',
      message,
      hint: 'This is a bug in ovm. Re-run with --debug and report the output.',
      exitCode: ExitCode.bug,
      cause,
    })
  }
}

export function isOvmError(err: unknown): err is OvmError {
  return err instanceof OvmError
}

/** Node's errno-style error, narrowed. */
export function isErrno(err: unknown, code?: string): err is NodeJS.ErrnoException {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof (err as {code: unknown}).code === 'string' &&
    (code === undefined || (err as {code: string}).code === code)
  )
}

/** Turn a file-system error on a user-named path into a clear AbortError. */
export function fileError(err: unknown, path: string, what = 'file'): OvmError {
  if (isErrno(err, 'ENOENT')) {
    return new AbortError({
      code: 'FILE_NOT_FOUND',
      message: `${what} not found: ${path}`,
      hint: 'Check the path; relative paths are resolved from the current directory.',
      exitCode: ExitCode.notFound,
      ref: path,
      cause: err,
    })
  }
  if (isErrno(err, 'EACCES') || isErrno(err, 'EPERM')) {
    return new AbortError({
      code: 'FILE_PERMISSION',
      message: `cannot read ${what}: ${path}: permission denied`,
      hint: 'Check the file permissions or run as a user who can read it.',
      exitCode: ExitCode.invalid,
      ref: path,
      cause: err,
    })
  }
  if (isErrno(err, 'EISDIR')) {
    return new AbortError({
      code: 'FILE_IS_DIRECTORY',
      message: `${what} is a directory, not a file: ${path}`,
      hint: 'Name a regular file.',
      exitCode: ExitCode.invalid,
      ref: path,
      cause: err,
    })
  }
  if (isOvmError(err)) return err
  return new BugError(`unexpected error reading ${path}: ${(err as Error)?.message ?? String(err)}`, err)
}

/** Render an error for a terminal: Error / Code / details / Try this. */
export function renderError(err: OvmError, opts: {debug?: boolean} = {}): string {
  const lines = [`Error: ${err.message}`]
  for (const d of err.details) {
    lines.push(`  - ${d.at}: ${d.message}${d.hint ? `\n      hint: ${d.hint}` : ''}`)
  }
  lines.push(`Code: ${err.code} (exit ${err.exitCode})`)
  if (err.hint) lines.push(`Try this: ${err.hint}`)
  const cause = err.cause as Error | undefined
  if (cause && !(cause instanceof OvmError) && cause.message && !err.message.includes(cause.message)) {
    lines.push(`Caused by: ${cause.message}`)
  }
  if (opts.debug) lines.push('', err.stack ?? '', ...(cause?.stack ? ['Cause:', cause.stack] : []))
  return lines.join('\n')
}
