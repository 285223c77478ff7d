import {existsSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {pathToFileURL} from 'node:url'

import {Args, Flags} from '@oclif/core'

import {BuildEventLog} from '../build/event-log.js'
import {type BuildResult, executePlan} from '../build/execute.js'
import type {BuildPlan, PlannedStep} from '../build/plan.js'
import {looksLikePath} from '../build/kernel.js'
import {prepareBuild} from '../build/prepare.js'
import {BaseCommand} from '../cli/base-command.js'
import {registryFlags, registryOptions, transferProgress} from '../cli/registry.js'
import type {BakeResult} from '../contract/bake.js'
import type {EngineChoice} from '../engine/select.js'
import type {Engine} from '../engine/types.js'
import {parseReference} from '../oci/reference.js'
import type {Ovmfile} from '../ovmfile/types.js'
import {AbortError, ExitCode} from '../errors/index.js'
import type {SigningMethod} from '../sign/sign.js'
import {BuildProgress} from '../ui/build-progress.js'
import {humanBytes, isInteractive, shortDigest} from '../ui/format.js'

export default class Build extends BaseCommand {
  static summary = 'Build an OVMS artifact from an Ovmfile.'

  static description =
    'Parses the Ovmfile, checks the build context, and plans the build: each step with its cache key and whether the cache has it. ' +
    'With --dry-run it prints the plan and stops. Otherwise it boots one builder VM (the Ovmfile\'s kernel with an initramfs ovm assembles: ' +
    'busybox, the kernel\'s modules and an agent on the second serial port), runs each uncached step in a chroot of the target disk, ' +
    'and turns each step that changed the disk into a qcow2 diff layer holding only the clusters it wrote. A rebuild with nothing changed boots no VM.'

  static examples = [
    '<%= config.bin %> build -t example/app:1.0 .',
    '<%= config.bin %> build --dry-run .',
    '<%= config.bin %> build -f Ovmfile.example --build-arg KERNEL=/boot/vmlinuz-6.1.0-56-amd64 -t app:1 --json',
  ]

  static args = {
    context: Args.string({description: 'Build context folder (default: the Ovmfile\'s folder).'}),
  }

  static flags = {
    file: Flags.string({char: 'f', description: 'The Ovmfile (default: CONTEXT/Ovmfile).'}),
    tag: Flags.string({char: 't', description: 'Reference to tag the result with; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
    'build-arg': Flags.string({description: 'KEY=VALUE for an ARG; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
    'no-cache': Flags.boolean({description: 'Ignore the build cache.'}),
    'dry-run': Flags.boolean({description: 'Print the plan (steps, cache keys, hits and misses) and stop.'}),
    engine: Flags.string({
      description: 'Engine for the builder VM (and the SNAPSHOT boot): kvm (ovm\'s own VMM), qemu, or auto: kvm where /dev/kvm runs guests, else qemu.',
      options: ['auto', 'kvm', 'qemu'],
      default: 'auto',
    }),
    sign: Flags.boolean({description: 'Sign the result: with --key (passphrase in OVM_KEY_PASSWORD), or keyless through Fulcio and Rekor with a CI OIDC token (SIGSTORE_ID_TOKEN, GitHub Actions).'}),
    provenance: Flags.boolean({description: 'Attach a signed SLSA provenance v1 attestation (with --sign).'}),
    key: Flags.string({description: 'Private key for --sign/--provenance; without it they sign keyless.'}),
    'boot-per-step': Flags.boolean({description: 'Boot a fresh builder for every step (slower; for comparison).', hidden: true}),
    push: Flags.boolean({description: 'Push the tags that name a registry after building (with signatures and attestations).'}),
    ...registryFlags,
  }

  async run(): Promise<{plan: BuildPlan; result?: BuildResult; seconds?: number; snapshot?: BakeResult; signatures?: string[]; pushed?: string[]}> {
    const {args, flags} = await this.parse(Build)
    const ovmfile = flags.file ?? join(args.context ?? '.', 'Ovmfile')
    const context = args.context ?? dirname(ovmfile)
    const store = this.openStore(flags.store)
    const prepared = await prepareBuild(store, {ovmfile, context, buildArgs: parseBuildArgs(flags['build-arg']), noCache: flags['no-cache']})
    for (const w of prepared.warnings) this.note(`${ovmfile}:${w.line}:${w.col}: warning: ${w.message} [${w.code}]`)
    const {plan} = prepared
    const interactive = isInteractive(process.stderr)
    // In a terminal the task tree shows the plan as it runs; print it when planning only, or for logs.
    if (!this.jsonEnabled() && (flags['dry-run'] || !interactive)) {
      this.log(`Plan for ${ovmfile} (context ${context})`)
      this.log(`  base: ${plan.base.description}`)
      if (plan.kernel) this.log(`  kernel: ${plan.kernel.ref}${plan.kernel.modules ? ` (modules ${plan.kernel.modules})` : ''}`)
      else if (prepared.parsed.ovmfile.from?.kind === 'artifact') this.log(`  kernel: the base artifact's (no KERNEL line)`)
      for (const s of plan.steps) {
        this.log(`  ${String(s.index + 1).padStart(2)}. ${s.cached ? 'CACHED' : 'MISS  '} ${shortDigest(s.cacheKey)}  line ${s.line}: ${s.text}`)
      }
      if (plan.snapshot) this.log(`  then: SNAPSHOT (line ${plan.snapshot.pos.line})`)
      this.log(`${plan.toRun} of ${plan.steps.length} steps to run${plan.fullyCached ? '; no VM needed' : ''}`)
    }
    if (flags['dry-run']) return {plan}
    if (flags.tag.length === 0) {
      throw new AbortError({code: 'MISSING_TAG', message: 'no tag given for the build result', hint: 'Add -t NAME:TAG, or use --dry-run to only plan.', exitCode: ExitCode.usage})
    }
    const pushTo = flags.tag.filter((t) => parseReference(t).registry !== undefined)
    if (flags.push && pushTo.length === 0) {
      throw new AbortError({
        code: 'PUSH_NO_REGISTRY',
        message: '--push needs a tag that names a registry',
        hint: 'Add -t registry.example.com/repo:tag (or localhost:5000/repo:tag).',
        exitCode: ExitCode.usage,
      })
    }
    // Signing is settled before the build: a local key, or keyless with the CI's OIDC token (refused now, not after the build, when there is none).
    // Signing, registries, engines and Sigstore are imported only when used: a cached rebuild needs none of them.
    let how: SigningMethod | undefined
    if (flags.sign || flags.provenance) {
      if (flags.key) {
        const {loadPrivateKey, passphraseFromEnv} = await import('../sign/keys.js')
        how = await loadPrivateKey(flags.key, passphraseFromEnv())
      } else {
        const {keylessConfig} = await import('../sign/keyless.js')
        how = {keyless: keylessConfig({})}
      }
    }
    // The engine is chosen when a step has to run (a fully cached build needs none).
    const choice = flags.engine as EngineChoice
    let selected: Engine | undefined
    const engine = async (): Promise<Engine> => {
      if (selected) return selected
      const {selectEngine} = await import('../engine/select.js')
      const s = await selectEngine(choice)
      if (flags.debug && s.fallbackReason) this.note(`builder engine: ${s.engine.name} (${s.fallbackReason})`)
      selected = s.engine
      return selected
    }
    const startedOn = new Date()
    const stepLayers = new Map<number, string | undefined>()
    for (const s of plan.steps) if (s.cached) stepLayers.set(s.index, s.layer)
    // In a terminal, a listr2 tree; in CI and pipes, plain lines; under --json, nothing.
    const tree = !this.jsonEnabled() && interactive ? new BuildProgress(plan.steps, {quiet: false}) : undefined
    let current: PlannedStep | undefined
    const failedOutput: string[] = []
    const t0 = performance.now()
    // For `ovm tui`: the events as NDJSON under <store>/builds/ (never fails the build).
    const events = await BuildEventLog.open(store.root, {ovmfile, tags: flags.tag, steps: plan.steps})
    const result = await executePlan({
      store,
      engine,
      file: prepared.parsed.ovmfile,
      plan,
      context,
      sources: prepared.sources,
      tags: flags.tag,
      bootPerStep: flags['boot-per-step'],
      onEvent: (e) => {
        events?.event(e)
        if (e.type === 'step-done') stepLayers.set(e.step.index, e.layer?.digest)
        if (e.type === 'step-start' || e.type === 'step-output') current = e.step
        if (this.jsonEnabled()) return
        if (tree) {
          if (e.type === 'step-cached') tree.cached(e.step.index)
          else if (e.type === 'step-start') failedOutput.length = 0
          else if (e.type === 'step-output') {
            tree.output(e.step.index, e.line)
            failedOutput.push(e.line)
          } else if (e.type === 'step-done') {
            tree.finished(e.step.index, `${(e.ms / 1000).toFixed(1)} s, ${e.layer ? `layer ${shortDigest(e.layer.digest)} ${humanBytes(e.layer.size)}` : 'no change'}`)
          }
          return
        }
        if (e.type === 'console') {
          if (flags.debug || e.line.startsWith('@@ovm-error')) this.note(`builder: ${e.line}`)
        } else if (e.type === 'boot') this.note(`builder up in ${(e.ms / 1000).toFixed(1)} s`)
        else if (e.type === 'step-cached') this.note(`[${e.step.index + 1}/${plan.steps.length}] CACHED line ${e.step.line}: ${e.step.text}`)
        else if (e.type === 'step-start') this.note(`[${e.step.index + 1}/${plan.steps.length}] line ${e.step.line}: ${e.step.text}`)
        else if (e.type === 'step-output') this.note(`    ${e.line}`)
        else if (e.type === 'step-done') {
          this.note(`    done in ${(e.ms / 1000).toFixed(1)} s, ${e.layer ? `layer ${shortDigest(e.layer.digest)} ${humanBytes(e.layer.size)}` : 'no change to the disk'}`)
        }
      },
    }).catch(async (err: unknown) => {
      events?.end({ok: false, error: (err as Error).message})
      if (tree && current) {
        tree.failed(current.index, (err as Error).message)
        await tree.close()
        // The tree showed only the last line: print the failed step's whole output.
        for (const l of failedOutput.slice(-200)) this.note(`    ${l}`)
      }
      throw err
    })
    await tree?.close()
    const snapshot = prepared.parsed.ovmfile.snapshot
    let baked: BakeResult | undefined
    if (snapshot) {
      events?.event({type: 'phase', phase: 'snapshot'})
      const [{bakeSnapshot}, {earlierBake, rememberBake}] = await Promise.all([import('../contract/bake.js'), import('../build/bake-cache.js')])
      const spec = {
        subject: result.digest,
        when: snapshot.when?.kind === 'console' ? snapshot.when.pattern : undefined,
        whenRun: snapshot.when?.kind === 'run' ? snapshot.when.command : undefined,
        timeoutMs: snapshot.timeoutMs,
        engine: choice,
      }
      // The same artifact baked with the same SNAPSHOT before (a rebuild with nothing changed): no VM.
      const earlier = flags['no-cache'] ? undefined : await earlierBake(store, spec)
      if (earlier) {
        baked = {digest: earlier.digest, subject: earlier.subject, pausedMs: earlier.pausedMs, bytes: earlier.bytes, readyMs: earlier.readyMs, cached: true}
        for (const t of flags.tag) await store.tag(earlier.descriptor, t)
        this.note(`RAM snapshot CACHED: ${shortDigest(earlier.digest)} (baked before from the same artifact and SNAPSHOT)`)
      } else {
        this.note(`SNAPSHOT (line ${snapshot.pos.line}): booting ${result.digest.slice(0, 19)} until ${snapshot.when?.kind === 'console' ? `a line matches /${snapshot.when.pattern}/` : snapshot.when?.kind === 'run' ? `\`${snapshot.when.command}\` succeeds` : 'the workload starts'}`)
        baked = await bakeSnapshot({
          store,
          reference: result.digest,
          when: spec.when,
          whenRun: spec.whenRun,
          timeoutMs: snapshot.timeoutMs,
          tag: flags.tag[0] as string,
          engine: choice,
          onLine: (l) => flags.debug && this.note(`vm: ${l}`),
        }).catch((err: unknown) => {
          events?.end({ok: false, error: (err as Error).message})
          throw err
        })
        const snapDesc = await store.resolve(flags.tag[0] as string)
        for (const t of flags.tag.slice(1)) await store.tag(snapDesc, t)
        await rememberBake(store, spec, baked)
        this.note(`baked a RAM snapshot: ready after ${(baked.readyMs / 1000).toFixed(1)} s, guest paused ${baked.pausedMs} ms, ${humanBytes(baked.bytes)} of new layers`)
      }
      result.digest = baked.digest
    }
    events?.end({ok: true, digest: result.digest})
    const seconds = (performance.now() - t0) / 1000
    const signatures: string[] = []
    if (how) {
      const [{signArtifact}, {SLSA_PROVENANCE_V1, buildProvenance}] = await Promise.all([import('../sign/sign.js'), import('../sign/provenance.js')])
      const ref = result.references[0] as string
      if (flags.sign) signatures.push((await signArtifact({store}, ref, how)).signature)
      if (flags.provenance) {
        const predicate = await buildProvenance({
          ovmfilePath: ovmfile,
          buildArgs: parseBuildArgs(flags['build-arg']),
          tags: flags.tag,
          base: plan.base,
          kernel: {uri: kernelUri(prepared.parsed.ovmfile, plan.base.description, context), digest: result.ovms.kernel!.ref},
          engine: await engine().then(async (e) => ({name: e.name, version: await e.version()})),
          steps: plan.steps.map((s) => ({line: s.line, text: s.text, cacheKey: s.cacheKey, layer: stepLayers.get(s.index)})),
          startedOn,
          finishedOn: new Date(),
          builderVersion: this.config.version,
        })
        signatures.push((await signArtifact({store}, ref, how, {predicateType: SLSA_PROVENANCE_V1, predicate})).signature)
      }
      this.note(`attached ${signatures.length} signed referrer${signatures.length === 1 ? '' : 's'} (${[flags.sign && 'signature', flags.provenance && 'SLSA provenance'].filter(Boolean).join(', ')})`)
    }
    const pushed: string[] = []
    if (flags.push) {
      const [{openRemote}, {copy, referrersOf}] = await Promise.all([import('../oci/remote/client.js'), import('../oci/copy.js')])
      for (const t of pushTo) {
        const dst = openRemote(t, registryOptions(flags))
        const ui = transferProgress(`push ${t}`, this.jsonEnabled(), (l) => this.note(l))
        const p0 = performance.now()
        const r = await copy(store, t, dst.repository, dst.part, ui.hooks, {concurrency: flags.concurrency, referrers: referrersOf})
        ui.finish(r, (performance.now() - p0) / 1000)
        pushed.push(`${t}@${r.descriptor.digest}`)
      }
    }
    if (!this.jsonEnabled()) {
      for (const r of result.references) this.log(`${r}@${result.digest}`)
      this.note(`built in ${seconds.toFixed(1)} s: ${result.stepsRun} step${result.stepsRun === 1 ? '' : 's'} run, ${result.stepsCached} cached, ${result.boots} builder boot${result.boots === 1 ? '' : 's'}`)
    }
    return {plan, result, seconds, ...(baked ? {snapshot: baked} : {}), ...(signatures.length > 0 ? {signatures} : {}), ...(pushed.length > 0 ? {pushed} : {})}
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

/** The kernel's origin for provenance: a file:// URI for a local file, a kernel artifact's reference, or (no KERNEL) the base artifact. */
function kernelUri(file: Ovmfile, base: string, context: string): string {
  const k = file.kernel
  if (!k) return base
  const abs = resolve(context, k.ref)
  return k.modules || looksLikePath(k.ref) || existsSync(abs) ? pathToFileURL(abs).href : k.ref
}
