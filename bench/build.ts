/**
 * npm run bench -- build: ovm build under the QEMU engine (TCG here).
 * First build, no-op rebuild, a one-step change, diff-layer size over bytes
 * written, and one builder boot per build against one boot per step.
 *
 * npm run bench -- build-kvm: the same on the kvm engine (ovm's own VMM)
 * and, in the same run, on the qemu engine with KVM acceleration; where this
 * host's /dev/kvm cannot run guests it re-runs itself inside the nested
 * harness (scripts/nested-kvm.sh).
 */
import {spawnSync} from 'node:child_process'
import {copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {KvmEngine} from '../src/engine/kvm/engine.js'
import {FIXTURES, ROOT, ovm} from '../test/helpers/cli.js'

const WRITE_MIB = Number(process.env.BENCH_WRITE_MIB ?? 32)

const ovmfile = (marker: string): string => `ARG KERNEL_ROOT
FROM scratch 256M
KERNEL \${KERNEL_ROOT}/vmlinuz MODULES \${KERNEL_ROOT}/kernel-root/lib/modules/6.1.0-56-amd64
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN dd if=/dev/urandom of=/payload bs=1M count=${WRITE_MIB} 2>/dev/null
RUN mkdir -p /etc && echo bench > /etc/hostname
RUN echo "${marker}" > /marker
`

interface Figures {
  first: number
  noop: number
  change: number
  layerRatio: number
  perStep: number
}

async function timed(args: string[], home: string): Promise<{s: number; out: {result: {boots: number; stepsRun: number}}}> {
  const t0 = performance.now()
  const r = await ovm(args, {home})
  const s = (performance.now() - t0) / 1000
  if (r.code !== 0) throw new Error(`ovm ${args.join(' ')} failed: ${r.stderr}`)
  return {s, out: JSON.parse(r.stdout)}
}

/** One engine's figures; prints them under `label`. */
async function measure(engine: 'auto' | 'kvm' | 'qemu', label: string): Promise<Figures> {
  const tmp = mkdtempSync(join(tmpdir(), 'ovm-bench-build-'))
  try {
    const ctx = join(tmp, 'ctx')
    mkdirSync(ctx)
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    writeFileSync(join(ctx, 'Ovmfile'), ovmfile('one'))
    const args = (extra: string[] = []): string[] => ['build', ctx, '--engine', engine, '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', 'bench/build:1', '--json', ...extra]
    const home = join(tmp, 'home')
    const first = await timed(args(), home)
    const noop = await timed(args(), home)
    writeFileSync(join(ctx, 'Ovmfile'), ovmfile('two'))
    const change = await timed(args(), home)
    const info = JSON.parse((await ovm(['inspect', 'bench/build:1', '--json'], {home})).stdout)
    const disks = info.layers.filter((l: {role: string}) => l.role === 'disk')
    const ddLayer = disks[3] // base, COPY, RUN install, RUN dd
    const perStep = await timed(args(['--boot-per-step']), join(tmp, 'home-per-step'))
    const f: Figures = {first: first.s, noop: noop.s, change: change.s, layerRatio: ddLayer.size / (WRITE_MIB * 1024 * 1024), perStep: perStep.s}
    console.log(`build (${label}, 5-step Ovmfile, ${WRITE_MIB} MiB written by one step; wall time of the ovm command)`)
    console.log(`  first build          ${f.first.toFixed(2)} s  (${first.out.result.boots} builder boot)`)
    console.log(`  no-op rebuild        ${f.noop.toFixed(2)} s  (${noop.out.result.boots} boots; ratio to first build ${(f.noop / f.first).toFixed(3)})`)
    console.log(`  one-step change      ${f.change.toFixed(2)} s  (${change.out.result.stepsRun} step run)`)
    console.log(`  diff layer / written ${f.layerRatio.toFixed(3)}  (${ddLayer.size} bytes for ${WRITE_MIB} MiB)`)
    console.log(`  boot per step        ${f.perStep.toFixed(2)} s  (${perStep.out.result.boots} boots; one boot per build is ${(f.perStep / f.first).toFixed(2)}x faster)`)
    return f
  } finally {
    rmSync(tmp, {recursive: true, force: true})
  }
}

export async function benchBuild(): Promise<void> {
  await measure('qemu', 'QEMU engine, TCG')
}

export async function benchBuildKvm(): Promise<void> {
  const why = await new KvmEngine().unavailable()
  if (why) {
    if (process.env.OVM_NESTED) {
      console.log(`bench build-kvm: skipped: ${why}`)
      return
    }
    console.log(`bench build-kvm: ${why}; running inside the nested KVM guest (scripts/nested-kvm.sh)`)
    const r = spawnSync('bash', ['scripts/nested-kvm.sh', '--timeout', '1800', '--', 'node_modules/.bin/tsx', 'bench/index.ts', 'build-kvm'], {cwd: ROOT, stdio: 'inherit'})
    if (r.status !== 0) throw new Error(`bench build-kvm: the nested run failed (exit ${r.status}); its console log is test/.cache/nested/console.log`)
    return
  }
  const nested = process.env.OVM_NESTED ? ', nested KVM' : ''
  const ours = await measure('kvm', `kvm engine (ovm's VMM)${nested}`)
  process.env.OVM_QEMU_ACCEL = 'kvm' // the qemu engine's default is TCG; the peer gets the same /dev/kvm
  const peer = await measure('qemu', `qemu engine with KVM${nested}`)
  console.log('build: kvm engine over qemu engine (same run; below 1 is faster)')
  console.log(`  first build ${(ours.first / peer.first).toFixed(3)}, no-op rebuild ${(ours.noop / peer.noop).toFixed(3)}, one-step change ${(ours.change / peer.change).toFixed(3)}, boot per step ${(ours.perStep / peer.perStep).toFixed(3)}`)
}
