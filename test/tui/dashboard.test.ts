/**
 * The dashboard's components through ink-testing-library, frames compared as
 * unstyled text. Artifacts come from a real store (packed and signed with the
 * CLI) through the real source; instances and builds from a scripted source.
 */
import {join} from 'node:path'

import {cleanup, render} from 'ink-testing-library'
import {createElement} from 'react'
import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {storeSource} from '../../src/commands/tui.js'
import {Dashboard, type DashboardProps, snapshotTag} from '../../src/ui/tui/dashboard.js'
import {ovm, packArgs, tempDir} from '../helpers/cli.js'
import {KEY, ScriptedSource, frameFits, instance, waitForFrame} from './helpers.js'

afterEach(() => cleanup())

function mount(props: Partial<DashboardProps> & Pick<DashboardProps, 'source'>): ReturnType<typeof render> {
  return render(createElement(Dashboard, {width: 80, height: 24, color: false, pollMs: 50, consoleThrottleMs: 20, ...props}))
}

let tmp: {path: string; cleanup: () => void}
let home: string
let digest: string
let signature: string

beforeAll(async () => {
  tmp = tempDir('ovm-tui-')
  home = join(tmp.path, 'home')
  const p = await ovm(packArgs('example/busybox:1.0', ['--json']), {home})
  expect(p.code, p.stderr).toBe(0)
  digest = JSON.parse(p.stdout).digest
  const k = await ovm(['key', 'generate', '--out', join(tmp.path, 'k')], {home, env: {OVM_KEY_PASSWORD: ''}})
  expect(k.code, k.stderr).toBe(0)
  const s = await ovm(['sign', 'example/busybox:1.0', '--key', join(tmp.path, 'k.key'), '--json'], {home, env: {OVM_KEY_PASSWORD: ''}})
  expect(s.code, s.stderr).toBe(0)
  signature = JSON.parse(s.stdout).signature
  const t = await ovm(['tag', 'example/busybox:1.0', 'example/busybox-with-a-very-long-repository-name-for-the-list:1.0'], {home})
  expect(t.code, t.stderr).toBe(0)
}, 120_000)
afterAll(() => tmp.cleanup())

describe('artifacts view over a real store', () => {
  it('lists each tag with size, layer count and signature count; the header counts them', async () => {
    const app = mount({source: storeSource(home, join(home, 'ovm.sock'))})
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('example/busybox:1.0'), 'the artifact row')
    expect(text).toContain('[1 Artifacts (2)]')
    const top = text.split('\n')[0]!
    expect(top.length).toBeLessThanOrEqual(80)
    expect(top.endsWith(home.slice(-12))).toBe(true) // the store folder, cut from the left when long
    const row = text.split('\n').find((l) => l.includes('example/busybox:1.0'))!
    // REFERENCE DIGEST SIZE LAYERS SIGS REFS SNAP
    expect(row).toMatch(new RegExp(`example/busybox:1\\.0\\s+${digest.slice(7, 19)}\\s+\\d+(\\.\\d)? MiB\\s+3\\s+1\\s+0\\s*$`))
    const long = text.split('\n').find((l) => l.includes('example/busybox-with'))!
    expect(long).toContain('…') // the long reference is cut, not wrapped
    expect(long.startsWith('> ')).toBe(true) // sorted first, and selected
    expect(frameFits(text, 80, 23).ok).toBe(true)
  })

  it('enter opens the inspect view: manifest fields, layers with media types and sizes, the signature; esc goes back', async () => {
    const app = mount({source: storeSource(home, join(home, 'ovm.sock'))})
    await waitForFrame(app.lastFrame, (t) => t.includes('example/busybox:1.0'), 'the list')
    app.stdin.write(KEY.down)
    await waitForFrame(app.lastFrame, (t) => /^> example\/busybox:1\.0/m.test(t), 'the second row selected')
    app.stdin.write(KEY.enter)
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('referrers (1)'), 'the inspect view')
    expect(text).toContain(`  ${digest}`)
    expect(text).toContain('name      example/busybox 1.0   created 2026-01-01T00:00:00Z')
    expect(text).toContain('cmdline   console=ttyS0 panic=-1')
    expect(text).toContain('type      application/vnd.ovms.manifest.v1+json')
    expect(text).toMatch(/kernel\s+application\/vnd\.ovms\.kernel\.v1\s+[0-9a-f]{12}\s+7\.9 MiB/)
    expect(text).toMatch(/initrd\s+application\/vnd\.ovms\.initrd\.v1\s+[0-9a-f]{12}/)
    expect(text).toMatch(/disk\[0\]\s+application\/vnd\.oci\.image\.layer\.v1\.tar\s+[0-9a-f]{12}\s+1\.0 MiB/)
    expect(text).toMatch(new RegExp(`signature\\s+${signature.slice(7, 19)}\\s+\\d+ B\\s+application/vnd\\.dev\\.sigstor`))
    expect(text).toContain('esc back')
    expect(frameFits(text, 80, 23).ok).toBe(true)
    app.stdin.write(KEY.escape)
    await waitForFrame(app.lastFrame, (t) => t.includes('enter inspect'), 'the list again')
  })

  it('says how to get an artifact when the store is empty, and that no daemon runs', async () => {
    const empty = join(tmp.path, 'empty')
    const app = mount({source: storeSource(empty, join(empty, 'ovm.sock'))})
    await waitForFrame(app.lastFrame, (t) => t.includes(`No artifacts in ${empty}.`) && t.includes('ovm pack'), 'the empty message')
    app.stdin.write(KEY.tab)
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('No ovm daemon is running at'), 'the daemon message')
    expect(text).toContain(join(empty, 'ovm.sock'))
    expect(text).toContain('ovm run -d REF')
  })
})

