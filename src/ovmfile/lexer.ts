import type {Position, Problem} from './types.js'

/** One instruction: its keyword and the rest of its (joined) logical line. */
export interface RawInstruction {
  keyword: string
  pos: Position
  /** The argument text after the keyword, continuations joined with a space. */
  rest: string
  /** Column (1-based) where `rest` starts on the first line. */
  restCol: number
  /** The whole instruction as written, continuations joined. */
  text: string
  /**
   * Where each physical line starts in the joined text: `col` counts in the
   * joined text (as `restCol` and word columns do), `line`/`realCol` are
   * where that part was written. One entry unless the instruction continues.
   */
  segments: {col: number; line: number; realCol: number}[]
}

/** Marks a `$` that must stay literal (escaped, or inside single quotes); substitution turns it back into `$`. */
export const LITERAL_DOLLAR = '\uE000'

/** Map a column of an instruction's joined text to the line and column where it was written. */
export function locate(ins: RawInstruction, col: number): Position {
  let seg = ins.segments[0] as RawInstruction['segments'][number]
  for (const s of ins.segments) if (s.col <= col) seg = s
  return {line: seg.line, col: seg.realCol + (col - seg.col)}
}

/**
 * Split an Ovmfile into instructions. `#` at the start of a line (after
 * blanks) is a comment; a line ending in `\` (blanks after it allowed)
 * continues on the next one. Comment and blank lines inside a continuation
 * are skipped, as Dockerfiles do; a blank one draws a warning.
 */
export function lex(text: string): {instructions: RawInstruction[]; problems: Problem[]} {
  const lines = text.replace(/\r\n?/g, '\n').split('\n')
  const instructions: RawInstruction[] = []
  const problems: Problem[] = []
  let i = 0
  while (i < lines.length) {
    const first = lines[i] as string
    const lineNo = i + 1
    i++
    const trimmed = first.trimStart()
    if (trimmed === '' || trimmed.startsWith('#')) continue
    const indent = first.length - trimmed.length
    let joined = trimmed.trimEnd()
    const segments = [{col: indent + 1, line: lineNo, realCol: indent + 1}]
    while (/(^|[^\\])\\$/.test(joined)) {
      joined = joined.slice(0, -1)
      // Skip comment and blank lines inside a continuation, as Dockerfiles do.
      const blanks: number[] = []
      while (i < lines.length && /^\s*(#.*)?$/.test(lines[i] as string)) {
        if ((lines[i] as string).trim() === '') blanks.push(i + 1)
        i++
      }
      if (i >= lines.length) {
        problems.push({
          line: lineNo,
          col: indent + 1,
          code: 'DANGLING_CONTINUATION',
          message: 'the last line ends with `\\` but no line follows',
          hint: 'Remove the trailing backslash.',
          severity: 'error',
        })
        break
      }
      for (const b of blanks) {
        problems.push({
          line: b,
          col: 1,
          code: 'EMPTY_CONTINUATION',
          message: `blank line inside the instruction that starts on line ${lineNo}; it continues on line ${i + 1}`,
          hint: 'Remove the blank line, or the trailing `\\` on the line before it if the instruction should end there.',
          severity: 'warning',
        })
      }
      const next = lines[i] as string
      const base = `${joined.trimEnd()} `
      segments.push({col: indent + 1 + base.length, line: i + 1, realCol: next.length - next.trimStart().length + 1})
      joined = `${base}${next.trim()}`
      i++
    }
    const m = /^(\S+)(\s*)(.*)$/.exec(joined) as RegExpExecArray
    const keyword = m[1] as string
    instructions.push({
      keyword,
      pos: {line: lineNo, col: indent + 1},
      rest: (m[3] as string).trimEnd(),
      restCol: indent + 1 + keyword.length + (m[2] as string).length,
      text: joined.trimEnd(),
      segments,
    })
  }
  return {instructions, problems}
}

/** A word of an argument list, with where it starts. */
export interface Word {
  value: string
  col: number
  /** True when the word had quotes (so `a=b` inside quotes is one value). */
  quoted: boolean
}

/**
 * Split arguments into words: blanks separate, "double" and 'single' quotes
 * group, backslash escapes the next character outside single quotes.
 * Returns an error message for an unterminated quote.
 */
export function words(rest: string, col: number): {words: Word[]; error?: {col: number; message: string}} {
  const out: Word[] = []
  let i = 0
  while (i < rest.length) {
    while (i < rest.length && /\s/.test(rest[i] as string)) i++
    if (i >= rest.length) break
    const start = i
    let value = ''
    let quoted = false
    while (i < rest.length && !/\s/.test(rest[i] as string)) {
      const c = rest[i] as string
      if (c === '"' || c === "'") {
        quoted = true
        const close = findClose(rest, i + 1, c)
        if (close < 0) return {words: out, error: {col: col + i, message: `unterminated ${c === '"' ? 'double' : 'single'} quote`}}
        const inner = rest.slice(i + 1, close)
        // No substitution inside single quotes; in double quotes \" \\ \$ are escapes.
        value += c === '"' ? inner.replace(/\\(["\\$])/g, (_, e: string) => (e === '$' ? LITERAL_DOLLAR : e)) : inner.replaceAll('$', LITERAL_DOLLAR)
        i = close + 1
      } else if (c === '\\' && i + 1 < rest.length) {
        // An escaped `$` is marked so that variable substitution leaves it.
        value += rest[i + 1] === '$' ? LITERAL_DOLLAR : rest[i + 1]
        i += 2
      } else {
        value += c
        i++
      }
    }
    out.push({value, col: col + start, quoted})
  }
  return {words: out}
}

function findClose(s: string, from: number, quote: string): number {
  for (let j = from; j < s.length; j++) {
    if (quote === '"' && s[j] === '\\') {
      j++
      continue
    }
    if (s[j] === quote) return j
  }
  return -1
}
