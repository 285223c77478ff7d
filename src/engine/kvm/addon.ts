/**
 * Loads ovm's native VMM addon (native/binding.gyp → native/build/Release/ovm_native.node).
 * `OVM_NATIVE_ADDON` names another build of it.
 */
import {constants} from 'node:os'
import {fileURLToPath} from 'node:url'

/** A VM inside the addon (opaque). */
export type NativeHandle = {readonly __brand: 'ovm-native-vm'}

export type NativeEvent =
  | {type: 'serial'; port: 0 | 1; data: Buffer}
  | {type: 'exit'; reason: 'poweroff' | 'reset' | 'stopped' | 'crashed'; detail: string}

export interface NativeConfig {
  kernel?: string
  initrd?: string
  cmdline?: string
  memMiB?: number
  cpus?: number
  disks?: {paths: string[]; formats: string[]; readOnly: boolean}[]
  /** Restore from this snapshot folder instead of booting. */
  restoreDir?: string
}

export interface NativeAddon {
  /** Why KVM cannot run guests here (null when it can). Runs a tiny probe guest. */
  unavailable(): string | null
  create(config: NativeConfig, onEvent: (e: NativeEvent) => void): NativeHandle
  start(h: NativeHandle): void
  pause(h: NativeHandle): void
  resume(h: NativeHandle): void
  stop(h: NativeHandle): void
  destroy(h: NativeHandle): void
  /** Bytes for COM1 (0) or COM2 (1); returns how many the receive FIFO took. */
  input(h: NativeHandle, port: 0 | 1, data: Buffer): number
  /** Freeze disk `disk`'s top image and continue on the qcow2 at `path` (backed by it). */
  pushDiskTop(h: NativeHandle, disk: number, path: string): void
  /** Leaves the VM paused. */
  snapshot(h: NativeHandle, dir: string): Promise<{memBytes: number; stateBytes: number; pausedMs: number; totalMs: number}>
}

/** Where the addon is looked for (src/engine/kvm and dist/engine/kvm are both three levels below the root). */
export function addonPath(): string {
  return process.env.OVM_NATIVE_ADDON ?? fileURLToPath(new URL('../../../native/build/Release/ovm_native.node', import.meta.url))
}

let cached: {addon?: NativeAddon; error?: string} | undefined

/** The addon, or the reason it cannot be loaded. */
export function loadAddon(): {addon?: NativeAddon; error?: string} {
  if (cached) return cached
  const path = addonPath()
  try {
    // RTLD_NOW: a symbol missing from the build fails here, not in the middle of a VM's life.
    const m = {exports: {}} as {exports: unknown}
    process.dlopen(m, path, constants.dlopen.RTLD_NOW)
    cached = {addon: m.exports as NativeAddon}
  } catch (err) {
    cached = {error: `the native addon ${path} does not load (${(err as Error).message.split('\n')[0]}); build it with: npx node-gyp rebuild -C native --nodedir=/usr`}
  }
  return cached
}
