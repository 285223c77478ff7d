import type {RamCompression} from './media-types.js'

/** The OVMS manifest (spec §2; schemas/manifest.v1.json). */
export type DiskFormat = 'qcow2' | 'raw' | 'ovfms'

export interface OvmsManifest {
  schemaVersion: 1
  mediaType: 'application/vnd.ovms.manifest.v1+json'
  name: string
  version: string
  kernel?: {ref: string; args?: string; modules?: {ref: string}}
  initrd?: {ref: string}
  diskLayers?: {ref: string; format: DiskFormat; size?: number}[]
  ramSnapshot?: {ref: string; compression?: RamCompression; preload_hint?: boolean; mlock_required?: boolean}
  devices?: {type: string; name: string; size?: number; mmio_addr?: string}[]
  metadata?: {author?: string; created?: string; platform?: {arch?: 'x86_64'; uefi?: boolean}}
  runtimeHints?: {preferredRuntime?: string[]; coldStartTargetMs?: number}
  /** Extension: the bootstrap config blob. */
  bootstrap?: {ref: string}
  /** Extension: free-form string annotations. */
  annotations?: Record<string, string>
}

/** The bootstrap config (spec §6; schemas/bootstrap-config.v1.json). */
export interface BootstrapConfig {
  env?: string[]
  workdir?: string
  entrypoint?: string[]
  cmd?: string[]
  exposedPorts?: string[]
  user?: string
  profile?: 'ovms-init' | 'cloud-init'
}
