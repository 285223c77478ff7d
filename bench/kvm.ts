/**
 * Benchmark (not a test) of the native KVM engine, side by side in one run:
 *  - boot-to-marker: our engine vs `qemu-system-x86_64 -machine microvm,accel=kvm`
 *    on the same kernel, initramfs and command line (goal: ratio <= 1.0);
 *  - restore-to-marker vs cold boot-to-marker with our engine (goal: <= 0.05);
 *  - snapshot time and size of the 256 MiB guest.
 * Needs a working /dev/kvm (run it inside scripts/nested-kvm.sh here):
 *   npx tsx bench/kvm.ts [--runs N]       npm run bench -- kvm
 * The guest: Debian's kernel + native/tools/mkinitramfs.sh's initramfs; the
 * marker is OVM-READY (printed by its /init); after a restore the marker is
 * the guest's answer to a console line ("got:go").
 */
import {execFileSync, spawn, spawnSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {KvmEngine} from '../src/engine/kvm/engine.js'
import type {BootSpec, VmHandle} from '../src/engine/types.js'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
const FIX = join(ROOT, 'test/.cache/fixtures')
const KERNEL = join(FIX, 'vmlinuz')
const CMDLINE = 'console=ttyS0 reboot=k panic=-1 i8042.noaux quiet'
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
const fmt = (ms: number): string => `${ms.toFixed(ms < 10 ? 2 : 0)} ms`

function waitLine(vm: VmHandle, pred: (l: string) => boolean, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off()
      reject(new Error(`no marker within ${timeoutMs} ms`))
    }, timeoutMs)
    const off = vm.on((e) => {
      if ((e.type === 'console' && pred(e.line)) || e.type === 'exit') {
        clearTimeout(t)
        off()
        if (e.type === 'exit') reject(new Error(`the VM ended (${e.status.reason}) before the marker`))
        else resolve()
      }
    })
  })
}

function qemuToMarker(initrd: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const p = spawn('qemu-system-x86_64', ['-machine', 'microvm,accel=kvm', '-cpu', 'host', '-m', '256', '-smp', '1', '-kernel', KERNEL, '-initrd', initrd, '-append', CMDLINE, '-nographic', '-nodefaults', '-serial', 'stdio', '-no-reboot'], {stdio: ['ignore', 'pipe', 'pipe']})
    let buf = ''
    let err = ''
    const timer = setTimeout(() => {
      p.kill('SIGKILL')
      reject(new Error(`qemu: no marker within ${timeoutMs} ms; stderr: ${err.slice(-300)}`))
    }, timeoutMs)
    p.stderr.on('data', (d: Buffer) => (err += d.toString()))
    p.stdout.on('data', (d: Buffer) => {
      buf += d.toString()
      if (buf.includes('OVM-READY')) {
        clearTimeout(timer)
        const ms = performance.now() - t0
        p.kill('SIGKILL')
        resolve(ms)
      }
    })
    p.on('exit', () => {
      clearTimeout(timer)
      if (!buf.includes('OVM-READY')) reject(new Error(`qemu ended before the marker: ${err.slice(-300)}`))
    })
  })
}

export async function benchKvm(): Promise<void> {
  const engine = new KvmEngine()
  const why = await engine.unavailable()
  if (why) {
    if (process.env.OVM_NESTED) {
      console.log(`bench kvm: skipped: ${why}`)
      return
    }
    // No working /dev/kvm here: run the same benchmark inside the nested
    // harness (a QEMU TCG guest whose CPU has SVM), where one does work.
    console.log(`bench kvm: ${why}; running inside the nested KVM guest (scripts/nested-kvm.sh)`)
    const args = ['scripts/nested-kvm.sh', '--timeout', '1500', '--', 'node_modules/.bin/tsx', 'bench/kvm.ts', ...process.argv.slice(2).filter((a, i, all) => a === '--runs' || all[i - 1] === '--runs')]
    const r = spawnSync('bash', args, {cwd: ROOT, stdio: 'inherit'})
    if (r.status !== 0) throw new Error(`bench kvm: the nested run failed (exit ${r.status}); its console log is test/.cache/nested/console.log`)
    return
  }
  const runsArg = process.argv.indexOf('--runs')
  const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3
  const work = mkdtempSync(join(tmpdir(), 'ovm-bench-kvm-'))
  try {
    const initrd = join(work, 'initramfs.cpio.gz')
    execFileSync(join(ROOT, 'native/tools/mkinitramfs.sh'), [join(FIX, 'kernel-root'), initrd])
    const spec: BootSpec = {kernel: KERNEL, initrd, cmdline: CMDLINE, memoryMiB: 256, cpus: 1, disks: [], devices: [], workDir: join(work, 'vm')}
    mkdirSync(spec.workDir, {recursive: true})
    const ours: number[] = []
    const qemu: number[] = []
    let snapMs = 0
    let snapBytes = 0
    let pausedMs = 0
    const snap = join(work, 'snap')
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now()
      const vm = await engine.boot(spec)
      await waitLine(vm, (l) => l === 'OVM-READY', 300_000)
      ours.push(performance.now() - t0)
      if (i === runs - 1) {
        const info = await vm.snapshot(snap, {leavePaused: true})
        snapMs = info.totalMs
        snapBytes = info.bytes
        pausedMs = info.pausedMs
      }
      await vm.stop()
      qemu.push(await qemuToMarker(initrd, 300_000).catch((err: Error) => (console.log(`qemu run ${i + 1}: ${err.message}`), Number.NaN)))
    }
    const restore: number[] = []
    const setup: number[] = []
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now()
      const vm = await engine.restore(spec, snap)
      setup.push(performance.now() - t0)
      const got = waitLine(vm, (l) => l === 'got:go', 60_000)
      vm.write('go\n')
      await got
      restore.push(performance.now() - t0)
      await vm.stop()
    }
    const q = qemu.filter((x) => !Number.isNaN(x))
    console.log(`bench kvm (${runs} runs each, medians; Debian ${CMDLINE.includes('quiet') ? 'quiet ' : ''}boot, 256 MiB, 1 vCPU)`)
    console.log(`  boot to OVM-READY, ovm kvm engine      ${fmt(median(ours))}   [${ours.map(fmt).join(', ')}]`)
    console.log(`  boot to OVM-READY, qemu microvm (kvm)  ${q.length ? fmt(median(q)) : 'n/a'}   [${qemu.map((x) => (Number.isNaN(x) ? 'failed' : fmt(x))).join(', ')}]`)
    if (q.length) console.log(`  ratio ovm/qemu                         ${(median(ours) / median(q)).toFixed(3)}   (goal <= 1.0)`)
    console.log(`  restore (setup only)                   ${fmt(median(setup))}`)
    console.log(`  restore to the guest's answer          ${fmt(median(restore))}   [${restore.map(fmt).join(', ')}]`)
    console.log(`  ratio restore/cold boot                ${(median(restore) / median(ours)).toFixed(4)}   (goal <= 0.05)`)
    console.log(`  snapshot of the 256 MiB guest          ${fmt(snapMs)} (paused ${fmt(pausedMs)}), ${(snapBytes / 1048576).toFixed(1)} MiB on disk`)
  } finally {
    rmSync(work, {recursive: true, force: true})
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchKvm()
