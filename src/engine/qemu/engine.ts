/**
 * The QEMU engine: spawns `qemu-system-x86_64` per VM, drives it over QMP.
 *
 * Acceleration: TCG unless asked for KVM (`OVM_QEMU_ACCEL=kvm`, or
 * `BootSpec.accel`). An openable /dev/kvm is not trusted: under some nested
 * hypervisors it opens and then hangs the guest (rfc/runtime.md).
 *
 * Guest RAM lives in a file (`memory-backend-file`). A booted VM maps it
 * shared, so a snapshot writes only device state through migration
 * (capability `x-ignore-shared`) and copies the RAM file; a restored VM maps
 * the snapshot's RAM file private, so nothing ever writes it.
 */
import {type ChildProcess, execFile, spawn} from 'node:child_process'
import {chmod, copyFile, mkdir, mkdtemp, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {promisify} from 'node:util'

import type {
  Acceleration,
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
import {SUPPORTED_DEVICE_TYPES, cpuModelFor, qemuArgs} from './args.js'
import {QmpClient, type QmpEvent} from './qmp.js'
import {shellQuote} from '../../util/shell.js'

const run = promisify(execFile)

export const SNAPSHOT_FORMAT_VERSION = 1

/** What a QEMU snapshot folder holds (written last, as `snapshot.json`). */
export interface QemuSnapshotFile {
  signature: SnapshotSignature
  /** `file`: RAM is `memory.raw` (state.bin has devices only); `stream`: RAM is inside state.bin. */
  memory: 'file' | 'stream'
  createdAt: string
  disks: number
}

export interface QemuEngineOptions {
  /** The QEMU binary (default: `$OVM_QEMU`, else qemu-system-x86_64 on PATH). */
  binary?: string
  /** `kvm`, `tcg` (default: `$OVM_QEMU_ACCEL`, else tcg). */
  accel?: Acceleration
}

interface HostInfo {
  version: string
  machine: string
}

export class QemuEngine implements Engine {
  readonly name = 'qemu' as const
  readonly binary: string
  readonly defaultAccel: Acceleration
  private info?: Promise<HostInfo>

  constructor(opts: QemuEngineOptions = {}) {
    this.binary = opts.binary ?? process.env.OVM_QEMU ?? 'qemu-system-x86_64'
    const env = process.env.OVM_QEMU_ACCEL
    this.defaultAccel = opts.accel ?? (env === 'kvm' ? 'kvm' : 'tcg')
  }

  async version(): Promise<string> {
    return (await this.hostInfo()).version
  }

  /** QEMU's version and the concrete machine type behind the `pc` alias. */
  hostInfo(): Promise<HostInfo> {
    this.info ??= (async () => {
      const v = await run(this.binary, ['--version'])
      const version = /version (\d+\.\d+\.\d+)/.exec(v.stdout)?.[1] ?? 'unknown'
      const m = await run(this.binary, ['-machine', 'help'])
      const machine = /^pc\s+.*\(alias of ([\w.-]+)\)/m.exec(m.stdout)?.[1] ?? 'pc'
      return {version, machine}
    })()
    this.info.catch(() => {
      this.info = undefined
    })
    return this.info
  }

  async unavailable(): Promise<string | undefined> {
    try {
      await this.hostInfo()
    } catch (err) {
      return `cannot run ${this.binary}: ${(err as Error).message} (install qemu-system-x86, or set OVM_QEMU)`
    }
    if (this.defaultAccel === 'kvm') {
      try {
        await stat('/dev/kvm')
      } catch {
        return 'OVM_QEMU_ACCEL=kvm but /dev/kvm does not exist'
      }
    }
    return undefined
  }

  async checkSnapshot(sig: SnapshotSignature): Promise<string | undefined> {
    if (sig.formatVersion !== SNAPSHOT_FORMAT_VERSION) return `snapshot format ${sig.formatVersion}, this runtime reads format ${SNAPSHOT_FORMAT_VERSION}`
    if (sig.engine !== 'qemu') return `the snapshot was made by the ${sig.engine} engine; the qemu engine cannot restore it`
    if (sig.arch !== 'x86_64') return `the snapshot is for ${sig.arch}, this runtime runs x86_64`
    const info = await this.hostInfo()
    const minor = (v: string): string => v.split('.').slice(0, 2).join('.')
    if (minor(sig.engineVersion) !== minor(info.version)) {
      return `the snapshot was made by QEMU ${sig.engineVersion}, this host has QEMU ${info.version} (migration streams are only restored by the same QEMU release)`
    }
    if (sig.accel === 'kvm' && this.defaultAccel !== 'kvm') {
      return 'the snapshot was made under KVM (CPU model host); this runtime runs TCG (set OVM_QEMU_ACCEL=kvm where KVM works)'
    }
    return undefined
  }

  async boot(spec: BootSpec): Promise<VmHandle> {
    checkDevices(spec)
    const info = await this.hostInfo()
    const accel = spec.accel ?? this.defaultAccel
    const sig: SnapshotSignature = {
      formatVersion: SNAPSHOT_FORMAT_VERSION,
      engine: 'qemu',
      engineVersion: info.version,
      machine: info.machine,
      cpuModel: cpuModelFor(accel),
      accel,
      memoryMiB: spec.memoryMiB,
      cpus: spec.cpus,
      arch: 'x86_64',
    }
    const ramPath = join(spec.workDir, 'ram')
    const vm = new QemuVm(this.binary, spec, sig, ramPath, true)
    await vm.start()
    return vm
  }

  async restore(spec: BootSpec, snapshotDir: string): Promise<VmHandle> {
    checkDevices(spec)
    const file = await readSnapshotFile(snapshotDir)
    const sig = file.signature
    await assertRestorable(this, spec, snapshotDir, sig)
    for (const [i, dev] of spec.devices.entries()) {
      const saved = join(snapshotDir, `device-${i}.bin`)
      if (dev.path && (await stat(saved).then(() => true, () => false))) {
        await copyFile(saved, dev.path)
        await chmod(dev.path, 0o600)
      }
    }
    const fromFile = file.memory === 'file'
    const ramPath = fromFile ? join(snapshotDir, 'memory.raw') : join(spec.workDir, 'ram')
    const vm = new QemuVm(this.binary, {...spec, accel: sig.accel}, sig, ramPath, !fromFile)
    await vm.start({incoming: {statePath: join(snapshotDir, 'state.bin'), ignoreShared: fromFile}})
    return vm
  }
}

export async function readSnapshotFile(dir: string): Promise<QemuSnapshotFile> {
  const f = (await readSnapshotJson(dir)) as QemuSnapshotFile
  if (!f?.signature || (f.memory !== 'file' && f.memory !== 'stream')) {
    throw engineError('SNAPSHOT_INVALID', `${dir}/snapshot.json lacks a signature or memory mode`, 'Take the snapshot again with `ovm snapshot`.')
  }
  return f
}

function checkDevices(spec: BootSpec): void {
  for (const d of spec.devices) {
    if (!(SUPPORTED_DEVICE_TYPES as readonly string[]).includes(d.type)) {
      throw engineError(
        'DEVICE_UNSUPPORTED',
        `device ${d.name}: type ${JSON.stringify(d.type)} is not supported by the qemu engine`,
        `Supported device types: ${SUPPORTED_DEVICE_TYPES.join(', ')}. Remove the device from the manifest.`,
      )
    }
    if (!/^[A-Za-z][A-Za-z0-9_.-]{0,31}$/.test(d.name)) {
      throw engineError('DEVICE_INVALID', `device name ${JSON.stringify(d.name)} is not a valid identifier`, 'Use letters, digits, "-", "_" or ".", starting with a letter.')
    }
    if (!d.size || d.size <= 0 || (d.size & (d.size - 1)) !== 0) {
      throw engineError('DEVICE_INVALID', `device ${d.name}: ivshmem size must be a power of two in bytes, got ${d.size ?? '(none)'}`, 'Set size, e.g. 67108864 (64 MiB).')
    }
  }
}

let pdeathsig: Promise<string | undefined> | undefined

/** `setpriv` (util-linux) when it supports --pdeathsig, else undefined (then QEMU may outlive a killed daemon). */
function pdeathsigWrapper(): Promise<string | undefined> {
  pdeathsig ??= run('setpriv', ['--help']).then(
    (r) => (r.stdout.includes('--pdeathsig') ? 'setpriv' : undefined),
    () => undefined,
  )
  return pdeathsig
}



class QemuVm extends VmEvents implements VmHandle {
  readonly engine = 'qemu' as const
  readonly accel: Acceleration
  startedAt = Date.now()
  private proc?: ChildProcess
  private qmp?: QmpClient
  private stderrTail: string[] = []
  private shutdownReason?: string
  private stopRequested = false
  private exitStatus?: ExitStatus
  private exited: Promise<ExitStatus>
  private resolveExit!: (s: ExitStatus) => void
  private busy = Promise.resolve()
  /** Each disk's current top-most writable file (changes with addOverlay). */
  private readonly overlays: string[]
  /** Each disk's current top block node (QMP node-name). */
  private readonly nodes: string[]
  private overlayCount = 0
  /** A short folder for the QMP socket when the work folder's path is too long. */
  private shortDir?: string

  constructor(
    private readonly binary: string,
    private readonly spec: BootSpec,
    private readonly sig: SnapshotSignature,
    private readonly ramPath: string,
    private readonly ramShared: boolean,
  ) {
    super()
    this.accel = sig.accel
    this.overlays = spec.disks.map((d) => d.overlay)
    this.nodes = spec.disks.map((_, i) => `disk${i}`)
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve
    })
  }

  get pid(): number | undefined {
    return this.proc?.pid
  }

  async start(opts: {incoming?: {statePath: string; ignoreShared: boolean}} = {}): Promise<void> {
    let qmpSocket = join(this.spec.workDir, 'qmp.sock')
    if (Buffer.byteLength(qmpSocket) > 100) {
      // UNIX socket paths are limited to 107 bytes: use a short private folder instead.
      this.shortDir = await mkdtemp(join(tmpdir(), 'ovm-qmp-'))
      qmpSocket = join(this.shortDir, 'qmp.sock')
    }
    await rm(qmpSocket, {force: true})
    const args = qemuArgs(this.spec, {
      machine: this.sig.machine,
      accel: this.sig.accel,
      cpuModel: this.sig.cpuModel,
      ramPath: this.ramPath,
      ramShared: this.ramShared,
      qmpSocket,
      incoming: Boolean(opts.incoming),
    })
    await writeFile(join(this.spec.workDir, 'qemu.args'), `${[this.binary, ...args].map(shellQuote).join(' ')}\n`)
    this.startedAt = Date.now()
    // QEMU outlives a parent killed with SIGKILL; setpriv makes the kernel send it SIGTERM then.
    const guard = await pdeathsigWrapper()
    const proc = guard
      ? spawn(guard, ['--pdeathsig', 'SIGTERM', '--', this.binary, ...args], {stdio: ['pipe', 'pipe', 'pipe'], cwd: this.spec.workDir})
      : spawn(this.binary, args, {stdio: ['pipe', 'pipe', 'pipe'], cwd: this.spec.workDir})
    this.proc = proc
    proc.stdin!.on('error', () => undefined)
    proc.stdout!.on('data', (d: Buffer) => this.onOutput(d))
    proc.stderr!.setEncoding('utf8')
    proc.stderr!.on('data', (d: string) => {
      this.stderrTail.push(...d.split('\n').filter(Boolean))
      if (this.stderrTail.length > 20) this.stderrTail.splice(0, this.stderrTail.length - 20)
    })
    let spawnError: Error | undefined
    proc.on('error', (err) => {
      spawnError = err
    })
    proc.on('exit', (code, signal) => this.onExit(code, signal, spawnError))
    try {
      this.qmp = await QmpClient.connect(qmpSocket, {timeoutMs: 15_000, alive: () => this.exitStatus === undefined && !spawnError})
    } catch (err) {
      await this.kill()
      const status = await this.exited
      throw engineError(
        'VM_START_FAILED',
        `qemu did not start: ${status.detail || (err as Error).message}`,
        `Check the command line in ${join(this.spec.workDir, 'qemu.args')}; is qemu-system-x86 installed?`,
        err,
      )
    }
    this.qmp.on('event', (e: QmpEvent) => this.onQmpEvent(e))
    if (opts.incoming) {
      try {
        await this.setIgnoreShared(opts.incoming.ignoreShared)
        const done = this.waitMigration(60_000)
        await this.qmp.execute('migrate-incoming', {uri: `exec:cat ${shellQuote(opts.incoming.statePath)}`})
        await done
        await this.qmp.execute('cont')
      } catch (err) {
        await this.kill()
        const status = await this.exited
        throw engineError('RESTORE_FAILED', `restoring the snapshot failed: ${status.detail || (err as Error).message}`, 'Boot the original artifact instead; the snapshot may be damaged.', err)
      }
    }
    this.setState('running')
  }

  private onQmpEvent(e: QmpEvent): void {
    if (e.event === 'STOP' && this.state === 'running') this.setState('paused')
    else if (e.event === 'RESUME' && this.state === 'paused') this.setState('running')
    else if (e.event === 'SHUTDOWN') {
      this.shutdownReason = String(e.data?.reason ?? '')
      if (this.state !== 'stopped') this.setState('stopping')
    }
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null, spawnError?: Error): void {
    if (this.exitStatus) return
    this.flushLine()
    const r = this.shutdownReason
    let reason: ExitStatus['reason']
    if (r === 'guest-shutdown') reason = 'poweroff'
    else if (r === 'guest-reset' || r === 'guest-panic') reason = 'reset'
    else if (this.stopRequested || r === 'host-qmp-quit' || r === 'host-signal') reason = 'stopped'
    else reason = code === 0 ? 'poweroff' : 'crashed'
    const detail = spawnError ? spawnError.message : this.stderrTail.join('\n') || undefined
    const status: ExitStatus = {reason, code, signal, ...(detail ? {detail} : {})}
    this.exitStatus = status
    this.qmp?.close()
    if (this.shortDir) void rm(this.shortDir, {recursive: true, force: true})
    this.state = reason === 'crashed' ? 'error' : 'stopped'
    this.emit({type: 'exit', status, at: Date.now()})
    this.emit({type: 'state', state: this.state, at: Date.now()})
    this.resolveExit(status)
  }

  private async kill(): Promise<void> {
    if (this.exitStatus || !this.proc) return
    this.stopRequested = true
    this.proc.kill('SIGKILL')
  }

  /** Run QMP operations one at a time (pause during snapshot must not race a resume). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.busy.then(fn, fn)
    this.busy = p.then(
      () => undefined,
      () => undefined,
    )
    return p
  }

  private live(what: string): QmpClient {
    if (this.exitStatus || !this.qmp || this.qmp.isClosed) {
      throw engineError('VM_NOT_RUNNING', `cannot ${what}: the VM has stopped`, 'Start it again with `ovm run`.')
    }
    return this.qmp
  }

  write(data: Buffer | string): void {
    if (this.exitStatus || !this.proc?.stdin?.writable) return
    this.proc.stdin.write(data)
  }

  pause(): Promise<void> {
    return this.serial(async () => {
      await this.live('pause').execute('stop')
      this.setState('paused')
    })
  }

  resume(): Promise<void> {
    return this.serial(async () => {
      await this.live('resume').execute('cont')
      this.setState('running')
    })
  }

  private async setIgnoreShared(on: boolean): Promise<void> {
    await this.live('configure migration').execute('migrate-set-capabilities', {capabilities: [{capability: 'x-ignore-shared', state: on}]})
  }

  private async waitMigration(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const q = await this.live('migrate').execute<{status?: string; 'error-desc'?: string}>('query-migrate')
      if (q.status === 'completed') return
      if (q.status === 'failed' || q.status === 'cancelled') throw new Error(`migration ${q.status}: ${q['error-desc'] ?? 'no detail'}`)
      if (Date.now() > deadline) throw new Error(`migration did not finish within ${timeoutMs} ms (status ${q.status})`)
      await sleep(5)
    }
  }

  snapshot(dir: string, opts: {leavePaused?: boolean} = {}): Promise<SnapshotInfo> {
    return this.serial(async () => {
      const qmp = this.live('snapshot')
      const t0 = Date.now()
      const wasRunning = this.state === 'running'
      await mkdir(dir, {recursive: true})
      await qmp.execute('stop')
      this.setState('paused')
      const tPaused = Date.now()
      let resumed = false
      try {
        // Shared RAM: the stream carries device state only, RAM is copied from its file.
        // Not with shared-memory devices: QEMU 7.2 refuses to load an ignored block
        // mapped by a PCI BAR ("Mismatched GPAs"), so then all RAM goes in the stream.
        const ramInFile = this.ramShared && this.spec.devices.length === 0
        await this.setIgnoreShared(ramInFile)
        await qmp.execute('migrate', {uri: `exec:cat > ${shellQuote(join(dir, 'state.bin'))}`})
        await this.waitMigration(120_000)
        const diskDiffs: string[] = []
        for (const [i, d] of this.spec.disks.entries()) {
          if (d.readOnly) continue
          const to = join(dir, `disk-${i}.qcow2`)
          await copyFile(this.overlays[i] as string, to)
          diskDiffs.push(to)
        }
        // Shared-memory devices are shared RAM too: their contents are copied beside the RAM.
        for (const [i, dev] of this.spec.devices.entries()) if (dev.path) await copyFile(dev.path, join(dir, `device-${i}.bin`))
        if (ramInFile) await run('cp', ['--sparse=always', '--reflink=auto', this.ramPath, join(dir, 'memory.raw')])
        const file: QemuSnapshotFile = {signature: this.sig, memory: ramInFile ? 'file' : 'stream', createdAt: new Date().toISOString(), disks: diskDiffs.length}
        await writeFile(join(dir, 'snapshot.json'), `${JSON.stringify(file, null, 2)}\n`)
        const pausedMs = Date.now() - tPaused
        if (wasRunning && !opts.leavePaused) {
          await qmp.execute('cont')
          this.setState('running')
          resumed = true
        }
        let bytes = 0
        for (const f of ['state.bin', 'memory.raw', 'snapshot.json', ...diskDiffs.map((p) => p.slice(dir.length + 1))]) {
          const st = await stat(join(dir, f)).catch(() => undefined)
          if (st) bytes += st.blocks * 512
        }
        return {dir, signature: this.sig, diskDiffs, bytes, pausedMs, totalMs: Date.now() - t0}
      } catch (err) {
        if (wasRunning && !resumed && !this.exitStatus) await qmp.execute('cont').catch(() => undefined)
        if (wasRunning && !this.exitStatus) this.setState('running')
        throw engineError('SNAPSHOT_FAILED', `snapshot to ${dir} failed: ${(err as Error).message}`, 'Check free disk space; the VM keeps running.', err)
      }
    })
  }

  addOverlay(disk: number, path: string, opts: OverlayOptions = {}): Promise<void> {
    return this.serial(async () => {
      await makeNextOverlay(this.spec, this.overlays, disk, path, opts)
      // With -blockdev the device follows the new top node; the old overlay stays as its backing file, frozen.
      await this.live('add an overlay').execute('blockdev-snapshot-sync', {
        'node-name': this.nodes[disk],
        'snapshot-file': path,
        'snapshot-node-name': `disk${disk}-o${++this.overlayCount}`,
        format: 'qcow2',
        mode: 'existing',
      })
      this.nodes[disk] = `disk${disk}-o${this.overlayCount}`
      this.overlays[disk] = path
    })
  }

  async stop(opts: {graceMs?: number} = {}): Promise<ExitStatus> {
    if (this.exitStatus) return this.exitStatus
    this.stopRequested = true
    this.setState('stopping')
    const grace = opts.graceMs ?? 0
    if (grace > 0) {
      await this.qmp?.execute('system_powerdown').catch(() => undefined)
      const t = await Promise.race([this.exited, sleep(grace).then(() => undefined)])
      if (t) return t
    }
    await this.qmp?.execute('quit').catch(() => undefined)
    const t = await Promise.race([this.exited, sleep(5000).then(() => undefined)])
    if (t) return t
    await this.kill()
    return this.exited
  }

  wait(): Promise<ExitStatus> {
    return this.exited
  }
}
