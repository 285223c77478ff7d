/**
 * The dashboard's views. Each turns data into exactly `height` lines of at
 * most `width` columns (a `Line` list), drawn by `<Lines>`: so the layout
 * never wraps, never grows past the terminal, and a redraw only changes the
 * lines whose text changed (ink's diffing).
 */
import {Box, Text} from 'ink'
import type {JSX} from 'react'

import {humanBytes, shortDigest} from '../format.js'
import {fit, humanDuration, row, windowAround} from './text.js'
import type {ArtifactDetail, ArtifactRow, BuildView, InstanceRow, InstancesResult} from './types.js'

export type LineStyle = 'selected' | 'title' | 'dim' | 'error' | 'ok' | 'warn' | 'rule'

export interface Line {
  text: string
  style?: LineStyle
}

const STYLE: Record<LineStyle, {color?: string; bold?: boolean; inverse?: boolean; dimColor?: boolean}> = {
  selected: {inverse: true},
  title: {bold: true, color: 'cyan'},
  dim: {dimColor: true},
  error: {color: 'red'},
  ok: {color: 'green'},
  warn: {color: 'yellow'},
  rule: {dimColor: true},
}

/** Exactly `height` lines, each cut to `width`; styles only when `color`. */
export function Lines(props: {lines: Line[]; width: number; height: number; color: boolean}): JSX.Element {
  const lines = props.lines.slice(0, props.height)
  while (lines.length < props.height) lines.push({text: ''})
  return (
    <Box flexDirection="column" width={props.width} height={props.height}>
      {lines.map((l, i) => {
        const style = props.color && l.style ? STYLE[l.style] : l.style === 'selected' || l.style === 'title' ? {bold: true} : {}
        return (
          <Text key={i} wrap="truncate-end" {...style}>
            {fit(l.text, props.width) || ' '}
          </Text>
        )
      })}
    </Box>
  )
}

const mark = (selected: boolean): string => (selected ? '> ' : '  ')

export function rule(title: string, width: number): Line {
  const head = title ? `── ${title} ` : ''
  return {text: fit(head + '─'.repeat(Math.max(0, width - head.length)), width), style: 'rule'}
}

// ---- artifacts -------------------------------------------------------------

export function artifactLines(rows: ArtifactRow[] | undefined, selected: number, width: number, height: number, storeLabel: string): Line[] {
  if (rows === undefined) return [{text: '  reading the store…', style: 'dim'}]
  if (rows.length === 0) {
    return [
      {text: `  No artifacts in ${storeLabel}.`},
      {text: '  Make one with `ovm pack` or `ovm build`, or fetch one with `ovm pull`.', style: 'dim'},
    ]
  }
  const fixed = [14, 11, 8, 6, 6, 4]
  const refWidth = Math.max(16, width - 2 - fixed.reduce((a, b) => a + b, 0))
  const widths = [refWidth, ...fixed]
  const header = {text: `  ${row(['REFERENCE', 'DIGEST', 'SIZE', 'LAYERS', 'SIGS', 'REFS', 'SNAP'], widths, width - 2)}`, style: 'title' as const}
  const win = windowAround(rows, selected, height - 1)
  return [
    header,
    ...win.items.map((a, i): Line => {
      const sel = win.start + i === selected
      const cells = a.error
        ? [a.reference, shortDigest(a.digest), `(${a.error})`]
        : [a.reference, shortDigest(a.digest), a.size === undefined ? '?' : humanBytes(a.size), String(a.layers ?? ''), String(a.signatures), String(a.otherReferrers), a.ramSnapshot ? 'yes' : '']
      return {text: mark(sel) + row(cells, a.error ? [refWidth, 14, width] : widths, width - 2), style: sel ? 'selected' : a.error ? 'error' : undefined}
    }),
  ]
}

export function inspectLines(d: ArtifactDetail, width: number): Line[] {
  const kv = (k: string, v: string): Line => ({text: `  ${k.padEnd(10)}${v}`})
  const out: Line[] = [
    {text: d.reference, style: 'title'},
    {text: `  ${d.digest}`},
    kv('name', `${d.name} ${d.version}${d.created ? `   created ${d.created}` : ''}`),
    kv('size', `${humanBytes(d.totalSize)} in ${d.layers.length} layers${d.ramSnapshot ? '   RAM snapshot: yes' : ''}`),
    kv('manifest', d.mediaType),
    ...(d.artifactType ? [kv('type', d.artifactType)] : []),
    ...(d.cmdline ? [kv('cmdline', d.cmdline)] : []),
    ...(d.subject ? [kv('subject', d.subject)] : []),
    rule(`layers (${d.layers.length})`, width),
  ]
  const lw = [14, Math.max(20, width - 2 - 14 - 14 - 10), 14, 10]
  out.push({text: `  ${row(['ROLE', 'MEDIA TYPE', 'DIGEST', 'SIZE'], lw, width - 2)}`, style: 'title'})
  for (const l of d.layers) out.push({text: `  ${row([l.role, l.mediaType, shortDigest(l.digest), humanBytes(l.size)], lw, width - 2)}`})
  out.push(rule(`referrers (${d.referrers.length})`, width))
  if (d.referrers.length === 0) out.push({text: '  none (sign it with `ovm sign REF --key ovm.key`)', style: 'dim'})
  else {
    const rw = [26, 14, 10, Math.max(10, width - 2 - 50)]
    out.push({text: `  ${row(['KIND', 'DIGEST', 'SIZE', 'ARTIFACT TYPE'], rw, width - 2)}`, style: 'title'})
    for (const r of d.referrers) out.push({text: `  ${row([r.kind, shortDigest(r.digest), humanBytes(r.size), r.artifactType], rw, width - 2)}`})
  }
  return out
}

