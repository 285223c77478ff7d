/**
 * The KVM engine: ovm's own VMM, a native addon driving /dev/kvm in this
 * process (native/, rfc/runtime.md "The native engine").
 *
 * Each vCPU runs on its own thread inside the addon; console bytes and the
 * exit arrive as events on the JS thread. The guest gets COM1 (console,
 * `console=ttyS0`), COM2 (the agent channel, bridged to `agentSocket`), an
 * i8042 for reboot, and its disks as virtio-blk on PCI (`pci=conf1`).
 * Snapshots hold `state.bin` (CPU, irqchip, clock and device state, with a
 * header naming the format, arch and CPU signature), `memory.raw` (RAM, zero
 * pages as holes, mapped private on restore), `disk-N.qcow2` (each writable
 * disk's overlay at the snapshot instant) and `snapshot.json` (written last).
 */
import {copyFile, mkdir, rm, stat, writeFile} from 'node:fs/promises'
import {type Server, type Socket, createServer} from 'node:net'
import {cpus as osCpus} from 'node:os'
import {join} from 'node:path'

import type {
  BootSpec,
  Engine,
  ExitStatus,
  SnapshotInfo,
  SnapshotSignature,
  VmHandle,
} from '../types.js'
import type {OverlayOptions} from '../../disk/unpack.js'
import {assertRestorable, engineError, makeNextOverlay, readSnapshotJson} from '../common.js'
import {VmEvents} from '../vm-events.js'
import {type NativeAddon, type NativeConfig, type NativeEvent, type NativeHandle, loadAddon} from './addon.js'

export const KVM_SNAPSHOT_FORMAT_VERSION = 1
/** The version of the native VMM's machine (devices, layout); bump when a snapshot would no longer restore. */
export const KVM_ENGINE_VERSION = '0.1.0'
export const KVM_MACHINE = 'ovm-x86_64-v1'

export interface KvmSnapshotFile {
  signature: SnapshotSignature
  createdAt: string
  disks: number
}

function cpuModel(): string {
  return osCpus()[0]?.model?.trim() || 'unknown'
}

export class KvmEngine implements Engine {
  readonly name = 'kvm' as const
  private why?: Promise<string | undefined>

  async unavailable(): Promise<string | undefined> {
    this.why ??= (async () => {
      const {addon, error} = loadAddon()
      if (!addon) return error
      return addon.unavailable() ?? undefined
    })()
    return this.why
  }

  async version(): Promise<string> {
    return KVM_ENGINE_VERSION
  }

  private addon(): NativeAddon {
    const {addon, error} = loadAddon()
    if (!addon) throw engineError('ENGINE_UNAVAILABLE', `the kvm engine cannot run: ${error}`, 'Build the addon, or use the qemu engine (--engine qemu).')
    return addon
  }

  async checkSnapshot(sig: SnapshotSignature): Promise<string | undefined> {
    if (sig.formatVersion !== KVM_SNAPSHOT_FORMAT_VERSION) return `snapshot format ${sig.formatVersion}, this runtime reads format ${KVM_SNAPSHOT_FORMAT_VERSION}`
    if (sig.engine !== 'kvm') return `the snapshot was made by the ${sig.engine} engine; the kvm engine cannot restore it`
    if (sig.arch !== 'x86_64') return `the snapshot is for ${sig.arch}, this runtime runs x86_64`
    if (sig.machine !== KVM_MACHINE) return `the snapshot is of machine ${sig.machine}, this runtime emulates ${KVM_MACHINE}`
    const why = await this.unavailable()
    if (why) return why
    // The CPU check (vendor, features the guest was shown) is made by the addon on restore, from state.bin's header.
    return undefined
  }

  async boot(spec: BootSpec): Promise<VmHandle> {
    checkSpec(spec)
    const sig: SnapshotSignature = {
      formatVersion: KVM_SNAPSHOT_FORMAT_VERSION,
      engine: 'kvm',
      engineVersion: KVM_ENGINE_VERSION,
      machine: KVM_MACHINE,
      cpuModel: cpuModel(),
      accel: 'kvm',
      memoryMiB: spec.memoryMiB,
      cpus: spec.cpus,
      arch: 'x86_64',
    }
    const vm = new KvmVm(this.addon(), spec, sig)
    await vm.start({kernel: spec.kernel, initrd: spec.initrd, cmdline: spec.cmdline, memMiB: spec.memoryMiB, cpus: spec.cpus})
    return vm
  }

