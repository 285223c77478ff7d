/**
 * End to end: the real `ovm tui` (bin/run.js over this worktree's dist) in a
 * tmux pane of 80x24, against a real store (the fixture artifact, packed and
 * signed) and a real instance (`ovm run -d` under QEMU/TCG). Keys go in with
 * send-keys; the screen comes back with capture-pane.
 */
import {execFile, execFileSync} from 'node:child_process'
import {copyFileSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {heartbeatInitramfs, holdVmLock, KERNEL, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {BIN, FIXTURES, ROOT, ovm, tempDir} from '../helpers/cli.js'

const run = promisify(execFile)

function tmuxMissing(): string | undefined {
  try {
    execFileSync('tmux', ['-V'], {stdio: 'ignore'})
    return undefined
  } catch {
    return 'tmux not installed'
  }
}

const skip = tmuxMissing() ?? vmSkipReason()
const SOCKET = `ovm-tui-test-${process.pid}`
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !['CI', 'CONTINUOUS_INTEGRATION', 'TMUX', 'NO_COLOR'].includes(k)))

async function tmux(...args: string[]): Promise<string> {
  return (await run('tmux', ['-L', SOCKET, '-f', '/dev/null', ...args], {env})).stdout
}

const screen = (): Promise<string> => tmux('capture-pane', '-p', '-t', 'tui')
const keys = (...k: string[]): Promise<string> => tmux('send-keys', '-t', 'tui', ...k)

