/**
 * Restores a kvm-engine snapshot in a fresh process (the parent test spawns
 * this with `node --import tsx`): types INPUT into the console, waits for
 * the VM to end, prints one JSON line {restoreMs, markerMs, lines, status}.
 * argv: SPEC_JSON SNAPSHOT_DIR INPUT MARKER TIMEOUT_MS
 */
import {KvmEngine} from '../../src/engine/kvm/engine.js'
import type {BootSpec} from '../../src/engine/types.js'

const [specJson, dir, input, marker, timeoutMs] = process.argv.slice(2) as [string, string, string, string, string]
const spec = JSON.parse(specJson) as BootSpec
const t0 = performance.now()
const lines: string[] = []
let markerMs: number | undefined
try {
  const vm = await new KvmEngine().restore(spec, dir)
  const restoreMs = performance.now() - t0
  vm.on((e) => {
    if (e.type !== 'console') return
    lines.push(e.line)
    if (markerMs === undefined && e.line.includes(marker)) markerMs = performance.now() - t0
  })
  vm.write(input)
  const timer = setTimeout(() => void vm.stop(), Number(timeoutMs))
  const status = await vm.wait()
  clearTimeout(timer)
  process.stdout.write(`${JSON.stringify({restoreMs, markerMs, lines, status})}\n`)
} catch (err) {
  process.stdout.write(`${JSON.stringify({error: (err as Error).message, code: (err as {code?: string}).code})}\n`)
}