  async restore(spec: BootSpec, snapshotDir: string): Promise<VmHandle> {
    checkSpec(spec)
    const file = await readKvmSnapshotFile(snapshotDir)
    const sig = file.signature
    await assertRestorable(this, spec, snapshotDir, sig)
    const vm = new KvmVm(this.addon(), spec, sig)
    await vm.start({restoreDir: snapshotDir})
    return vm
  }
}

export async function readKvmSnapshotFile(dir: string): Promise<KvmSnapshotFile> {
  const f = (await readSnapshotJson(dir)) as KvmSnapshotFile
  if (!f?.signature || typeof f.signature.formatVersion !== 'number') {
    throw engineError('SNAPSHOT_INVALID', `${dir}/snapshot.json lacks a signature`, 'Take the snapshot again with `ovm snapshot`.')
  }
  return f
}

function checkSpec(spec: BootSpec): void {
  if (spec.devices.length > 0) {
    throw engineError(
      'DEVICE_UNSUPPORTED',
      `device ${spec.devices[0]!.name}: the kvm engine has no ${spec.devices[0]!.type} devices yet`,
      'Run this artifact with the qemu engine (--engine qemu).',
    )
  }
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > 8) {
    throw engineError('CPUS_UNSUPPORTED', `the kvm engine runs 1 to 8 vCPUs, ${spec.cpus} asked for`, 'Use --cpus 1 to 8, or the qemu engine.')
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 32) {
    throw engineError('MEMORY_INVALID', `memory ${spec.memoryMiB} MiB: give a whole number of MiB, at least 32`, 'Set memory to e.g. 256.')
  }
}

/** The addon's disk config: the chain, then the VM's own overlay on top unless read-only. */
function nativeDisks(spec: BootSpec): NativeConfig['disks'] {
  return spec.disks.map((d) => {
    const paths = d.chain.map((c) => c.path)
    const formats = d.chain.map((c) => c.format)
    if (!d.readOnly) {
      paths.push(d.overlay)
      formats.push('qcow2')
    }
    return {paths, formats, readOnly: Boolean(d.readOnly)}
  })
}


class KvmVm extends VmEvents implements VmHandle {
  readonly engine = 'kvm' as const
  readonly accel = 'kvm' as const
  readonly pid = undefined
  startedAt = Date.now()
  private handle?: NativeHandle
  private exitStatus?: ExitStatus
  private exited: Promise<ExitStatus>
  private resolveExit!: (s: ExitStatus) => void
  private pending: [Buffer[], Buffer[]] = [[], []]
  private pumpTimer?: NodeJS.Timeout
  private agentServer?: Server
  private agentConn?: Socket
  private busy = Promise.resolve()
  private stopRequested = false
  /** Each disk's current top-most writable file (changes with addOverlay). */
  private readonly overlays: string[]

