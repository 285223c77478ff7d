/**
 * What the TUI shows, as plain data, and the one interface it reads it
 * through. `src/commands/tui.ts` implements it over the local store, the
 * contract daemon and the build event logs; tests can hand in their own.
 */
import type {InstanceStatus} from '../../contract/types.js'

/** One tagged artifact in the local store (a row of the Artifacts view). */
export interface ArtifactRow {
  reference: string
  digest: string
  mediaType: string
  name?: string
  version?: string
  created?: string
  /** Manifest + config + layers, in bytes. */
  size?: number
  layers?: number
  ramSnapshot?: boolean
  /** Sigstore bundles whose predicate is a signature. */
  signatures: number
  /** Every other referrer (attestations, SBOMs, snapshots made from it...). */
  otherReferrers: number
  /** Why the artifact could not be read (an error code), when it could not. */
  error?: string
}

export interface ReferrerInfo {
  digest: string
  artifactType: string
  size: number
  /** "signature", "attestation <predicate>", or the artifact type's last part. */
  kind: string
}

export interface LayerInfo {
  role: string
  mediaType: string
  digest: string
  size: number
}

/** The inspect view of one artifact. */
export interface ArtifactDetail {
  reference: string
  digest: string
  mediaType: string
  artifactType?: string
  name: string
  version: string
  created?: string
  cmdline?: string
  totalSize: number
  ramSnapshot: boolean
  subject?: string
  layers: LayerInfo[]
  referrers: ReferrerInfo[]
}

export type InstanceRow = InstanceStatus

/** The daemon's instances, or why there are none to show. */
export type InstancesResult = {ok: true; instances: InstanceRow[]} | {ok: false; message: string}

/** One step of a build as its log records it. */
export interface BuildStepView {
  index: number
  line: number
  text: string
  state: 'pending' | 'cached' | 'running' | 'done' | 'failed'
  ms?: number
  layer?: {digest: string; size: number}
}

/** A build, folded from its event log (see src/build/event-log.ts). */
export interface BuildView {
  id: string
  ovmfile: string
  tags: string[]
  startedAt: string
  state: 'running' | 'ok' | 'failed' | 'interrupted'
  phase?: string
  steps: BuildStepView[]
  /** The last lines of output (step output and builder console), oldest first. */
  output: string[]
  digest?: string
  error?: string
  /** Milliseconds from start to the last record (or to now while running). */
  elapsedMs: number
}

export interface DashboardSource {
  /** Where the data comes from, for the header (the store folder). */
  readonly label: string
  listArtifacts(): Promise<ArtifactRow[]>
  inspect(reference: string): Promise<ArtifactDetail>
  listInstances(): Promise<InstancesResult>
  /** Follow an instance's console; calls `onLine` for each line until `signal` aborts or the instance ends. */
  followConsole(id: string, onLine: (line: string) => void, signal: AbortSignal): Promise<void>
  /** Stop an instance; resolves with a line to show. */
  stop(id: string): Promise<string>
  /** Snapshot an instance under `tag`; resolves with a line to show. */
  snapshot(id: string, tag: string): Promise<string>
  /** The recent builds, newest first. */
  listBuilds(): Promise<BuildView[]>
}
