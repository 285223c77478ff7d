import {humanBytes} from './format.js'

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
    this.tty = Boolean(out.isTTY) && process.env.CI !== 'true'
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
