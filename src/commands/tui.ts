import {stat} from 'node:fs/promises'

import {Flags} from '@oclif/core'

import {loadArtifact} from '../artifact/load.js'
import {OvmsMediaType} from '../artifact/media-types.js'
import {BuildLogTail} from '../build/event-log.js'
import {BaseCommand} from '../cli/base-command.js'
import {ContractClient} from '../contract/client.js'
import {socketFor} from '../contract/daemon.js'
import {AbortError, ExitCode, isOvmError} from '../errors/index.js'
import {type Descriptor, type ImageManifest, isManifestMediaType} from '../oci/descriptor.js'
import {LayoutStore, defaultStoreRoot} from '../oci/layout.js'
import {humanBytes, shortDigest, useColor} from '../ui/format.js'
import {foldBuildLog} from '../ui/tui/build-view.js'
import {cleanLine} from '../ui/tui/text.js'
import type {ArtifactDetail, ArtifactRow, BuildView, DashboardSource, ReferrerInfo} from '../ui/tui/types.js'

export const SIGSTORE_BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json'
const COSIGN_SIGN = 'https://sigstore.dev/cosign/sign/v1'

/** What a referrer is, in a word or two: a signature, an attestation (by predicate), or its artifact type. */
export function referrerKind(artifactType: string, annotations: Record<string, string> | undefined): string {
  const predicate = annotations?.['dev.sigstore.bundle.predicateType']
  if (artifactType.startsWith('application/vnd.dev.sigstore.bundle')) {
    if (!predicate || predicate === COSIGN_SIGN) return 'signature'
    return `attestation ${predicate.replace(/^https?:\/\//, '').replace(/^slsa\.dev\/provenance\/v1$/, 'SLSA provenance')}`
  }
  if (artifactType === OvmsMediaType.manifest) return 'OVMS artifact'
  return artifactType.replace(/^application\//, '')
}

interface Summary {
  name?: string
  version?: string
  created?: string
  size?: number
  layers?: number
  ramSnapshot?: boolean
  error?: string
}

/**
 * The TUI's data over a local store, its daemon and its build logs. Manifests
 * are content-addressed, so what was read of one is kept by digest; the list
 * is read again only when index.json changed.
 */
export function storeSource(storeRoot: string, socketPath: string): DashboardSource {
  const store = new LayoutStore(storeRoot)
  const client = new ContractClient(socketPath)
  const manifests = new Map<string, ImageManifest | null>()
  const summaries = new Map<string, Summary>()
  const tail = new BuildLogTail(storeRoot)
  let cached: {key: string; rows: ArtifactRow[]} | undefined

  const manifestOf = async (d: Descriptor): Promise<ImageManifest | null> => {
    if (!manifests.has(d.digest)) {
      let m: ImageManifest | null = null
      try {
        m = JSON.parse((await store.fetchBytes(d)).toString('utf8')) as ImageManifest
      } catch {
        m = null
      }
      manifests.set(d.digest, m)
    }
    return manifests.get(d.digest) ?? null
  }

  /** Every manifest in the index that has a subject, by the subject's digest. */
  const referrersBySubject = async (): Promise<Map<string, ReferrerInfo[]>> => {
    const out = new Map<string, ReferrerInfo[]>()
    const seen = new Set<string>()
    for (const d of (await store.readIndex()).manifests) {
      if (seen.has(d.digest) || !isManifestMediaType(d.mediaType)) continue
      seen.add(d.digest)
      const m = await manifestOf(d)
      if (!m?.subject) continue
      const artifactType = m.artifactType ?? m.config?.mediaType ?? d.mediaType
      const info: ReferrerInfo = {digest: d.digest, artifactType, size: d.size, kind: referrerKind(artifactType, m.annotations)}
      out.set(m.subject.digest, [...(out.get(m.subject.digest) ?? []), info])
    }
    return out
  }

  const summarize = async (reference: string, d: Descriptor): Promise<Summary> => {
    const hit = summaries.get(d.digest)
    if (hit) return hit
    let s: Summary
    try {
      const a = await loadArtifact(store, reference)
      s = {
        name: a.ovms.name,
        version: a.ovms.version,
        created: a.ovms.metadata?.created,
        size: a.descriptor.size + a.manifest.config.size + a.manifest.layers.reduce((n, l) => n + l.size, 0),
        layers: a.manifest.layers.length,
        ramSnapshot: Boolean(a.ovms.ramSnapshot),
      }
    } catch (err) {
      s = {error: isOvmError(err) ? err.code : String(err)}
    }
    summaries.set(d.digest, s)
    return s
  }

  return {
    label: storeRoot,

    async listArtifacts() {
      const st = await stat(store.indexPath).catch(() => undefined)
      const key = st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'none'
      if (cached?.key === key) return cached.rows
      const refs = await referrersBySubject()
      const rows: ArtifactRow[] = []
      for (const {reference, descriptor} of await store.list()) {
        const s = await summarize(reference, descriptor)
        const r = refs.get(descriptor.digest) ?? []
        const signatures = r.filter((x) => x.kind === 'signature').length
        rows.push({reference, digest: descriptor.digest, mediaType: descriptor.artifactType ?? descriptor.mediaType, ...s, signatures, otherReferrers: r.length - signatures})
      }
      cached = {key, rows}
      return rows
    },

    async inspect(reference) {
      const a = await loadArtifact(store, reference)
      const detail: ArtifactDetail = {
        reference,
        digest: a.descriptor.digest,
        mediaType: a.descriptor.mediaType,
        ...(a.manifest.artifactType ? {artifactType: a.manifest.artifactType} : {}),
        name: a.ovms.name,
        version: a.ovms.version,
        ...(a.ovms.metadata?.created ? {created: a.ovms.metadata.created} : {}),
        ...(a.ovms.kernel?.args ? {cmdline: a.ovms.kernel.args} : {}),
        totalSize: a.descriptor.size + a.manifest.config.size + a.manifest.layers.reduce((n, l) => n + l.size, 0),
        ramSnapshot: Boolean(a.ovms.ramSnapshot),
        ...(a.manifest.subject ? {subject: a.manifest.subject.digest} : {}),
        layers: a.layers.map((l) => ({role: l.index === undefined || l.role !== 'disk' ? l.role : `disk[${l.index}]`, mediaType: l.descriptor.mediaType, digest: l.descriptor.digest, size: l.descriptor.size})),
        referrers: (await referrersBySubject()).get(a.descriptor.digest) ?? [],
      }
      return detail
    },

    async listInstances() {
      try {
        return {ok: true, instances: await client.list()}
      } catch (err) {
        if (isOvmError(err) && err.code === 'DAEMON_NOT_RUNNING') return {ok: false, message: `No ovm daemon is running at ${socketPath}.`}
        throw err
      }
    },

    async followConsole(id, onLine, signal) {
      await client.logs(
        id,
        (r) => {
          if (r.type === 'console') onLine(cleanLine(r.line))
          else if (r.type === 'state') onLine(`[ovm] ${r.state}`)
          else onLine(`[ovm] exit: ${r.status.reason}`)
        },
        {follow: true, signal},
      )
    },

    async stop(id) {
      const r = await client.stop(id)
      return r.message ?? `${id} stopped${r.exit ? ` (${r.exit.reason})` : ''}`
    },

    async snapshot(id, tag) {
      const r = await client.snapshot(id, tag)
      return `${id}: snapshot ${r.snapshot_ref} (${shortDigest(r.digest)}), paused ${r.paused_ms ?? '?'} ms, ${humanBytes(r.size ?? 0)}`
    },

    async listBuilds() {
      const now = Date.now()
      return (await tail.read()).map((b) => foldBuildLog(b.id, b.records, b.writerAlive, now)).filter((b): b is BuildView => b !== undefined)
    },
  }
}

/** Why the TUI cannot draw here, or undefined when it can. */
export function terminalProblem(env: NodeJS.ProcessEnv, stdinTty: boolean, stdoutTty: boolean): string | undefined {
  if (!stdinTty || !stdoutTty) return `ovm tui needs an interactive terminal, but its ${!stdinTty && !stdoutTty ? 'input and output are' : !stdinTty ? 'input is' : 'output is'} not a TTY`
  const ci = ['CI', 'CONTINUOUS_INTEGRATION'].find((k) => k in env && env[k] !== '0' && env[k] !== 'false')
  if (ci) return `ovm tui is interactive, but ${ci}=${env[ci]} says this is a CI job`
  if (env.TERM === 'dumb') return 'ovm tui cannot draw on TERM=dumb'
  return undefined
}

export default class Tui extends BaseCommand {
  static summary = 'An interactive dashboard: local artifacts and their referrers, running instances with their consoles, builds in progress.'

  static description =
    'Keys: tab or 1-3 switch views, up/down select, enter inspects an artifact (esc goes back), s stops and p snapshots the selected instance (after a y/n question), r refreshes, q quits. ' +
    'It needs a terminal; in scripts use `ovm ls --json`, `ovm ps --json`, `ovm inspect REF --json` and `ovm logs ID`. NO_COLOR turns colour off.'

  static examples = ['<%= config.bin %> tui', 'OVM_HOME=/srv/ovm <%= config.bin %> tui --socket /run/ovm.sock']

  static enableJsonFlag = false

  static flags = {
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
    'poll-ms': Flags.integer({description: 'How often the shown view is refreshed.', default: 1000, min: 100, hidden: true}),
  }

  async run(): Promise<void> {
    const {flags} = await this.parse(Tui)
    const problem = terminalProblem(process.env, Boolean(process.stdin.isTTY), Boolean(process.stdout.isTTY))
    if (problem) {
      throw new AbortError({
        code: 'NOT_A_TERMINAL',
        message: problem,
        hint: 'Run it in a terminal. In scripts and CI use `ovm ls --json`, `ovm ps --json`, `ovm inspect REF --json` and `ovm logs ID`.',
        exitCode: ExitCode.usage,
      })
    }
    const storeRoot = flags.store ?? defaultStoreRoot()
    // ink and React load only here, after the terminal check.
    const {renderDashboard} = await import('../ui/tui/index.js')
    await renderDashboard(storeSource(storeRoot, socketFor(storeRoot, flags.socket)), {color: useColor(process.stdout), pollMs: flags['poll-ms']})
  }
}

