/** The build event log that `ovm build` writes and `ovm tui` tails, and its fold into the Builds view. */
import {spawn} from 'node:child_process'
import {appendFileSync, readFileSync, readdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {BuildEventLog, BuildLogTail, KEEP_BUILD_LOGS, MAX_OUTPUT_RECORDS, buildLogDir} from '../../src/build/event-log.js'
import type {PlannedStep} from '../../src/build/plan.js'
import {foldBuildLog} from '../../src/ui/tui/build-view.js'
import {tempDir} from '../helpers/cli.js'

const step = (index: number, text: string, cached = false): PlannedStep => ({index, line: index + 3, kind: 'RUN', text, cacheKey: `sha256:${index}`, parentKey: 'sha256:p', cached, inputs: []})
const steps = [step(0, 'RUN echo one', true), step(1, 'RUN make'), step(2, 'COPY a /a')]

let tmp: {path: string; cleanup: () => void}
beforeAll(() => {
  tmp = tempDir('ovm-buildlog-')
})
afterAll(() => tmp.cleanup())

describe('BuildEventLog and BuildLogTail', () => {
  it('a build in progress is read as running, step by step, and as ok once it ends', async () => {
    const root = join(tmp.path, 'a')
    const log = (await BuildEventLog.open(root, {ovmfile: '/src/Ovmfile', tags: ['example/app:1'], steps}))!
    expect(log.path.startsWith(buildLogDir(root))).toBe(true)
    const tail = new BuildLogTail(root)
    log.event({type: 'step-cached', step: steps[0]!})
    log.event({type: 'boot', ms: 4200})
    log.event({type: 'step-start', step: steps[1]!})
    log.event({type: 'step-output', step: steps[1]!, line: '\x1b[32mcc -o app\x1b[0m'})
    let [b] = await tail.read()
    expect(b!.writerAlive).toBe(true) // this process writes it
    let v = foldBuildLog(b!.id, b!.records, b!.writerAlive)!
    expect(v).toMatchObject({state: 'running', ovmfile: '/src/Ovmfile', tags: ['example/app:1'], phase: 'builder up in 4.2 s', output: ['cc -o app']})
    expect(v.steps.map((s) => s.state)).toEqual(['cached', 'running', 'pending'])
    // the tail reads only what was appended
    log.event({type: 'step-done', step: steps[1]!, ms: 1500, layer: {mediaType: 'x', digest: 'sha256:abc', size: 2048}})
    log.event({type: 'step-start', step: steps[2]!})
    log.event({type: 'step-done', step: steps[2]!, ms: 10})
    log.end({ok: true, digest: 'sha256:result'})
    ;[b] = await tail.read()
    v = foldBuildLog(b!.id, b!.records, b!.writerAlive)!
    expect(b!.writerAlive).toBe(false)
    expect(v.state).toBe('ok')
    expect(v.digest).toBe('sha256:result')
    expect(v.steps.map((s) => [s.state, s.ms, s.layer?.size])).toEqual([['cached', undefined, undefined], ['done', 1500, 2048], ['done', 10, undefined]])
    expect(b!.records.filter((r) => r.type === 'start')).toHaveLength(1) // nothing read twice
  })

  it('a failed build shows the failing step and the error', async () => {
    const root = join(tmp.path, 'b')
    const log = (await BuildEventLog.open(root, {ovmfile: 'Ovmfile', tags: ['x:1'], steps}))!
    log.event({type: 'step-start', step: steps[0]!})
    log.event({type: 'step-start', step: steps[1]!})
    // a step's layer may be recorded after the next step started
    log.event({type: 'step-done', step: steps[0]!, ms: 5})
    log.end({ok: false, error: 'line 4: RUN make exited with status 2'})
    const [b] = await new BuildLogTail(root).read()
    const v = foldBuildLog(b!.id, b!.records, b!.writerAlive)!
    expect(v.state).toBe('failed')
    expect(v.error).toBe('line 4: RUN make exited with status 2')
    expect(v.steps.map((s) => s.state)).toEqual(['done', 'failed', 'pending'])
  })

  it('a log whose writer died without an end record reads as interrupted', async () => {
    const root = join(tmp.path, 'c')
    const child = spawn(process.execPath, ['-e', ''], {stdio: 'ignore'})
    const pid = child.pid!
    await new Promise((r) => child.on('exit', r))
    const dir = buildLogDir(root)
    const log = (await BuildEventLog.open(root, {ovmfile: 'Ovmfile', tags: ['x:1'], steps}))!
    log.event({type: 'step-start', step: steps[1]!})
    // rewrite the start record as if that (now dead) process had written it
    const lines = readFileSync(log.path, 'utf8').split('\n')
    lines[0] = JSON.stringify({...JSON.parse(lines[0]!), pid})
    writeFileSync(log.path, lines.join('\n'))
    const [b] = await new BuildLogTail(root).read()
    expect(b!.writerAlive).toBe(false)
    const v = foldBuildLog(b!.id, b!.records, b!.writerAlive)!
    expect(v.state).toBe('interrupted')
    expect(v.steps[1]!.state).toBe('failed')
    expect(readdirSync(dir)).toHaveLength(1)
  })

  it('keeps the newest KEEP_BUILD_LOGS logs, lists newest first, and caps output records', async () => {
    const root = join(tmp.path, 'd')
    const dir = buildLogDir(root)
    const log0 = (await BuildEventLog.open(root, {ovmfile: 'Ovmfile', tags: ['x:1'], steps}))!
    log0.end({ok: true, digest: 'sha256:0'})
    // older logs, named by an earlier start time
    for (let i = 0; i < KEEP_BUILD_LOGS + 3; i++) {
      writeFileSync(join(dir, `20200101T0000${String(i).padStart(2, '0')}Z-1.ndjson`), `${JSON.stringify({t: i, type: 'start', pid: 1, ovmfile: `old${i}`, tags: [], steps: []})}\n`)
    }
    const log = (await BuildEventLog.open(root, {ovmfile: 'Ovmfile', tags: ['x:2'], steps}))!
    expect(readdirSync(dir)).toHaveLength(KEEP_BUILD_LOGS)
    expect(readdirSync(dir)).toContain(log0.path.split('/').pop())
    for (let i = 0; i < MAX_OUTPUT_RECORDS + 50; i++) log.event({type: 'console', line: `line ${i}`})
    appendFileSync(log.path, '{"t": 1, "type": "cons') // a torn last line is left for the next read
    const tail = new BuildLogTail(root, 3)
    const read = await tail.read()
    expect(read).toHaveLength(3)
    expect(read[0]!.id).toBe(log.path.split('/').pop()!.replace('.ndjson', ''))
    const outputs = read[0]!.records.filter((r) => r.type === 'console')
    expect(outputs).toHaveLength(MAX_OUTPUT_RECORDS)
    expect(outputs.at(-1)).toMatchObject({line: `line ${MAX_OUTPUT_RECORDS + 49}`})
    appendFileSync(log.path, 'ole", "line": "joined"}\n')
    const again = await tail.read()
    expect(again[0]!.records.at(-1)).toMatchObject({type: 'console', line: 'joined'})
  })

  it('an unwritable store gives no log and no error (the build goes on)', async () => {
    const file = join(tmp.path, 'not-a-dir')
    writeFileSync(file, 'x')
    expect(await BuildEventLog.open(file, {ovmfile: 'Ovmfile', tags: [], steps})).toBeUndefined()
  })
})