// ---- instances -------------------------------------------------------------

export function engineOf(i: InstanceRow): string {
  return `${i.metrics?.engine ?? '-'}${i.metrics?.accel ? `/${i.metrics.accel}` : ''}${i.metrics?.restored ? ' restored' : ''}`
}

export function instanceLines(
  result: InstancesResult | undefined,
  selected: number,
  console: {id?: string; lines: string[]},
  width: number,
  height: number,
): Line[] {
  if (result === undefined) return [{text: '  asking the daemon…', style: 'dim'}]
  if (!result.ok) {
    return [
      {text: `  ${result.message}`, style: 'warn'},
      {text: '  Start one with `ovm serve`, or start a VM with `ovm run -d REF`; this view', style: 'dim'},
      {text: '  keeps asking.', style: 'dim'},
    ]
  }
  if (result.instances.length === 0) return [{text: '  No instances. Start one with `ovm run -d REF`.', style: 'dim'}]
  const widths = [14, 10, Math.max(12, width - 2 - 14 - 10 - 9 - 18), 9, 18]
  const listRows = Math.min(result.instances.length, Math.max(3, Math.floor((height - 2) / 3)))
  const win = windowAround(result.instances, selected, listRows)
  const out: Line[] = [{text: `  ${row(['ID', 'STATE', 'ARTIFACT', 'UPTIME', 'ENGINE'], widths, width - 2)}`, style: 'title'}]
  win.items.forEach((inst, i) => {
    const sel = win.start + i === selected
    const cells = [inst.instance_id, inst.state, inst.artifact?.reference ?? '-', humanDuration(inst.uptime_ms), engineOf(inst)]
    out.push({text: mark(sel) + row(cells, widths, width - 2), style: sel ? 'selected' : inst.state === 'running' ? 'ok' : inst.state === 'error' ? 'error' : 'dim'})
  })
  const current = result.instances[selected]
  const live = current?.state === 'running' || current?.state === 'starting' || current?.state === 'paused'
  out.push(rule(current ? `console ${current.instance_id}${live ? ' (live)' : ` (${current.state})`}` : 'console', width))
  const room = height - out.length
  const tail = console.id === current?.instance_id ? console.lines.slice(-room) : []
  if (tail.length === 0) out.push({text: '  (no console output yet)', style: 'dim'})
  for (const l of tail) out.push({text: ` ${l}`})
  return out
}

// ---- builds ----------------------------------------------------------------

const STEP_MARK: Record<string, string> = {pending: '.', cached: '=', running: '*', done: '+', failed: '!'}

export function buildLines(builds: BuildView[] | undefined, selected: number, width: number, height: number): Line[] {
  if (builds === undefined) return [{text: '  reading build logs…', style: 'dim'}]
  if (builds.length === 0) return [{text: '  No builds yet. `ovm build -t NAME:TAG DIR` shows up here while it runs.', style: 'dim'}]
  const widths = [13, Math.max(12, width - 2 - 13 - 9 - 21 - 8), 9, 21, 8]
  const listRows = Math.min(builds.length, 4)
  const win = windowAround(builds, selected, listRows)
  const out: Line[] = [{text: `  ${row(['STATE', 'TAGS', 'STEPS', 'STARTED', 'TIME'], widths, width - 2)}`, style: 'title'}]
  win.items.forEach((b, i) => {
    const sel = win.start + i === selected
    const finished = b.steps.filter((s) => s.state === 'done' || s.state === 'cached').length
    const cells = [b.state, b.tags.join(' '), `${finished}/${b.steps.length}`, b.startedAt.replace('T', ' ').slice(0, 19), humanDuration(b.elapsedMs)]
    out.push({text: mark(sel) + row(cells, widths, width - 2), style: sel ? 'selected' : b.state === 'failed' || b.state === 'interrupted' ? 'error' : b.state === 'running' ? 'ok' : undefined})
  })
  const b = builds[selected]
  if (!b) return out
  out.push(rule(`${b.ovmfile}${b.phase && b.state === 'running' ? `  ${b.phase}` : ''}`, width))
  const stepRoom = Math.max(1, Math.min(b.steps.length, Math.floor((height - out.length) / 2)))
  const runningAt = Math.max(0, b.steps.findIndex((s) => s.state === 'running' || s.state === 'failed'))
  for (const s of windowAround(b.steps, runningAt, stepRoom).items) {
    const note = s.state === 'cached' ? 'CACHED' : s.state === 'done' ? `${((s.ms ?? 0) / 1000).toFixed(1)} s${s.layer ? ` ${humanBytes(s.layer.size)}` : ''}` : s.state === 'running' ? 'running' : s.state === 'failed' ? 'FAILED' : ''
    const text = `  ${STEP_MARK[s.state]} line ${s.line}: ${s.text}`
    const right = note ? `  ${note}` : ''
    out.push({text: fit(text, width - right.length, true) + right, style: s.state === 'failed' ? 'error' : s.state === 'running' ? 'ok' : s.state === 'pending' ? 'dim' : undefined})
  }
  if (b.error) out.push({text: `  error: ${b.error}`, style: 'error'})
  else if (b.digest) out.push({text: `  result ${b.digest}`, style: 'ok'})
  out.push(rule('output', width))
  const room = height - out.length
  for (const l of b.output.slice(-Math.max(0, room))) out.push({text: ` ${l}`})
  return out
}
