/** Text helpers for the TUI: every line is cut to the width, never wrapped. */
import {stripVTControlCharacters} from 'node:util'

/** Cut `s` to `width` columns, marking a cut with "…"; pad with spaces to exactly `width` when `pad`. */
export function fit(s: string, width: number, pad = false): string {
  if (width <= 0) return ''
  const cut = s.length > width ? `${s.slice(0, Math.max(0, width - 1))}…` : s
  return pad ? cut.padEnd(width) : cut
}

/** A guest console line made safe to draw: no escape sequences, tabs as spaces, no other control characters. */
export function cleanLine(s: string): string {
  return stripVTControlCharacters(s)
    .replace(/\t/g, '    ')
    .replace(/[\u0000-\u001f\u007f-\u009f]/g, '')
}

/** Columns of fixed widths, the last one taking what is left of `width`. */
export function row(cells: string[], widths: number[], width: number): string {
  let out = ''
  cells.forEach((c, i) => {
    const w = i === cells.length - 1 ? Math.max(0, width - out.length) : (widths[i] ?? 0)
    out += i === cells.length - 1 ? fit(c, w) : `${fit(c, w - 2, true)}  `
  })
  return fit(out, width)
}

export function humanDuration(ms: number | undefined): string {
  if (ms === undefined) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

/** The first `n` rows of `items` that keep `selected` in view: a scrolling window. */
export function windowAround<T>(items: T[], selected: number, n: number): {start: number; items: T[]} {
  if (items.length <= n) return {start: 0, items}
  const start = Math.min(Math.max(0, selected - Math.floor(n / 2)), items.length - n)
  return {start, items: items.slice(start, start + n)}
}
