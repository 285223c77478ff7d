/**
 * Benchmark (not a test): cold boot-to-marker vs restore-to-marker for the
 * same artifact on the same engine and acceleration, through the runtime.
 *
 *   npx tsx test/engine/bench-run.ts [--runs N]
 *   npm run bench -- run     (once bench/index.ts lists `run: benchRun`)
 *
 * The artifact: Debian's kernel + a busybox initramfs whose init prints
 * OVM-INIT-OK, then "OVM-HEARTBEAT n" every 0.1 s. The marker is the first
 * console line of the guest's own program: OVM-INIT-OK on a cold boot, the
 * first heartbeat after a restore. Times run from the start request.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {packArtifact} from '../../src/build/pack.js'
import {Runtime} from '../../src/contract/runtime.js'
import {LayoutStore} from '../../src/oci/layout.js'
import {KERNEL, heartbeatInitramfs, lastHeartbeat, until, vmSkipReason} from './helpers.js'

async function startToMarker(rt: Runtime, ref: string, marker: (line: string) => boolean): Promise<{ms: number; id: string; startMs: number}> {
  const t0 = performance.now()
  const st = await rt.start({manifest: ref})
  const startMs = performance.now() - t0
  const inst = rt.get(st.instance_id)
  await until(() => inst.log.some((r) => r.type === 'console' && marker(r.line)), 120_000, `marker of ${ref}`)
  return {ms: performance.now() - t0, id: st.instance_id, startMs}
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

export async function benchRun(): Promise<void> {
  const skip = vmSkipReason()
  if (skip) {
    console.log(`bench run: skipped: ${skip}`)
    return
  }
  const runsArg = process.argv.indexOf('--runs')
  const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3
  const home = mkdtempSync(join(tmpdir(), 'ovm-bench-'))
  const store = new LayoutStore(home)
  const rt = new Runtime({store, runDir: join(home, 'run')})
  try {
    const initrd = heartbeatInitramfs(join(home, 'initrd'), '0.1')
    await packArtifact(store, {name: 'bench/hb', version: '1', kernel: KERNEL, initrd, cmdline: 'console=ttyS0 panic=-1', disks: [], tags: ['bench/hb:1']})
    const cold: number[] = []
    let snapId = ''
    for (let i = 0; i < runs; i++) {
      const r = await startToMarker(rt, 'bench/hb:1', (l) => l === 'OVM-INIT-OK')
      cold.push(r.ms)
      if (i < runs - 1) await rt.stop(r.id)
      else snapId = r.id
    }
    const inst = rt.get(snapId)
    await until(() => lastHeartbeat(inst.log.flatMap((r) => (r.type === 'console' ? [r.line] : []))) >= 5, 30_000, 'heartbeats')
    const snap = await rt.snapshot(snapId, 'bench/hb:warm')
    await rt.stop(snapId)
    const restore: number[] = []
    const startOnly: number[] = []
    for (let i = 0; i <= runs; i++) {
      const r = await startToMarker(rt, 'bench/hb:warm', (l) => l.startsWith('OVM-HEARTBEAT'))
      await rt.stop(r.id)
      if (i === 0) {
        console.log(`first restore (unpacks the RAM snapshot layer into the cache): ${r.ms.toFixed(0)} ms`)
        continue
      }
      restore.push(r.ms)
      startOnly.push(r.startMs)
    }
    const c = median(cold)
    const w = median(restore)
    const accel = rt.list()[0]?.metrics?.accel ?? '?'
    console.log(`engine qemu, accel ${accel}, 256 MiB, 1 vCPU, ${runs} runs each (medians)`)
    console.log(`cold boot-to-marker:   ${c.toFixed(0)} ms   (runs: ${cold.map((x) => x.toFixed(0)).join(', ')})`)
    console.log(`restore-to-marker:     ${w.toFixed(0)} ms   (runs: ${restore.map((x) => x.toFixed(0)).join(', ')}; start request alone ${median(startOnly).toFixed(0)} ms)`)
    console.log(`ratio restore/cold:    ${(w / c).toFixed(3)}   (goal under TCG: <= 0.1)`)
    console.log(`snapshot: paused ${snap.paused_ms} ms, total ${snap.total_ms} ms, ${((snap.size ?? 0) / 1048576).toFixed(1)} MiB of new layers`)
  } finally {
    await rt.shutdown()
    rmSync(home, {recursive: true, force: true})
  }
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) await benchRun()