  constructor(
    private readonly addon: NativeAddon,
    private readonly spec: BootSpec,
    private readonly sig: SnapshotSignature,
  ) {
    super()
    this.overlays = spec.disks.map((d) => d.overlay)
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve
    })
  }

  async start(cfg: NativeConfig): Promise<void> {
    if (this.spec.agentSocket) await this.listenAgent(this.spec.agentSocket)
    this.startedAt = Date.now()
    try {
      this.handle = this.addon.create({...cfg, disks: nativeDisks(this.spec)}, (e) => this.onNative(e))
      this.addon.start(this.handle)
    } catch (err) {
      this.closeAgent()
      const e = err as Error & {code?: string}
      if (cfg.restoreDir) {
        throw engineError('RESTORE_FAILED', `restoring ${cfg.restoreDir} failed: ${e.message}`, 'Boot the artifact it was taken from instead (cold boot).', err)
      }
      throw engineError('VM_START_FAILED', `the kvm engine could not start the VM: ${e.message}`, 'Check the kernel, initrd and disk files named above; or use the qemu engine.', err)
    }
    this.setState('running')
  }

  private onNative(e: NativeEvent): void {
    if (e.type === 'serial') {
      if (e.port === 0) this.onOutput(e.data)
      else if (this.agentConn && !this.agentConn.destroyed) this.agentConn.write(e.data)
      // no agent client: bytes are dropped, as a QEMU socket chardev with wait=off does
      return
    }
    if (this.exitStatus) return
    this.flushLine()
    const reason = this.stopRequested && e.reason === 'stopped' ? 'stopped' : e.reason
    const status: ExitStatus = {reason, code: null, signal: null, ...(e.detail && reason === 'crashed' ? {detail: e.detail} : {})}
    this.exitStatus = status
    this.state = reason === 'crashed' ? 'error' : 'stopped'
    clearTimeout(this.pumpTimer)
    this.closeAgent()
    const h = this.handle
    // Free the VM (threads, RAM) once the addon is done delivering this event.
    setImmediate(() => {
      if (h) this.addon.destroy(h)
    })
    this.emit({type: 'exit', status, at: Date.now()})
    this.emit({type: 'state', state: this.state, at: Date.now()})
    this.resolveExit(status)
  }

  private async listenAgent(path: string): Promise<void> {
    await rm(path, {force: true})
    const server = createServer((conn) => {
      if (this.agentConn && !this.agentConn.destroyed) {
        conn.destroy() // one agent client at a time
        return
      }
      this.agentConn = conn
      conn.on('data', (d: Buffer) => this.queueInput(1, d))
      conn.on('error', () => undefined)
      conn.on('close', () => {
        if (this.agentConn === conn) this.agentConn = undefined
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => resolve())
    }).catch((err: unknown) => {
      throw engineError('AGENT_SOCKET_FAILED', `cannot listen on the agent socket ${path}: ${(err as Error).message}`, 'Use a shorter path (UNIX sockets allow 107 bytes) in a writable folder.', err)
    })
    this.agentServer = server
  }

  private closeAgent(): void {
    this.agentConn?.destroy()
    this.agentServer?.close()
    this.agentServer = undefined
  }

  private queueInput(port: 0 | 1, data: Buffer): void {
    if (this.exitStatus || !this.handle || data.length === 0) return
    this.pending[port].push(data)
    this.pump()
  }

  /** Feed queued bytes into the UARTs' receive FIFOs, retrying while they are full. */
  private pump(): void {
    clearTimeout(this.pumpTimer)
    this.pumpTimer = undefined
    if (this.exitStatus || !this.handle) return
    let left = false
    for (const port of [0, 1] as const) {
      const q = this.pending[port]
      while (q.length > 0) {
        const chunk = q[0]!
        const n = this.addon.input(this.handle, port, chunk)
        if (n >= chunk.length) q.shift()
        else {
          q[0] = chunk.subarray(n)
          left = true
          break
        }
      }
    }
    if (left) this.pumpTimer = setTimeout(() => this.pump(), 2)
  }

  write(data: Buffer | string): void {
    this.queueInput(0, typeof data === 'string' ? Buffer.from(data) : data)
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.busy.then(fn, fn)
    this.busy = p.then(
      () => undefined,
      () => undefined,
    )
    return p
  }

  private live(what: string): NativeHandle {
    if (this.exitStatus || !this.handle) throw engineError('VM_NOT_RUNNING', `cannot ${what}: the VM has stopped`, 'Start it again with `ovm run`.')
    return this.handle
  }

  private call(what: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      throw engineError('VM_CONTROL_FAILED', `cannot ${what}: ${(err as Error).message}`, 'The VM may have ended; see its exit status.', err)
    }
  }

  pause(): Promise<void> {
    return this.serial(async () => {
      const h = this.live('pause')
      this.call('pause', () => this.addon.pause(h))
      this.setState('paused')
    })
  }

  resume(): Promise<void> {
    return this.serial(async () => {
      const h = this.live('resume')
      this.call('resume', () => this.addon.resume(h))
      this.setState('running')
    })
  }

  snapshot(dir: string, opts: {leavePaused?: boolean} = {}): Promise<SnapshotInfo> {
    return this.serial(async () => {
      const h = this.live('snapshot')
      const t0 = Date.now()
      const wasRunning = this.state === 'running'
      await mkdir(dir, {recursive: true})
      await rm(join(dir, 'snapshot.json'), {force: true}) // a folder without it is not a snapshot
      let stats
      try {
        stats = await this.addon.snapshot(h, dir) // pauses; disks flushed
      } catch (err) {
        if (wasRunning && !this.exitStatus) this.call('resume', () => this.addon.resume(h))
        throw engineError('SNAPSHOT_FAILED', `snapshot to ${dir} failed: ${(err as Error).message}`, 'Check free disk space; the VM keeps running.', err)
      }
      this.setState('paused')
      const tPaused = Date.now() - stats.totalMs
      try {
        const diskDiffs: string[] = []
        for (const [i, d] of this.spec.disks.entries()) {
          if (d.readOnly) continue
          const to = join(dir, `disk-${i}.qcow2`)
          await copyFile(this.overlays[i] as string, `${to}.tmp`)
          await rm(to, {force: true})
          await copyFile(`${to}.tmp`, to)
          await rm(`${to}.tmp`, {force: true})
          diskDiffs.push(to)
        }
        const file: KvmSnapshotFile = {signature: this.sig, createdAt: new Date().toISOString(), disks: diskDiffs.length}
        await writeFile(join(dir, 'snapshot.json.tmp'), `${JSON.stringify(file, null, 2)}\n`)
        await copyFile(join(dir, 'snapshot.json.tmp'), join(dir, 'snapshot.json'))
        await rm(join(dir, 'snapshot.json.tmp'), {force: true})
        const pausedMs = Date.now() - tPaused
        if (wasRunning && !opts.leavePaused) {
          this.call('resume', () => this.addon.resume(h))
          this.setState('running')
        }
        let bytes = 0
        for (const f of ['state.bin', 'memory.raw', 'snapshot.json', ...diskDiffs.map((p) => p.slice(dir.length + 1))]) {
          const st = await stat(join(dir, f)).catch(() => undefined)
          if (st) bytes += st.blocks * 512
        }
        return {dir, signature: this.sig, diskDiffs, bytes, pausedMs, totalMs: Date.now() - t0}
      } catch (err) {
        if (wasRunning && !this.exitStatus) {
          this.call('resume', () => this.addon.resume(h))
          this.setState('running')
        }
        throw engineError('SNAPSHOT_FAILED', `snapshot to ${dir} failed: ${(err as Error).message}`, 'Check free disk space; the VM keeps running.', err)
      }
    })
  }

  /**
   * Freeze disk `disk`'s top image and go on writing a new qcow2 at `path`
   * (backed by it). The addon switches under the disk's lock, so a request
   * lands wholly in the old top or the new; the guest need not be paused.
   */
  addOverlay(disk: number, path: string, opts: OverlayOptions = {}): Promise<void> {
    return this.serial(async () => {
      const h = this.live('add an overlay')
      await makeNextOverlay(this.spec, this.overlays, disk, path, opts)
      try {
        this.addon.pushDiskTop(h, disk, path)
      } catch (err) {
        await rm(path, {force: true})
        throw engineError('OVERLAY_FAILED', `cannot continue disk ${disk} on ${path}: ${(err as Error).message}`, 'The VM keeps writing its current overlay; check free space and the folder.', err)
      }
      this.overlays[disk] = path
    })
  }

  /**
   * Stop the VM. The machine has no ACPI power button, so a grace period only
   * waits for the guest to end by itself before the hard stop.
   */
  async stop(opts: {graceMs?: number} = {}): Promise<ExitStatus> {
    if (this.exitStatus) return this.exitStatus
    this.stopRequested = true
    this.setState('stopping')
    const grace = opts.graceMs ?? 0
    if (grace > 0) {
      let timer: NodeJS.Timeout | undefined
      const t = await Promise.race([this.exited, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), grace)))])
      clearTimeout(timer)
      if (t) return t
    }
    if (this.handle && !this.exitStatus) this.addon.stop(this.handle) // joins the vCPU threads; the exit event follows
    return this.exited
  }

  wait(): Promise<ExitStatus> {
    return this.exited
  }
}
