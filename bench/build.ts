/**
 * npm run bench -- build: ovm build under the QEMU engine (TCG here).
 * First build, no-op rebuild, a one-step change, diff-layer size over bytes
 * written, and one builder boot per build against one boot per step.
 */
import {copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {FIXTURES, ovm} from '../test/helpers/cli.js'

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

async function timed(args: string[], home: string): Promise<{s: number; out: {result: {boots: number; stepsRun: number}}}> {
  const t0 = performance.now()
  const r = await ovm(args, {home})
  const s = (performance.now() - t0) / 1000
  if (r.code !== 0) throw new Error(`ovm ${args.join(' ')} failed: ${r.stderr}`)
  return {s, out: JSON.parse(r.stdout)}
}

export async function benchBuild(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'ovm-bench-build-'))
  try {
    const ctx = join(tmp, 'ctx')
    mkdirSync(ctx)
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    writeFileSync(join(ctx, 'Ovmfile'), ovmfile('one'))
    const args = (extra: string[] = []): string[] => ['build', ctx, '--build-arg', `KERNEL_ROOT=${FIXTURES}`, '-t', 'bench/build:1', '--json', ...extra]
    const home = join(tmp, 'home')
    const first = await timed(args(), home)
    const noop = await timed(args(), home)
    writeFileSync(join(ctx, 'Ovmfile'), ovmfile('two'))
    const change = await timed(args(), home)
    const info = JSON.parse((await ovm(['inspect', 'bench/build:1', '--json'], {home})).stdout)
    const disks = info.layers.filter((l: {role: string}) => l.role === 'disk')
    const ddLayer = disks[3] // base, COPY, RUN install, RUN dd
    const perStep = await timed(args(['--boot-per-step']), join(tmp, 'home-per-step'))
    console.log(`build (QEMU engine, TCG, 5-step Ovmfile, ${WRITE_MIB} MiB written by one step; wall time of the ovm command)`)
    console.log(`  first build          ${first.s.toFixed(2)} s  (${first.out.result.boots} builder boot)`)
    console.log(`  no-op rebuild        ${noop.s.toFixed(2)} s  (${noop.out.result.boots} boots; ratio to first build ${(noop.s / first.s).toFixed(3)})`)
    console.log(`  one-step change      ${change.s.toFixed(2)} s  (${change.out.result.stepsRun} step run)`)
    console.log(`  diff layer / written ${(ddLayer.size / (WRITE_MIB * 1024 * 1024)).toFixed(3)}  (${ddLayer.size} bytes for ${WRITE_MIB} MiB)`)
    console.log(`  boot per step        ${perStep.s.toFixed(2)} s  (${perStep.out.result.boots} boots; one boot per build is ${(perStep.s / first.s).toFixed(2)}x faster)`)
  } finally {
    rmSync(tmp, {recursive: true, force: true})
  }
}