async function waitScreen(pred: (s: string) => boolean, what: string, timeoutMs = 20_000): Promise<string> {
  const deadline = Date.now() + timeoutMs
  let s = await screen()
  while (!pred(s)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; screen:\n${s}`)
    await new Promise((r) => setTimeout(r, 100))
    s = await screen()
  }
  return s
}

describe('ovm tui without a terminal', () => {
  it('refuses with exit code 2, saying why and what to use instead', async () => {
    const tmp = tempDir()
    try {
      const r = await ovm(['tui'], {home: tmp.path})
      expect(r.code).toBe(2)
      expect(r.stdout).toBe('')
      expect(r.stderr).toContain('Error: ovm tui needs an interactive terminal, but its input and output are not a TTY')
      expect(r.stderr).toContain('Code: NOT_A_TERMINAL (exit 2)')
      expect(r.stderr).toContain('`ovm ls --json`, `ovm ps --json`')
    } finally {
      tmp.cleanup()
    }
  })
})

describe.skipIf(skip)('ovm tui in tmux (80x24) against a real store and a running instance', () => {
  const tmp = tempDir('ovm-tui-e2e-')
  const home = join(tmp.path, 'home')
  let release: () => void = () => undefined
  let id = ''
  let signature = ''
  const captures: string[] = []

  beforeAll(async () => {
    release = await holdVmLock()
    const initrd = heartbeatInitramfs(join(tmp.path, 'initrd'))
    const p = await ovm(['pack', '--name', 'example/heartbeat', '--version', '1.0', '--kernel', KERNEL, '--initrd', initrd, '--cmdline', 'console=ttyS0 panic=-1 quiet', '--created', '2026-11-26T12:00:00Z', '-t', 'example/heartbeat:1.0'], {home})
    expect(p.code, p.stderr).toBe(0)
    const k = await ovm(['key', 'generate', '--out', join(tmp.path, 'ovm')], {home, env: {OVM_KEY_PASSWORD: ''}})
    expect(k.code, k.stderr).toBe(0)
    const s = await ovm(['sign', 'example/heartbeat:1.0', '--key', join(tmp.path, 'ovm.key'), '--json'], {home, env: {OVM_KEY_PASSWORD: ''}})
    expect(s.code, s.stderr).toBe(0)
    signature = JSON.parse(s.stdout).signature
    const r = await ovm(['run', '-d', 'example/heartbeat:1.0', '--memory', '256M'], {home})
    expect(r.code, r.stderr).toBe(0)
    id = r.stdout.trim()
    expect(id).toMatch(/^[a-f0-9]{12}$/)
    // The pane runs the TUI, then says how it exited (the alternate screen is gone by then).
    const cmd = `cd ${ROOT} && env OVM_HOME=${home} LC_ALL=C.UTF-8 ${process.execPath} ${BIN} tui --poll-ms 500; echo "tui exited with $?"; sleep 600`
    await tmux('new-session', '-d', '-s', 'tui', '-x', '80', '-y', '24', cmd)
  }, 600_000)

  afterAll(async () => {
    // OVM_TUI_CAPTURE=FILE keeps what the screens showed (the README's capture).
    if (process.env.OVM_TUI_CAPTURE) writeFileSync(process.env.OVM_TUI_CAPTURE, `${captures.join('\n')}\n`)
    await tmux('kill-server').catch(() => undefined)
    await stopDaemon(home)
    release()
    tmp.cleanup()
  })

  it('shows the artifact row with its size, layers and signature, within 80x24', async () => {
    const s = await waitScreen((t) => t.includes('example/heartbeat:1.0'), 'the artifact row')
    expect(s).toMatch(/^> example\/heartbeat:1\.0\s+[0-9a-f]{12}\s+\d+(\.\d)? MiB\s+2\s+1\s+0\s*$/m)
    expect(s).toContain(`[1 Artifacts (1)]  2 Instances (1)`)
    const lines = s.replace(/\n$/, '').split('\n')
    expect(lines.length).toBeLessThanOrEqual(24)
    expect(Math.max(...lines.map((l) => [...l].length))).toBeLessThanOrEqual(80)
  })

  it('enter opens the inspect view with the layers and the signature; esc comes back', async () => {
    await keys('Enter')
    const s = await waitScreen((t) => t.includes('referrers (1)'), 'the inspect view')
    expect(s).toContain('name      example/heartbeat 1.0   created 2026-11-26T12:00:00Z')
    expect(s).toMatch(/kernel\s+application\/vnd\.ovms\.kernel\.v1\s+[0-9a-f]{12}\s+7\.9 MiB/)
    expect(s).toMatch(/initrd\s+application\/vnd\.ovms\.initrd\.v1/)
    expect(s).toMatch(new RegExp(`signature\\s+${signature.slice(7, 19)}`))
    await keys('Escape')
    await waitScreen((t) => t.includes('enter inspect'), 'the list again')
  })

  it('tab shows the running instance and its live console', async () => {
    await keys('Tab')
    const s = await waitScreen((t) => /OVM-HEARTBEAT \d+/.test(t), 'heartbeats in the console pane', 60_000)
    expect(s).toMatch(new RegExp(`^> ${id}\\s+running\\s+example/heartbeat:1\\.0\\s+(\\d+m)?\\d+s\\s+qemu/tcg`, 'm'))
    expect(s).toContain(`── console ${id} (live)`)
    const last = (t: string): number => Math.max(...[...t.matchAll(/OVM-HEARTBEAT (\d+)/g)].map((m) => Number(m[1])))
    const before = last(s)
    await waitScreen((t) => last(t) > before, 'a newer heartbeat without a key press')
    await waitScreen((t) => last(t) >= 3, 'a few heartbeats', 30_000)
    captures.push(`# Instances view (tab): the selected instance's console, live\n${await screen()}`)
   }, 120_000)

  it('p snapshots the instance after a y; the snapshot is listed as an artifact referring to the original', async () => {
    await keys('p')
    const q = await waitScreen((t) => t.includes('? y/n'), 'the snapshot question')
    const tag = new RegExp(`Snapshot ${id} as (example/heartbeat:snap-${id.slice(0, 8)}-\\d{14})\\? y/n`).exec(q)?.[1]
    expect(tag, q).toBeDefined()
    await keys('y')
    await waitScreen((t) => t.includes(`${id}: snapshot ${tag}`), 'the snapshot result', 120_000)
    const ls = JSON.parse((await ovm(['ls', '--json'], {home})).stdout) as {artifacts: {reference: string; ramSnapshot?: boolean}[]}
    expect(ls.artifacts.find((a) => a.reference === tag)?.ramSnapshot).toBe(true)
    await keys('1')
    const s = await waitScreen((t) => t.includes('enter inspect') && /^. example\/heartbeat:snap-/m.test(t), 'the snapshot row')
    expect(s).toContain('[1 Artifacts (2)]')
    captures.push(`# Artifacts view (1): tags, sizes, layers, signatures, other referrers, RAM snapshot\n${s}`)
    expect(s).toMatch(/^. example\/heartbeat:1\.0\s+[0-9a-f]{12}\s+\S+ MiB\s+2\s+1\s+1\s*$/m) // 1 signature, 1 other referrer: the snapshot
    expect(s).toMatch(/^. example\/heartbeat:snap-\S*\s+[0-9a-f]{12}\s+\S+ \S+\s+\d+\s+0\s+0\s+yes\s*$/m)
    await keys('2')
    await waitScreen((t) => t.includes(`── console ${id} (live)`), 'back on the instance')
  }, 180_000)

  it('s asks before stopping; n leaves it running; y stops it', async () => {
    await keys('s')
    await waitScreen((t) => t.includes(`Stop instance ${id} (example/heartbeat:1.0)? y/n`), 'the question')
    await keys('n')
    await waitScreen((t) => t.includes(' cancelled'), 'cancelled')
    expect((await ovm(['ps', '--json'], {home})).stdout).toContain('"running"')
    await keys('s')
    await waitScreen((t) => t.includes('? y/n'), 'the question again')
    await keys('y')
    const s = await waitScreen((t) => new RegExp(`^> ${id}\\s+stopped`, 'm').test(t), 'the instance stopped', 60_000)
    expect(s).toMatch(new RegExp(`${id} stopped`))
    const ps = JSON.parse((await ovm(['ps', '--json'], {home})).stdout) as {instances: {instance_id: string; state: string}[]}
    expect(ps.instances.find((i) => i.instance_id === id)?.state).toBe('stopped')
  }, 120_000)

  it('colours the running instance (NO_COLOR unset)', async () => {
    await keys('2')
    await waitScreen((t) => t.includes(`── console ${id}`), 'the instances view')
    const raw = await tmux('capture-pane', '-p', '-e', '-t', 'tui')
    expect(raw).toMatch(/\x1b\[[0-9;]*3[0-7]m|\x1b\[[0-9;]*9[0-7]m|\x1b\[[0-9;]*38;/)
  })

  it('the Builds view follows a real `ovm build` while it runs, to its result', async () => {
    const ctx = join(tmp.path, 'ctx')
    mkdirSync(ctx, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    const mods = readFileSync(join(FIXTURES, 'kernel-version'), 'utf8').trim()
    writeFileSync(
      join(ctx, 'Ovmfile'),
      `FROM scratch 32M\nKERNEL ${FIXTURES}/vmlinuz MODULES ${FIXTURES}/kernel-root/lib/modules/${mods}\nCMDLINE "console=ttyS0 panic=-1 quiet"\nCOPY --chmod=0755 busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nRUN echo tui-build-marker && sleep 3 && mkdir -p /etc && echo built > /etc/built\n`,
    )
    await keys('3')
    await waitScreen((t) => t.includes('[3 Builds'), 'the builds view')
    const build = ovm(['build', ctx, '-t', 'example/built:1'], {home})
    const mid = await waitScreen((t) => /^> running\s+example\/built:1/m.test(t), 'the build running', 120_000)
    expect(mid).toContain(`── ${join(ctx, 'Ovmfile')}`)
    expect(mid).toMatch(/line 5: RUN \["\/bin\/busybox"/)
    const done = await waitScreen((t) => /^> ok\s+example\/built:1\s+3\/3/m.test(t), 'the build finished', 300_000)
    expect(done).toMatch(/\+ line 6: RUN echo tui-build-marker.*\d+\.\d s/)
    expect(done).toContain(' tui-build-marker')
    expect(done).toMatch(/ {2}result sha256:[0-9a-f]{64}$/m)
    captures.push(`# Builds view (3): an \`ovm build\` followed live, here at its end\n${done}`)
    const r = await build
    expect(r.code, r.stderr).toBe(0)
    expect(done).toContain(r.stdout.trim().split('@')[1])
  }, 420_000)

  it('q quits, restoring the screen, with exit status 0', async () => {
    await keys('q')
    const s = await waitScreen((t) => t.includes('tui exited with'), 'the exit line')
    expect(s).toContain('tui exited with 0')
    expect(s).not.toContain('enter inspect')
  })

  it('NO_COLOR=1: the same dashboard without a colour code', async () => {
    await tmux('new-window', '-t', 'tui', '-n', 'nocolor', `cd ${ROOT} && env OVM_HOME=${home} NO_COLOR=1 LC_ALL=C.UTF-8 ${process.execPath} ${BIN} tui; sleep 600`)
    const target = 'tui:nocolor'
    const deadline = Date.now() + 20_000
    let raw = ''
    while (!raw.includes('example/heartbeat:1.0')) {
      if (Date.now() > deadline) throw new Error(`no dashboard:\n${raw}`)
      await new Promise((r) => setTimeout(r, 100))
      raw = await tmux('capture-pane', '-p', '-e', '-t', target)
    }
    expect(raw).not.toMatch(/\x1b\[[0-9;]*3[0-7]m|\x1b\[[0-9;]*9[0-7]m|\x1b\[[0-9;]*38;/)
    expect(raw).toMatch(/^(\x1b\[[0-9;]*m)*> example\//m) // the selection shows without colour
    await tmux('send-keys', '-t', target, 'q')
  })
})
