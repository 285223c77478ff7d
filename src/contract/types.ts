/** The contract's bodies as TypeScript types (schemas/contract.openapi.json is the authority). */
import type {ExitStatus, VmState} from '../engine/types.js'

export type InstanceState = VmState

export interface StartRequest {
  manifest: string
  overrides?: {memory?: number | string; cpus?: number; engine?: 'qemu' | 'kvm' | 'auto'; cold_boot?: boolean; cmdline?: string}
}

export interface StopRequest {
  instance_id: string
  grace_ms?: number
}

export interface StopResponse {
  status: 'ok' | 'starting' | 'stopping'
  message?: string
  exit?: ExitStatus
}

export interface SnapshotRequest {
  instance_id: string
  tag?: string
}

export interface SnapshotResponse {
  snapshot_ref: string
  digest: string
  subject?: string
  size?: number
  paused_ms?: number
  total_ms?: number
}

export interface InjectRequest {
  instance_id: string
  content: {mmio: {device?: string; offset?: number; data: string; encoding?: 'utf8' | 'base64'}}
}

export interface InstanceStatus {
  instance_id: string
  state: InstanceState
  pid?: number
  uptime_ms?: number
  metrics?: {engine?: string; accel?: 'kvm' | 'tcg'; memory_mib?: number; cpus?: number; restored?: boolean; start_ms?: number}
  artifact?: {reference: string; digest: string}
  exit?: ExitStatus
  error?: string
}

export type LogRecord =
  | {ts: string; type: 'console'; line: string}
  | {ts: string; type: 'state'; state: InstanceState}
  | {ts: string; type: 'exit'; status: ExitStatus}
