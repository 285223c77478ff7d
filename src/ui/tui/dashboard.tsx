/**
 * `ovm tui`: the dashboard. Three views (Artifacts, Instances, Builds) over a
 * `DashboardSource`, polled while shown; keyboard driven; drawn as a fixed
 * grid of `height - 1` lines (one short of the terminal, so ink never falls
 * back to clearing the screen) that only changes where the data did.
 */
import {Box, type Key, Text, useApp, useInput} from 'ink'
import {type JSX, useCallback, useEffect, useRef, useState} from 'react'

import {cleanLine, fit} from './text.js'
import type {ArtifactDetail, ArtifactRow, BuildView, DashboardSource, InstancesResult} from './types.js'
import {Lines, artifactLines, buildLines, inspectLines, instanceLines, rule} from './views.js'

export type Tab = 'artifacts' | 'instances' | 'builds'
const TABS: Tab[] = ['artifacts', 'instances', 'builds']
const TAB_TITLE: Record<Tab, string> = {artifacts: 'Artifacts', instances: 'Instances', builds: 'Builds'}

/** Console lines kept per followed instance. */
export const CONSOLE_KEEP = 500

export interface DashboardProps {
  source: DashboardSource
  width: number
  /** Terminal rows; the dashboard draws `height - 1` lines. */
  height: number
  color: boolean
  /** How often the shown view is refreshed. */
  pollMs?: number
  /** At most one console redraw per this many ms. */
  consoleThrottleMs?: number
  initialTab?: Tab
  /** For tests: the clock used to name snapshots. */
  now?: () => Date
}

type Confirm = {kind: 'stop'; id: string; what: string} | {kind: 'snapshot'; id: string; what: string; tag: string}

/** The tag a snapshot of an instance is published under: `<repository>:snap-<id8>-<UTC time>`. */
export function snapshotTag(reference: string | undefined, id: string, now: Date): string {
  let repo = (reference ?? '').replace(/@.*$/, '')
  const colon = repo.lastIndexOf(':')
  if (colon > repo.lastIndexOf('/')) repo = repo.slice(0, colon)
  if (!repo || repo.startsWith('sha256')) repo = 'snapshots/instance'
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, '').replace('T', '')
  return `${repo}:snap-${id.slice(0, 8)}-${stamp}`
}

function message(err: unknown): string {
  const e = err as {message?: string; hint?: string}
  return `${e?.message ?? String(err)}${e?.hint ? ` (${e.hint})` : ''}`
}

