/** Helpers for the TUI tests: unstyled frames, waiting for a frame, key codes, a scripted source. */
import {stripVTControlCharacters} from 'node:util'

import type {ArtifactDetail, ArtifactRow, BuildView, DashboardSource, InstanceRow, InstancesResult} from '../../src/ui/tui/types.js'

export const KEY = {tab: '\t', shiftTab: '\x1b[Z', up: '\x1b[A', down: '\x1b[B', right: '\x1b[C', left: '\x1b[D', enter: '\r', escape: '\x1b'}

export function unstyled(frame: string | undefined): string {
  return stripVTControlCharacters(frame ?? '')
}

/** Poll `frame()` until `pred` holds on its unstyled text; return that text (or fail with the last frame). */
export async function waitForFrame(frame: () => string | undefined, pred: (text: string) => boolean, what: string, timeoutMs = 5000): Promise<string> {
  const deadline = Date.now() + timeoutMs
  let text = unstyled(frame())
  while (!pred(text)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last frame:\n${text}`)
    await new Promise((r) => setTimeout(r, 10))
    text = unstyled(frame())
  }
  return text
}

/** Every line of a frame at most `width` columns and at most `height` lines. */
export function frameFits(text: string, width: number, height: number): {ok: boolean; lines: number; widest: number} {
  const lines = text.split('\n')
  const widest = Math.max(...lines.map((l) => [...l].length))
  return {ok: lines.length <= height && widest <= width, lines: lines.length, widest}
}

/**
 * A source with data set by the test, recording the actions asked of it.
 * For what only a daemon can give (instances, consoles) without booting a
 * VM; the end-to-end test drives the real source.
 */
export class ScriptedSource implements DashboardSource {
  readonly label = '/tmp/store'
  artifacts: ArtifactRow[] = []
  details = new Map<string, ArtifactDetail>()
  instances: InstancesResult = {ok: true, instances: []}
  builds: BuildView[] = []
  consoles = new Map<string, string[]>()
  stops: string[] = []
  snapshots: {id: string; tag: string}[] = []
  followers = new Map<string, (line: string) => void>()

  async listArtifacts(): Promise<ArtifactRow[]> {
    return this.artifacts
  }

  async inspect(reference: string): Promise<ArtifactDetail> {
    const d = this.details.get(reference)
    if (!d) throw Object.assign(new Error(`reference not found: ${reference}`), {hint: 'List the store with `ovm ls`.'})
    return d
  }

  async listInstances(): Promise<InstancesResult> {
    return this.instances
  }

  async followConsole(id: string, onLine: (line: string) => void, signal: AbortSignal): Promise<void> {
    for (const l of this.consoles.get(id) ?? []) onLine(l)
    this.followers.set(id, onLine)
    await new Promise<void>((r) => signal.addEventListener('abort', () => r(), {once: true}))
    this.followers.delete(id)
  }

  async stop(id: string): Promise<string> {
    this.stops.push(id)
    if (this.instances.ok) this.instances = {ok: true, instances: this.instances.instances.map((i) => (i.instance_id === id ? {...i, state: 'stopped' as const} : i))}
    return `${id} stopped (requested)`
  }

  async snapshot(id: string, tag: string): Promise<string> {
    this.snapshots.push({id, tag})
    return `${id}: snapshot ${tag}`
  }

  async listBuilds(): Promise<BuildView[]> {
    return this.builds
  }
}

export function instance(id: string, over: Partial<InstanceRow> = {}): InstanceRow {
  return {instance_id: id, state: 'running', pid: 4242, uptime_ms: 65_000, metrics: {engine: 'qemu', accel: 'tcg'}, artifact: {reference: 'test/hb:1', digest: `sha256:${'a'.repeat(64)}`}, ...over}
}
