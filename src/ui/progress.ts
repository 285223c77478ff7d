import {humanBytes, isInteractive} from './format.js'

/**
 * Byte progress for one item at a time, on stderr: a redrawn line in a
 * terminal, one line per 10% elsewhere (CI logs), nothing when quiet.
 */
export class ProgressLine {
  private lastDecile = 0
  private readonly tty: boolean

  constructor(
    private readonly quiet: boolean,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = isInteractive(out)
  }

  start(label: string, total: number): void {
    this.lastDecile = 0
    if (this.quiet) return
    if (!this.tty) this.out.write(`${label}: ${humanBytes(total)}\n`)
  }

  update(label: string, done: number, total: number): void {
    if (this.quiet) return
    const pct = total > 0 ? Math.floor((done / total) * 100) : 100
    if (this.tty) {
      this.out.write(`\r\x1b[2K${label}  ${humanBytes(done)} / ${humanBytes(total)}  ${pct}%`)
      return
    }
    const decile = Math.floor(pct / 10)
    if (decile > this.lastDecile && decile < 10) {
      this.lastDecile = decile
      this.out.write(`${label}: ${pct}% (${humanBytes(done)} / ${humanBytes(total)})\n`)
    }
  }

  done(line: string): void {
    if (this.quiet) return
    this.out.write(this.tty ? `\r\x1b[2K${line}\n` : `${line}\n`)
  }
}

interface BlobRow {
  label: string
  done: number
  total: number
  state: 'active' | 'done'
  decile: number
}

/**
 * One progress bar per blob. In a terminal the rows are redrawn in place (at
 * most ten times a second); elsewhere (CI logs) each blob prints a line per
 * 10% and one when done; quiet prints nothing.
 */
export class BlobProgress {
  private readonly rows = new Map<string, BlobRow>()
  private drawn = 0
  private last = 0
  private readonly tty: boolean

  constructor(
    private readonly quiet: boolean,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = isInteractive(out)
  }

  start(id: string, label: string, total: number): void {
    this.rows.set(id, {label, done: 0, total, state: 'active', decile: 0})
    this.render(true)
  }

  update(id: string, done: number): void {
    const row = this.rows.get(id)
    if (!row) return
    row.done = done
    if (!this.tty && !this.quiet) {
      const decile = row.total > 0 ? Math.floor((done / row.total) * 10) : 10
      if (decile > row.decile && decile < 10) {
        row.decile = decile
        this.out.write(`${row.label}: ${decile * 10}% (${humanBytes(done)} / ${humanBytes(row.total)})\n`)
      }
      return
    }
    this.render(false)
  }

  finish(id: string, note: string): void {
    const row = this.rows.get(id)
    if (!row) return
    row.state = 'done'
    row.done = row.total
    row.label = `${row.label}  ${note}`
    if (!this.tty && !this.quiet) this.out.write(`${row.label}\n`)
    this.render(true)
  }

  private bar(row: BlobRow): string {
    const width = 24
    const frac = row.total > 0 ? Math.min(1, row.done / row.total) : 1
    const filled = Math.round(frac * width)
    const text = row.state === 'done' ? row.label : `${row.label}  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}%  ${humanBytes(row.done)} / ${humanBytes(row.total)}`
    const cols = this.out.columns ?? 100
    return text.length > cols - 1 ? text.slice(0, cols - 1) : text
  }

  private render(force: boolean): void {
    if (this.quiet || !this.tty) return
    const now = Date.now()
    if (!force && now - this.last < 100) return
    this.last = now
    const lines = [...this.rows.values()].map((r) => this.bar(r))
    let s = this.drawn > 0 ? `\x1b[${this.drawn}F` : ''
    for (const l of lines) s += `\x1b[2K${l}\n`
    this.out.write(s)
    this.drawn = lines.length
  }
}