export function Dashboard(props: DashboardProps): JSX.Element {
  const {source, width, color} = props
  const pollMs = props.pollMs ?? 1000
  const throttleMs = props.consoleThrottleMs ?? 200
  const lines = Math.max(8, props.height - 1)
  const bodyHeight = lines - 4
  const {exit} = useApp()
  const onKey = useRef<(input: string, key: Key) => void>(() => undefined)
  useInput(useCallback((input: string, key: Key) => onKey.current(input, key), []))

  const [tab, setTab] = useState<Tab>(props.initialTab ?? 'artifacts')
  const [artifacts, setArtifacts] = useState<ArtifactRow[] | undefined>()
  const [artSel, setArtSel] = useState(0)
  const [inspect, setInspect] = useState<{reference: string; detail?: ArtifactDetail; error?: string; scroll: number} | undefined>()
  const [instances, setInstances] = useState<InstancesResult | undefined>()
  const [instSel, setInstSel] = useState(0)
  const [builds, setBuilds] = useState<BuildView[] | undefined>()
  const [buildSel, setBuildSel] = useState(0)
  const [confirm, setConfirm] = useState<Confirm | undefined>()
  const [status, setStatus] = useState('')
  const [tick, setTick] = useState(0)
  const [consoleView, setConsoleView] = useState<{id?: string; lines: string[]}>({lines: []})

  // ---- data: poll what is shown --------------------------------------------
  const refresh = useCallback(async (which: Tab): Promise<void> => {
    try {
      if (which === 'artifacts') setArtifacts(await source.listArtifacts())
      else if (which === 'instances') setInstances(await source.listInstances())
      else setBuilds(await source.listBuilds())
    } catch (err) {
      setStatus(`cannot read ${TAB_TITLE[which].toLowerCase()}: ${message(err)}`)
    }
  }, [source])

  useEffect(() => {
    let stopped = false
    let timer: NodeJS.Timeout | undefined
    const loop = async (): Promise<void> => {
      await refresh(tab)
      if (!stopped) timer = setTimeout(() => void loop(), pollMs)
    }
    void loop()
    return () => {
      stopped = true
      if (timer) clearTimeout(timer)
    }
  }, [tab, pollMs, refresh, tick])

  // Counts for the header: read each view once at start.
  useEffect(() => {
    for (const t of TABS) if (t !== tab) void refresh(t)
  }, [])

  const instanceList = instances?.ok ? instances.instances : []
  const selectedInstance = instanceList[Math.min(instSel, Math.max(0, instanceList.length - 1))]
  const followId = tab === 'instances' ? selectedInstance?.instance_id : undefined

  // ---- the selected instance's console, redrawn at most every throttleMs ----
  const consoleBuf = useRef<{id?: string; lines: string[]; dirty: boolean}>({lines: [], dirty: false})
  useEffect(() => {
    if (!followId) return
    const ac = new AbortController()
    consoleBuf.current = {id: followId, lines: [], dirty: true}
    source
      .followConsole(
        followId,
        (line) => {
          const b = consoleBuf.current
          if (b.id !== followId) return
          b.lines.push(cleanLine(line))
          if (b.lines.length > CONSOLE_KEEP) b.lines.splice(0, b.lines.length - CONSOLE_KEEP)
          b.dirty = true
        },
        ac.signal,
      )
      .catch((err: unknown) => {
        if (!ac.signal.aborted) setStatus(`console of ${followId}: ${message(err)}`)
      })
    const timer = setInterval(() => {
      const b = consoleBuf.current
      if (!b.dirty) return
      b.dirty = false
      setConsoleView({id: b.id, lines: b.lines.slice(-bodyHeight)})
    }, throttleMs)
    return () => {
      ac.abort()
      clearInterval(timer)
    }
  }, [followId, source, throttleMs, bodyHeight])

  // ---- inspect ---------------------------------------------------------------
  const openInspect = (reference: string): void => {
    setInspect({reference, scroll: 0})
    source.inspect(reference).then(
      (detail) => setInspect((s) => (s?.reference === reference ? {...s, detail} : s)),
      (err: unknown) => setInspect((s) => (s?.reference === reference ? {...s, error: message(err)} : s)),
    )
  }

  // ---- actions ---------------------------------------------------------------
  const runAction = (c: Confirm): void => {
    setStatus(c.kind === 'stop' ? `stopping ${c.id}…` : `snapshotting ${c.id}…`)
    const p = c.kind === 'stop' ? source.stop(c.id) : source.snapshot(c.id, c.tag)
    p.then(
      (line) => {
        setStatus(line)
        setTick((t) => t + 1)
        if (c.kind === 'snapshot') void refresh('artifacts')
      },
      (err: unknown) => setStatus(`${c.kind} failed: ${message(err)}`),
    )
  }

  const move = (delta: number, count: number, set: (f: (n: number) => number) => void): void => {
    set((n) => Math.max(0, Math.min(Math.max(0, count - 1), n + delta)))
  }

  // ink subscribes a handler in an effect, after the frame is drawn: a key
  // pressed in between must still see this render's state, hence the ref.
  onKey.current = (input, key) => {
    if (confirm) {
      if (input === 'y' || input === 'Y') {
        setConfirm(undefined)
        runAction(confirm)
      } else {
        setConfirm(undefined)
        setStatus('cancelled')
      }
      return
    }
    if (input === 'q' || (key.ctrl && input === 'c')) {
      exit()
      return
    }
    const page = Math.max(1, bodyHeight - 2)
    const delta = key.upArrow || input === 'k' ? -1 : key.downArrow || input === 'j' ? 1 : key.pageUp ? -page : key.pageDown ? page : 0
    if (tab === 'artifacts' && inspect) {
      if (key.escape || key.backspace || key.delete || key.leftArrow) setInspect(undefined)
      else if (delta) setInspect((s) => (s ? {...s, scroll: Math.max(0, s.scroll + delta)} : s))
      return
    }
    if (key.tab || key.rightArrow || key.leftArrow) {
      const step = key.leftArrow || (key.tab && key.shift) ? -1 : 1
      setTab((t) => TABS[(TABS.indexOf(t) + step + TABS.length) % TABS.length] as Tab)
      setStatus('')
      return
    }
    if (input >= '1' && input <= '3') {
      setTab(TABS[Number(input) - 1] as Tab)
      setStatus('')
      return
    }
    if (input === 'r') {
      setTick((t) => t + 1)
      setStatus('refreshed')
      return
    }
    if (tab === 'artifacts') {
      const rows = artifacts ?? []
      if (delta) move(delta, rows.length, setArtSel)
      else if (key.return && rows[artSel]) openInspect(rows[artSel].reference)
    } else if (tab === 'instances') {
      if (delta) move(delta, instanceList.length, setInstSel)
      else if (selectedInstance && (input === 's' || input === 'p')) {
        const what = `${selectedInstance.instance_id}${selectedInstance.artifact ? ` (${selectedInstance.artifact.reference})` : ''}`
        if (selectedInstance.state === 'stopped' || selectedInstance.state === 'error') setStatus(`${selectedInstance.instance_id} is ${selectedInstance.state}`)
        else if (input === 's') setConfirm({kind: 'stop', id: selectedInstance.instance_id, what})
        else setConfirm({kind: 'snapshot', id: selectedInstance.instance_id, what, tag: snapshotTag(selectedInstance.artifact?.reference, selectedInstance.instance_id, (props.now ?? (() => new Date()))())})
      }
    } else if (delta) move(delta, builds?.length ?? 0, setBuildSel)
  }

  // ---- drawing ---------------------------------------------------------------
  const count = (t: Tab): string => {
    const n = t === 'artifacts' ? artifacts?.length : t === 'instances' ? (instances?.ok ? instances.instances.length : undefined) : builds?.length
    return n === undefined ? '' : ` (${n})`
  }
  const tabsText = TABS.map((t, i) => (t === tab ? `[${i + 1} ${TAB_TITLE[t]}${count(t)}]` : ` ${i + 1} ${TAB_TITLE[t]}${count(t)} `)).join(' ')
  const head = ` ovm  ${tabsText}`
  // The store folder on the right, cut from the left when long (its end says the most).
  const room = width - head.length - 2
  const label = room < 8 ? '' : source.label.length <= room ? source.label : `…${source.label.slice(-(room - 1))}`
  const header = label ? head + label.padStart(width - head.length) : fit(head, width)

  let body
  let help: string
  if (tab === 'artifacts' && inspect) {
    const all = inspect.detail
      ? inspectLines(inspect.detail, width)
      : [{text: inspect.reference, style: 'title' as const}, inspect.error ? {text: `  ${inspect.error}`, style: 'error' as const} : {text: '  reading…', style: 'dim' as const}]
    const scroll = Math.min(inspect.scroll, Math.max(0, all.length - bodyHeight))
    body = all.slice(scroll, scroll + bodyHeight)
    help = ' esc back  ↑↓ scroll  q quit'
  } else if (tab === 'artifacts') {
    body = artifactLines(artifacts, Math.min(artSel, Math.max(0, (artifacts?.length ?? 1) - 1)), width, bodyHeight, source.label)
    help = ' ↑↓ select  enter inspect  tab/1-3 view  r refresh  q quit'
  } else if (tab === 'instances') {
    body = instanceLines(instances, Math.min(instSel, Math.max(0, instanceList.length - 1)), consoleView, width, bodyHeight)
    help = ' ↑↓ select  s stop  p snapshot  tab/1-3 view  r refresh  q quit'
  } else {
    body = buildLines(builds, Math.min(buildSel, Math.max(0, (builds?.length ?? 1) - 1)), width, bodyHeight)
    help = ' ↑↓ select build  tab/1-3 view  r refresh  q quit'
  }
  // A question keeps its "? y/n" in view: what is asked about is cut first.
  const ask = (before: string, subject: string): string => {
    const room = width - before.length - 6
    return `${before}${subject.length <= room ? subject : `…${subject.slice(-(room - 1))}`}? y/n`
  }
  const statusLine = confirm
    ? confirm.kind === 'stop'
      ? ask(' Stop instance ', confirm.what)
      : ask(` Snapshot ${confirm.id} as `, confirm.tag)
    : status
      ? ` ${status}`
      : ''

  return (
    <Box flexDirection="column" width={width} height={lines}>
      <Lines lines={[{text: header, style: 'title'}, rule('', width)]} width={width} height={2} color={color} />
      <Lines lines={body} width={width} height={bodyHeight} color={color} />
      <Text wrap="truncate-end" {...(color && confirm ? {color: 'yellow', bold: true} : confirm ? {bold: true} : {})}>
        {fit(statusLine, width) || ' '}
      </Text>
      <Text wrap="truncate-end" {...(color ? {dimColor: true} : {})}>
        {fit(help, width)}
      </Text>
    </Box>
  )
}