describe('instances view', () => {
  it('lists state, artifact, uptime and engine, and tails the selected console', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('3f2a9c0d1e4b'), instance('0123456789ab', {state: 'stopped', uptime_ms: 3_725_000, metrics: {engine: 'qemu', accel: 'tcg', restored: true}})]}
    src.consoles.set('3f2a9c0d1e4b', ['Linux version 6.1.0', '\x1b[1mOVM-INIT-OK\x1b[0m\ttab'])
    const app = mount({source: src, initialTab: 'instances'})
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('OVM-INIT-OK'), 'the console tail')
    expect(text).toMatch(/^> 3f2a9c0d1e4b\s+running\s+test\/hb:1\s+1m05s\s+qemu\/tcg\s*$/m)
    expect(text).toMatch(/^ {2}0123456789ab\s+stopped\s+test\/hb:1\s+1h02m\s+qemu\/tcg restored\s*$/m)
    expect(text).toContain('── console 3f2a9c0d1e4b (live) ')
    expect(text).toContain(' OVM-INIT-OK    tab') // escapes stripped, tab expanded
    // live: a new line appears without a key press
    src.followers.get('3f2a9c0d1e4b')!('OVM-HEARTBEAT 7')
    await waitForFrame(app.lastFrame, (t) => t.includes('OVM-HEARTBEAT 7'), 'a live console line')
  })

  it('keeps only the newest console lines that fit, and the frame within 80x24', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('3f2a9c0d1e4b')]}
    src.consoles.set('3f2a9c0d1e4b', Array.from({length: 300}, (_, i) => `line ${i} ${'x'.repeat(i % 150)}`))
    const app = mount({source: src, initialTab: 'instances'})
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('line 299'), 'the last console line')
    expect(text).not.toContain('line 280 ')
    const fit = frameFits(text, 80, 23)
    expect(fit, JSON.stringify(fit)).toMatchObject({ok: true, lines: 23})
  })

  it('s asks before stopping: n cancels, y stops the selected instance', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('aaaaaaaaaaaa'), instance('bbbbbbbbbbbb')]}
    const app = mount({source: src, initialTab: 'instances'})
    await waitForFrame(app.lastFrame, (t) => t.includes('bbbbbbbbbbbb'), 'the list')
    app.stdin.write(KEY.down)
    await waitForFrame(app.lastFrame, (t) => t.includes('> bbbbbbbbbbbb'), 'the second selected')
    app.stdin.write('s')
    await waitForFrame(app.lastFrame, (t) => t.includes('Stop instance bbbbbbbbbbbb (test/hb:1)? y/n'), 'the question')
    app.stdin.write('n')
    await waitForFrame(app.lastFrame, (t) => t.includes(' cancelled'), 'cancelled')
    expect(src.stops).toEqual([])
    app.stdin.write('s')
    await waitForFrame(app.lastFrame, (t) => t.includes('? y/n'), 'the question again')
    app.stdin.write('y')
    await waitForFrame(app.lastFrame, (t) => t.includes('bbbbbbbbbbbb stopped (requested)'), 'the answer')
    expect(src.stops).toEqual(['bbbbbbbbbbbb'])
    await waitForFrame(app.lastFrame, (t) => /> bbbbbbbbbbbb\s+stopped/.test(t), 'the row refreshed')
    // a stopped instance is not asked about again
    app.stdin.write('s')
    await waitForFrame(app.lastFrame, (t) => t.includes('bbbbbbbbbbbb is stopped'), 'the refusal')
    expect(src.stops).toEqual(['bbbbbbbbbbbb'])
  })

  it('p snapshots under <repository>:snap-<id>-<time> after a y', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('aaaaaaaaaaaa')]}
    const app = mount({source: src, initialTab: 'instances', now: () => new Date('2026-11-26T19:30:05Z')})
    await waitForFrame(app.lastFrame, (t) => t.includes('aaaaaaaaaaaa'), 'the list')
    app.stdin.write('p')
    await waitForFrame(app.lastFrame, (t) => t.includes(' Snapshot aaaaaaaaaaaa as test/hb:snap-aaaaaaaa-20261126193005? y/n'), 'the question')
    app.stdin.write('y')
    await waitForFrame(app.lastFrame, (t) => t.includes('snapshot test/hb:snap-aaaaaaaa-20261126193005'), 'the answer')
    expect(src.snapshots).toEqual([{id: 'aaaaaaaaaaaa', tag: 'test/hb:snap-aaaaaaaa-20261126193005'}])
  })

  it('shows an action that fails as a status line, with the hint', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('aaaaaaaaaaaa')]}
    src.stop = async () => {
      throw Object.assign(new Error('no instance aaaaaaaaaaaa'), {hint: 'List them with `ovm ps`.'})
    }
    const app = mount({source: src, initialTab: 'instances'})
    await waitForFrame(app.lastFrame, (t) => t.includes('aaaaaaaaaaaa'), 'the list')
    app.stdin.write('s')
    await waitForFrame(app.lastFrame, (t) => t.includes('? y/n'), 'the question')
    app.stdin.write('y')
    await waitForFrame(app.lastFrame, (t) => t.includes('stop failed: no instance aaaaaaaaaaaa (List them with `ovm ps`.)'), 'the error')
  })
})

