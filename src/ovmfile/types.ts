/** The Ovmfile's syntax tree and the problems a parse reports (rfc/ovmfile.md). */

export interface Position {
  line: number
  col: number
}

export interface Problem extends Position {
  code: string
  message: string
  hint: string
  severity: 'error' | 'warning'
}

export type FromSource =
  | {kind: 'scratch'; size: number; sizeText: string; fs: 'ext4' | 'xfs' | 'btrfs'}
  | {kind: 'artifact'; ref: string}
  | {kind: 'disk'; path: string}
  /** A container image (docker://REF or oci:PATH[:TAG]) converted to an ext4 base (rfc/convert.md); size: the disk's, else content + 1G. */
  | {kind: 'image'; source: string; size?: number; sizeText?: string}

export interface CopyStep {
  kind: 'COPY'
  sources: string[]
  dest: string
  /** The destination as written when relative (dest is it resolved against WORKDIR; a FROM image's workdir re-resolves it). */
  relDest?: string
  chown?: {user: string; group?: string}
  chmod?: number
}

export interface RunStep {
  kind: 'RUN'
  /** Exec form when an array; shell form (run with /bin/sh -c) when a string. */
  command: string | string[]
}

export type Step = (CopyStep | RunStep) & {
  /** 0-based among the steps. */
  index: number
  /** Where the instruction starts. */
  pos: Position
  /** The instruction as written (continuations joined), for messages and cache keys. */
  text: string
  /** ENV in force for the step (after ARG/ENV substitution). */
  env: Record<string, string>
  /** ARG values in force (used for the cache key; passed to RUN as env too). */
  args: Record<string, string>
  workdir: string
}

export interface SnapshotSpec {
  when?: {kind: 'console'; pattern: string} | {kind: 'run'; command: string}
  timeoutMs: number
  pos: Position
}

export interface DeviceSpec {
  type: string
  name: string
  size?: number
  mmio_addr?: string
}

export interface Ovmfile {
  /** The file it came from, for messages. */
  source: string
  from?: FromSource & {pos: Position}
  kernel?: {ref: string; modules?: string; pos: Position}
  initrd?: string
  cmdline?: string
  memory?: number
  cpus?: number
  devices: DeviceSpec[]
  steps: Step[]
  entrypoint?: string[]
  cmd?: string[]
  /** ENV at the end of the file: written to the bootstrap config. */
  env: Record<string, string>
  workdir: string
  exposedPorts: string[]
  labels: Record<string, string>
  /** The user the workload runs as (from a FROM image's config; the Ovmfile has no USER yet). */
  user?: string
  snapshot?: SnapshotSpec
  /** ARG names declared, with their defaults. */
  args: Record<string, string | undefined>
}

export interface ParseResult {
  ovmfile: Ovmfile
  errors: Problem[]
  warnings: Problem[]
}
