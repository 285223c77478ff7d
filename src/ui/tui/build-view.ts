/** Fold a build's event log records into what the Builds view draws (pure). */
import type {BuildLogRecord} from '../../build/event-log.js'
import {cleanLine} from './text.js'
import type {BuildStepView, BuildView} from './types.js'

export const BUILD_OUTPUT_LINES = 50

export function foldBuildLog(id: string, records: BuildLogRecord[], writerAlive: boolean, now = Date.now()): BuildView | undefined {
  const start = records[0]
  if (!start || start.type !== 'start') return undefined
  const steps: BuildStepView[] = start.steps.map((s) => ({index: s.index, line: s.line, text: s.text, state: 'pending'}))
  const byIndex = new Map(steps.map((s) => [s.index, s]))
  const view: BuildView = {id, ovmfile: start.ovmfile, tags: start.tags, startedAt: new Date(start.t).toISOString(), state: 'running', steps, output: [], elapsedMs: 0}
  let last = start.t
  for (const r of records.slice(1)) {
    last = r.t
    switch (r.type) {
      case 'step-cached': {
        const s = byIndex.get(r.step)
        if (s) s.state = 'cached'
        break
      }
      case 'step-start': {
        const s = byIndex.get(r.step)
        if (s) s.state = 'running'
        break
      }
      case 'step-output':
      case 'console':
        view.output.push(cleanLine(r.line))
        break
      case 'step-done': {
        const s = byIndex.get(r.step)
        if (s) Object.assign(s, {state: 'done', ms: r.ms, ...(r.layer ? {layer: r.layer} : {})})
        break
      }
      case 'phase':
        view.phase = r.phase
        break
      case 'boot':
        view.phase = `builder up in ${(r.ms / 1000).toFixed(1)} s`
        break
      case 'end':
        view.state = r.ok ? 'ok' : 'failed'
        if (r.digest) view.digest = r.digest
        if (r.error) view.error = r.error
        if (!r.ok) for (const s of steps) if (s.state === 'running') s.state = 'failed'
        break
    }
  }
  if (view.state === 'running' && !writerAlive) {
    view.state = 'interrupted'
    for (const s of steps) if (s.state === 'running') s.state = 'failed'
  }
  view.output = view.output.slice(-BUILD_OUTPUT_LINES)
  view.elapsedMs = (view.state === 'running' ? now : last) - start.t
  return view
}
