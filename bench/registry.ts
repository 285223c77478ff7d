/**
 * npm run bench -- registry: ovm push/pull against skopeo copy, same artifact,
 * same local docker-registry, same run. Prints medians and ratios (ovm / skopeo).
 */
import {execFile} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {FIXTURES, ovm} from '../test/helpers/cli.js'
import {startRegistry} from '../test/helpers/registry.js'

const run = promisify(execFile)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024)

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

export async function benchRegistry(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'ovm-bench-'))
  const reg = await startRegistry()
  try {
    // SIZE_MIB in two disk layers: the first random (a hash chain: nothing is flattered), the second zeros.
    const random = join(tmp, 'random.raw')
    const zeros = join(tmp, 'zeros.raw')
    const half = Math.floor(SIZE_MIB / 2)
    const chunk = Buffer.alloc(1 << 20)
    const parts: Buffer[] = []
    let seed = createHash('sha256').update('ovm').digest()
    for (let i = 0; i < half; i++) {
      for (let o = 0; o < chunk.length; o += 32) {
        seed = createHash('sha256').update(seed).digest()
        seed.copy(chunk, o)
      }
      parts.push(Buffer.from(chunk))
    }
    writeFileSync(random, Buffer.concat(parts))
    writeFileSync(zeros, Buffer.alloc((SIZE_MIB - half) * 1024 * 1024))
    const home = join(tmp, 'home')
    const packed = await ovm(
      ['pack', '--name', 'bench/disk', '--version', '1', '--kernel', join(FIXTURES, 'vmlinuz'), '--disk', `${random}:raw`, '--disk', `${zeros}:raw`, '-t', 'bench/disk:1'],
      {home},
    )
    if (packed.code !== 0) throw new Error(packed.stderr)
    const rows: {what: string; ovm: number; skopeo: number}[] = []
    const pushO: number[] = []
    const pushS: number[] = []
    const pullO: number[] = []
    const pullS: number[] = []
    // Each tool pushes to a registry of its own, fresh every round: nothing can be mounted or skipped
    // because the other tool (or an earlier round) already uploaded it.
    for (let r = 0; r < ROUNDS; r++) {
      const regO = await startRegistry()
      const regS = await startRegistry()
      try {
        const o = `${regO.host}/bench/ovm:1`
        const s = `${regS.host}/bench/skopeo:1`
        pushO.push(await time(async () => {
          const x = await ovm(['push', o, '--from', 'bench/disk:1', '--no-referrers'], {home})
          if (x.code !== 0) throw new Error(x.stderr)
        }))
        pushS.push(await time(() => run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${home}:bench/disk:1`, `docker://${s}`])))
        const h2 = join(tmp, `pull-${r}`)
        pullO.push(await time(async () => {
          const x = await ovm(['pull', o, '--no-referrers'], {home: h2})
          if (x.code !== 0) throw new Error(x.stderr)
        }))
        pullS.push(await time(() => run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--preserve-digests', `docker://${s}`, `oci:${join(tmp, `skopeo-${r}`)}:x`])))
        rmSync(h2, {recursive: true, force: true})
        rmSync(join(tmp, `skopeo-${r}`), {recursive: true, force: true})
      } finally {
        await regO.stop()
        await regS.stop()
      }
    }
    const repush: number[] = []
    const first = await ovm(['push', `${reg.host}/bench/repush:1`, '--from', 'bench/disk:1', '--no-referrers'], {home})
    if (first.code !== 0) throw new Error(first.stderr)
    for (let r = 0; r < ROUNDS; r++) {
      repush.push(await time(async () => {
        const x = await ovm(['push', `${reg.host}/bench/repush:1`, '--from', 'bench/disk:1', '--no-referrers'], {home})
        if (x.code !== 0) throw new Error(x.stderr)
      }))
    }
    rows.push({what: `push ${SIZE_MIB} MiB`, ovm: median(pushO), skopeo: median(pushS)})
    rows.push({what: `pull ${SIZE_MIB} MiB`, ovm: median(pullO), skopeo: median(pullS)})
    console.log(`registry (docker-registry 2.8.2 on loopback, median of ${ROUNDS}, times include process start)`)
    for (const row of rows) {
      console.log(`  ${row.what.padEnd(14)} ovm ${row.ovm.toFixed(2)} s   skopeo ${row.skopeo.toFixed(2)} s   ratio ovm/skopeo ${(row.ovm / row.skopeo).toFixed(2)} (goal <= 0.70)`)
    }
    console.log(`  unchanged re-push  ovm ${median(repush).toFixed(2)} s (goal < 1 s)`)
  } finally {
    await reg.stop()
    rmSync(tmp, {recursive: true, force: true})
  }
}
