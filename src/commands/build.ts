import {dirname, join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import type {BuildPlan} from '../build/plan.js'
import {prepareBuild} from '../build/prepare.js'
import {BaseCommand} from '../cli/base-command.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {shortDigest} from '../ui/format.js'

export default class Build extends BaseCommand {
  static summary = 'Build an OVMS artifact from an Ovmfile.'

  static description =
    'Parses the Ovmfile, checks the build context, and plans the build: each step with its cache key and whether the cache has it. ' +
    'With --dry-run it prints the plan and stops.'

  static examples = ['<%= config.bin %> build --dry-run .', '<%= config.bin %> build -f Ovmfile.example --dry-run --json']

  static args = {
    context: Args.string({description: 'Build context folder (default: the Ovmfile\'s folder).'}),
  }

  static flags = {
    file: Flags.string({char: 'f', description: 'The Ovmfile (default: CONTEXT/Ovmfile).'}),
    tag: Flags.string({char: 't', description: 'Reference to tag the result with; repeatable.', multiple: true, default: []}),
    'build-arg': Flags.string({description: 'KEY=VALUE for an ARG; repeatable.', multiple: true, default: []}),
    'no-cache': Flags.boolean({description: 'Ignore the build cache.'}),
    'dry-run': Flags.boolean({description: 'Print the plan (steps, cache keys, hits and misses) and stop.'}),
    engine: Flags.string({description: 'Engine for the builder VM.', options: ['kvm', 'qemu']}),
    push: Flags.boolean({description: 'Push the tags to their registries after building.'}),
  }

  async run(): Promise<{plan: BuildPlan}> {
    const {args, flags} = await this.parse(Build)
    const ovmfile = flags.file ?? join(args.context ?? '.', 'Ovmfile')
    const context = args.context ?? dirname(ovmfile)
    const store = this.openStore(flags.store)
    const prepared = await prepareBuild(store, {ovmfile, context, buildArgs: parseBuildArgs(flags['build-arg']), noCache: flags['no-cache']})
    for (const w of prepared.warnings) this.note(`${ovmfile}:${w.line}:${w.col}: warning: ${w.message} [${w.code}]`)
    const {plan} = prepared
    if (!this.jsonEnabled()) {
      this.log(`Plan for ${ovmfile} (context ${context})`)
      this.log(`  base: ${plan.base.description}`)
      if (plan.kernel) this.log(`  kernel: ${plan.kernel.ref}${plan.kernel.modules ? ` (modules ${plan.kernel.modules})` : ''}`)
      for (const s of plan.steps) {
        this.log(`  ${String(s.index + 1).padStart(2)}. ${s.cached ? 'CACHED' : 'MISS  '} ${shortDigest(s.cacheKey)}  line ${s.line}: ${s.text}`)
      }
      if (plan.snapshot) this.log(`  then: SNAPSHOT (line ${plan.snapshot.pos.line})`)
      this.log(`${plan.toRun} of ${plan.steps.length} steps to run${plan.fullyCached ? '; no VM needed' : ''}`)
    }
    if (!flags['dry-run']) {
      throw new AbortError({
        code: 'BUILD_NOT_AVAILABLE',
        message: 'executing a build (the builder VM) is not available in this version of ovm; the plan above is what it would run',
        hint: 'Use `ovm build --dry-run` to check an Ovmfile and its cache plan, and `ovm pack` to make artifacts from files on disk.',
        exitCode: ExitCode.engine,
      })
    }
    return {plan}
  }
}

export function parseBuildArgs(values: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const v of values) {
    const i = v.indexOf('=')
    if (i <= 0) {
      throw new AbortError({code: 'BAD_BUILD_ARG', message: `--build-arg ${JSON.stringify(v)} is not KEY=VALUE`, hint: 'Write --build-arg NAME=value.', exitCode: ExitCode.usage})
    }
    out[v.slice(0, i)] = v.slice(i + 1)
  }
  return out
}