describe('keys and layout', () => {
  it('tab, shift-tab and 1-3 switch views; q quits', async () => {
    const src = new ScriptedSource()
    const app = mount({source: src})
    await waitForFrame(app.lastFrame, (t) => t.includes('[1 Artifacts (0)]'), 'artifacts')
    app.stdin.write(KEY.tab)
    await waitForFrame(app.lastFrame, (t) => t.includes('[2 Instances (0)]'), 'instances')
    app.stdin.write(KEY.tab)
    await waitForFrame(app.lastFrame, (t) => t.includes('[3 Builds (0)]') && t.includes('No builds yet'), 'builds')
    app.stdin.write(KEY.shiftTab)
    await waitForFrame(app.lastFrame, (t) => t.includes('[2 Instances (0)]'), 'back to instances')
    app.stdin.write('1')
    await waitForFrame(app.lastFrame, (t) => t.includes('[1 Artifacts (0)]'), 'artifacts by number')
    app.stdin.write('q')
    // Quitting may flush the frames already due; after that, unmounted: no
    // more frames however long the pollers would have run.
    await new Promise((r) => setTimeout(r, 200))
    const frames = app.frames.length
    await new Promise((r) => setTimeout(r, 600))
    expect(app.frames.length).toBe(frames)
  })

  it('fits 80x24 in every view with long names (no line over 80, at most 23 lines)', async () => {
    const src = new ScriptedSource()
    const long = `registry.example.com:5000/${'team/'.repeat(10)}app:${'v'.repeat(40)}`
    src.artifacts = Array.from({length: 40}, (_, i) => ({reference: `${long}${i}`, digest: `sha256:${String(i).padStart(64, '0')}`, mediaType: 'x', size: 10 ** 9 * i, layers: 12, signatures: 2, otherReferrers: 3, ramSnapshot: i % 2 === 0}))
    src.instances = {ok: true, instances: Array.from({length: 30}, (_, i) => instance(`${i}`.padStart(12, 'c'), {artifact: {reference: long, digest: 'sha256:0'}}))}
    src.consoles.set('ccccccccccc0', [`${'y'.repeat(300)}`])
    src.builds = [
      {id: 'b', ovmfile: `/very/${'deep/'.repeat(30)}Ovmfile`, tags: [long, long], startedAt: '2026-11-26T19:00:00.000Z', state: 'running', phase: 'base', steps: Array.from({length: 30}, (_, i) => ({index: i, line: i + 2, text: `RUN ${'make '.repeat(30)}`, state: i < 10 ? 'done' : i === 10 ? 'running' : 'pending', ms: 1234})), output: [`${'z'.repeat(200)}`], elapsedMs: 99_000},
    ]
    const app = mount({source: src})
    const check = (t: string): void => {
      const fit = frameFits(t, 80, 23)
      expect(fit, `${JSON.stringify(fit)}\n${t}`).toMatchObject({ok: true, lines: 23})
    }
    check(await waitForFrame(app.lastFrame, (t) => t.includes('(40)'), 'artifacts'))
    for (let i = 0; i < 35; i++) app.stdin.write(KEY.down)
    check(await waitForFrame(app.lastFrame, (t) => /^> registry.* 32\.6 GiB/m.test(t), 'scrolled to row 36'))
    app.stdin.write('2')
    check(await waitForFrame(app.lastFrame, (t) => t.includes('yyyy'), 'instances with console'))
    app.stdin.write('3')
    const builds = await waitForFrame(app.lastFrame, (t) => t.includes('running') && t.includes('zzzz'), 'builds')
    check(builds)
    expect(builds).toMatch(/\* line 12: RUN make .*running$/m)
    expect(builds).toContain('10/30')
  })

  it('honours a narrow terminal too (60x15)', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('3f2a9c0d1e4b')]}
    const app = mount({source: src, width: 60, height: 15, initialTab: 'instances'})
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('3f2a9c0d1e4b'), 'the list')
    expect(frameFits(text, 60, 14)).toMatchObject({ok: true, lines: 14})
  })

  it('marks the selection in text, not only by colour (NO_COLOR)', async () => {
    const src = new ScriptedSource()
    src.instances = {ok: true, instances: [instance('3f2a9c0d1e4b'), instance('0123456789ab')]}
    const app = mount({source: src, initialTab: 'instances'})
    const text = await waitForFrame(app.lastFrame, (t) => t.includes('0123456789ab'), 'the list')
    expect(text).toMatch(/^> 3f2a9c0d1e4b/m)
    expect(text).toMatch(/^ {2}0123456789ab/m)
  })
})

describe('snapshotTag', () => {
  const at = new Date('2026-01-02T03:04:05.678Z')
  it.each([
    ['example/app:1.0', 'example/app:snap-3f2a9c0d-20260102030405'],
    ['localhost:5000/example/app:1.0', 'localhost:5000/example/app:snap-3f2a9c0d-20260102030405'],
    ['localhost:5000/example/app', 'localhost:5000/example/app:snap-3f2a9c0d-20260102030405'],
    ['example/app@sha256:abcd', 'example/app:snap-3f2a9c0d-20260102030405'],
    ['sha256:abcd', 'snapshots/instance:snap-3f2a9c0d-20260102030405'],
    [undefined, 'snapshots/instance:snap-3f2a9c0d-20260102030405'],
  ])('%s -> %s', (ref, tag) => {
    expect(snapshotTag(ref, '3f2a9c0d1e4b', at)).toBe(tag)
  })
})
