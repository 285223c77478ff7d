/** npm run bench [-- NAME...]: run the named benchmarks (default: all). */
import {benchRun} from '../test/engine/bench-run.js'
import {benchBuild, benchBuildKvm} from './build.js'
import {benchConvert} from './convert.js'
import {benchKvm} from './kvm.js'
import {benchRegistry} from './registry.js'

const all: Record<string, () => Promise<void>> = {registry: benchRegistry, run: benchRun, build: benchBuild, 'build-kvm': benchBuildKvm, convert: benchConvert, kvm: benchKvm}
const names = process.argv.slice(2).filter((a) => !a.startsWith('-'))
for (const name of names.length > 0 ? names : Object.keys(all)) {
  const fn = all[name]
  if (!fn) {
    console.error(`unknown benchmark ${name}; known: ${Object.keys(all).join(', ')}`)
    process.exit(2)
  }
  await fn()
}
