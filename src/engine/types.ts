/**
 * The engine interface: what a VMM must offer to run an OVMS artifact.
 *
 * Engine-neutral on purpose. The QEMU engine (`qemu/`) implements it by
 * spawning `qemu-system-x86_64` and speaking QMP; the native KVM engine
 * (`kvm/`) will implement it in-process. Nothing here names QEMU.
 *
 * Life of a VM:   boot() / restore()  ──▶ running ⇄ paused ──▶ stopped
 *                                           │
 *                                           └── snapshot(dir) (paused for the copy)
 */
import type {OverlayOptions} from '../disk/unpack.js'

export type EngineName = 'qemu' | 'kvm'

/** Where the guest's code runs: hardware virtualisation or emulation. */
export type Acceleration = 'kvm' | 'tcg'

export type VmState = 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'error'

/** A disk in a backing chain, as files on this host. */
export interface DiskChainSpec {
  /** The files of the chain, base first; each later qcow2 backs onto the one before. */
  chain: {path: string; format: 'qcow2' | 'raw'}[]
  /** The per-instance, throw-away qcow2 the VM writes to (backed by the chain's top). Ignored when `readOnly`. */
  overlay: string
  /** Attach the chain's top read-only, with no overlay (e.g. a build-context disk). */
  readOnly?: boolean
}

/** A declarative device from the manifest (`devices[]`), mapped to a host file. */
export interface DeviceSpec {
  type: string
  name: string
  size?: number
  mmioAddr?: string
  /** For shared-memory devices: the host file that backs it. */
  path?: string
}

/** Everything needed to boot a VM; identical for restore (a snapshot needs the same machine). */
export interface BootSpec {
  kernel: string
  initrd?: string
  cmdline: string
  memoryMiB: number
  cpus: number
  disks: DiskChainSpec[]
  devices: DeviceSpec[]
  /** A folder the engine may use for this VM's files (sockets, RAM file). Created by the caller. */
  workDir: string
  /** Acceleration wanted; the engine picks when absent. */
  accel?: Acceleration
  /**
   * A second serial port (the guest's ttyS1) as a UNIX socket the engine
   * listens on, for a guest agent (the builder's). Absent: no second port.
   */
  agentSocket?: string
}

/** What a snapshot records so a runtime can tell whether it can restore it. */
export interface SnapshotSignature {
  /** Format of the snapshot folder, bumped on incompatible change. */
  formatVersion: number
  engine: EngineName
  /** The VMM's version, e.g. "7.2.22" for QEMU. */
  engineVersion: string
  machine: string
  cpuModel: string
  accel: Acceleration
  memoryMiB: number
  cpus: number
  arch: 'x86_64'
}

export interface SnapshotInfo {
  /** The folder holding the snapshot's files (see the engine's docs for its layout). */
  dir: string
  signature: SnapshotSignature
  /** Per disk: a qcow2 file holding what the VM wrote since boot, captured at the snapshot instant. */
  diskDiffs: string[]
  bytes: number
  /** Wall time the guest was paused for the snapshot. */
  pausedMs: number
  totalMs: number
}

/** How a VM ended. */
export interface ExitStatus {
  /** `poweroff`: the guest shut down; `reset`: it rebooted (with panic=-1, a panic); `stopped`: we stopped it; `crashed`: the VMM died. */
  reason: 'poweroff' | 'reset' | 'stopped' | 'crashed'
  /** The VMM's exit code (when it is a process) or null. */
  code: number | null
  signal: string | null
  /** Last lines of the VMM's own error output, when it crashed. */
  detail?: string
}

export type VmEvent =
  | {type: 'state'; state: VmState; at: number}
  /** Raw bytes from the guest's console (first serial port). */
  | {type: 'output'; data: Buffer; at: number}
  /** The same output cut into lines (no line ending). */
  | {type: 'console'; line: string; at: number}
  | {type: 'exit'; status: ExitStatus; at: number}

/** A running (or finished) VM. Console output arrives as events: raw bytes and whole lines. */
export interface VmHandle {
  readonly engine: EngineName
  readonly accel: Acceleration
  readonly state: VmState
  /** The VMM process id, when it is a process. */
  readonly pid: number | undefined
  readonly startedAt: number
  /** Subscribe to state changes, console lines and the exit; returns an unsubscribe function. */
  on(listener: (e: VmEvent) => void): () => void
  /** Send bytes to the guest's console. */
  write(data: Buffer | string): void
  pause(): Promise<void>
  resume(): Promise<void>
  /**
   * Capture RAM, CPU and device state, and the disk overlays at the same
   * instant, into `dir` (created). The VM is paused meanwhile; it resumes
   * afterwards unless it was paused before or `leavePaused`.
   */
  snapshot(dir: string, opts?: {leavePaused?: boolean}): Promise<SnapshotInfo>
  /**
   * Freeze disk `disk`'s current overlay and continue on a new qcow2 at
   * `path` (created by the engine, backed by the old overlay). The builder
   * uses it to cut one layer per step; quiesce the guest's file system first.
   */
  addOverlay?(disk: number, path: string, opts?: OverlayOptions): Promise<void>
  /** Stop the VM: a graceful power-off request for `graceMs`, then a hard stop. */
  stop(opts?: {graceMs?: number}): Promise<ExitStatus>
  /** Resolves when the VM has ended, for whatever reason. */
  wait(): Promise<ExitStatus>
}

export interface Engine {
  readonly name: EngineName
  /** Why this engine cannot run here, or undefined when it can. */
  unavailable(): Promise<string | undefined>
  /** The VMM's version (QEMU's, or the native engine's own), as recorded in provenance. */
  version(): Promise<string>
  boot(spec: BootSpec): Promise<VmHandle>
  /** Whether this engine can restore a snapshot: undefined, or the reason it cannot. */
  checkSnapshot(sig: SnapshotSignature): Promise<string | undefined>
  /** Start a VM from a snapshot folder made by `snapshot()`. The spec must describe the same machine. */
  restore(spec: BootSpec, snapshotDir: string): Promise<VmHandle>
}
