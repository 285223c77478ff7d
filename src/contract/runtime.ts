/**
 * The runtime behind the contract: instances of artifacts from the local
 * store, each a VM on an engine, with a bounded log of console lines and
 * state changes that followers can stream.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, open, rm, truncate} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {type LoadedArtifact, loadArtifact} from '../artifact/load.js'
import {resourcesFromAnnotations} from '../artifact/media-types.js'
import {type ChainFormat, createOverlay, unpackDiskChain} from '../disk/unpack.js'
import {type EngineChoice, defaultEngines, readSnapshotSignature, selectEngine} from '../engine/select.js'
import type {BootSpec, DeviceSpec, Engine, EngineName, ExitStatus, VmHandle} from '../engine/types.js'
import {AbortError, ExitCode} from '../errors/index.js'
import type {LayoutStore} from '../oci/layout.js'
import {publishSnapshot, signatureFromAnnotations, unpackRamSnapshot} from './ramsnap.js'
import type {InjectRequest, InstanceState, InstanceStatus, LogRecord, SnapshotResponse, StartRequest, StopResponse} from './types.js'

export const DEFAULT_MEMORY_MIB = 256
export const DEFAULT_CMDLINE = 'console=ttyS0 panic=-1'
/** Log records kept per instance (older ones are dropped). */
export const LOG_LIMIT = 5000
/** Console bytes kept per instance for a console that attaches late. */
export const CONSOLE_TAIL_BYTES = 64 * 1024
/** Stopped instances remembered for status/logs. */
const KEEP_STOPPED = 50

export interface RuntimeOptions {
  store: LayoutStore
  /** Short folder for per-instance files (UNIX socket paths are limited to 107 bytes). */
  runDir?: string
  engines?: Partial<Record<EngineName, Engine>>
}

type Follower = (r: LogRecord) => void

export class Instance {
  readonly id: string
  state: InstanceState = 'starting'
  vm?: VmHandle
  exit?: ExitStatus
  error?: string
  startMs?: number
  restored = false
  readonly createdAt = Date.now()
  readonly log: LogRecord[] = []
  /** The last console bytes (up to CONSOLE_TAIL_BYTES), replayed to a console that attaches. */
  consoleTail: Buffer[] = []
  private tailBytes = 0
  readonly followers = new Set<Follower>()
  devices: DeviceSpec[] = []
  spec?: BootSpec
  /** Snapshots being written or published: the instance's files stay until they settle. */
  readonly snapshotsInFlight = new Set<Promise<unknown>>()

  constructor(
    id: string,
    readonly artifact: LoadedArtifact,
    readonly workDir: string,
    readonly engineName: EngineName,
  ) {
    this.id = id
  }

  record(r: LogRecord): void {
    this.log.push(r)
    if (this.log.length > LOG_LIMIT) this.log.splice(0, this.log.length - LOG_LIMIT)
    for (const f of this.followers) f(r)
  }

  addOutput(data: Buffer): void {
    this.consoleTail.push(data)
    this.tailBytes += data.length
    while (this.tailBytes > CONSOLE_TAIL_BYTES && this.consoleTail.length > 1) this.tailBytes -= (this.consoleTail.shift() as Buffer).length
  }

  setState(state: InstanceState): void {
    if (this.state === state) return
    this.state = state
    this.record({ts: new Date().toISOString(), type: 'state', state})
  }

  get ended(): boolean {
    return this.state === 'stopped' || this.state === 'error'
  }

  status(): InstanceStatus {
    const s: InstanceStatus = {instance_id: this.id, state: this.state}
    if (this.vm?.pid && !this.ended) s.pid = this.vm.pid
    if (!this.ended) s.uptime_ms = Math.max(0, Date.now() - (this.vm?.startedAt ?? this.createdAt))
    s.metrics = {
      engine: this.engineName,
      ...(this.vm ? {accel: this.vm.accel} : {}),
      ...(this.spec ? {memory_mib: this.spec.memoryMiB, cpus: this.spec.cpus} : {}),
      restored: this.restored,
      ...(this.startMs === undefined ? {} : {start_ms: this.startMs}),
    }
    s.artifact = {reference: this.artifact.reference, digest: this.artifact.descriptor.digest}
    if (this.exit) s.exit = this.exit
    if (this.error) s.error = this.error
    return s
  }
}

export function notFound(id: string): AbortError {
  return new AbortError({code: 'INSTANCE_NOT_FOUND', message: `no instance ${id}`, hint: 'List instances with `ovm ps`.', exitCode: ExitCode.notFound, ref: id})
}

function conflict(id: string, state: string, what: string): AbortError {
  return new AbortError({code: 'INSTANCE_STATE', message: `cannot ${what} instance ${id}: it is ${state}`, hint: 'Check its state with `ovm ps`.', exitCode: ExitCode.conflict, ref: id})
}

/** "512", "512M", "2G", 512 → MiB. */
export function parseMemory(v: number | string | undefined): number | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'number') return v
  const m = /^(\d+)([MmGg]?)$/.exec(v.trim())
  if (!m) throw new AbortError({code: 'BAD_MEMORY', message: `memory ${JSON.stringify(v)} is not a size`, hint: 'Write e.g. 256M or 2G.', exitCode: ExitCode.usage})
  const n = Number(m[1])
  return m[2]?.toLowerCase() === 'g' ? n * 1024 : n
}

export class Runtime {
  readonly store: LayoutStore
  readonly runDir: string
  private readonly engines: Partial<Record<EngineName, Engine>>
  private readonly instances = new Map<string, Instance>()

  constructor(opts: RuntimeOptions) {
    this.store = opts.store
    this.runDir = opts.runDir ?? join(process.env.OVM_RUN_DIR ?? tmpdir(), `ovm-${process.getuid?.() ?? 'u'}`)
    this.engines = opts.engines ?? defaultEngines()
  }

  get(id: string): Instance {
    const i = this.instances.get(id)
    if (!i) throw notFound(id)
    return i
  }

  list(): InstanceStatus[] {
    return [...this.instances.values()].sort((a, b) => b.createdAt - a.createdAt).map((i) => i.status())
  }

  /**
   * The engine for a start: a named one (refused with the reason when it
   * cannot run here), or `auto`: the engine that made the artifact's RAM
   * snapshot where it can run, else kvm where it runs guests, else qemu.
   */
  private async pickEngine(choice: EngineChoice, snapshotEngine?: EngineName): Promise<Engine> {
    if (choice === 'auto' && snapshotEngine) {
      const maker = this.engines[snapshotEngine]
      if (maker && !(await maker.unavailable())) return maker
    }
    return (await selectEngine(choice, this.engines)).engine
  }


  async start(req: StartRequest): Promise<InstanceStatus> {
    const t0 = Date.now()
    const artifact = await loadArtifact(this.store, req.manifest)
    const o = req.overrides ?? {}
    const ram = o.cold_boot ? undefined : artifact.layers.find((l) => l.role === 'ram-snapshot')
    const engine = await this.pickEngine(o.engine ?? 'auto', ram ? signatureFromAnnotations(artifact.ovms.annotations)?.engine : undefined)
    const engineName: EngineName = engine.name
    const kernel = artifact.layers.find((l) => l.role === 'kernel')
    if (!kernel) throw new AbortError({code: 'NO_KERNEL', message: `${req.manifest} has no kernel layer`, hint: 'Pack the artifact with --kernel.', exitCode: ExitCode.invalid, ref: req.manifest})

    let id = randomBytes(6).toString('hex')
    while (this.instances.has(id)) id = randomBytes(6).toString('hex')
    const workDir = join(this.runDir, id)
    await mkdir(this.runDir, {recursive: true, mode: 0o700})
    await mkdir(workDir, {recursive: true, mode: 0o700})
    const inst = new Instance(id, artifact, workDir, engineName)
    this.remember(inst)
    inst.record({ts: new Date().toISOString(), type: 'state', state: 'starting'})
    try {
      let snapDir: string | undefined
      // The request's memory and cpus, else the artifact's (the Ovmfile's MEMORY and CPUS), else the defaults.
      const asked = resourcesFromAnnotations(artifact.ovms.annotations)
      let memoryMiB = parseMemory(o.memory) ?? asked.memoryMiB ?? DEFAULT_MEMORY_MIB
      let cpus = o.cpus ?? asked.cpus ?? 1
      if (ram) {
        // Refuse from the annotations before unpacking anything, then check the real file.
        const declared = signatureFromAnnotations(artifact.ovms.annotations)
        let refused = declared ? await engine.checkSnapshot(declared) : undefined
        let sig = declared
        if (!refused) {
          snapDir = await unpackRamSnapshot(this.store, ram.descriptor)
          sig = await readSnapshotSignature(snapDir)
          refused = await engine.checkSnapshot(sig)
        }
        if (refused) {
          throw new AbortError({
            code: 'SNAPSHOT_INCOMPATIBLE',
            message: `${req.manifest} has a RAM snapshot this runtime cannot restore: ${refused}`,
            hint: 'Start it with a cold boot instead (ovm run --cold, or overrides.cold_boot).',
            exitCode: ExitCode.engine,
            ref: req.manifest,
          })
        }
        if (!sig) throw new Error('unreachable: no snapshot signature')
        if ((o.memory !== undefined && memoryMiB !== sig.memoryMiB) || (o.cpus !== undefined && cpus !== sig.cpus)) {
          throw new AbortError({
            code: 'SNAPSHOT_INCOMPATIBLE',
            message: `${req.manifest} was snapshotted with ${sig.memoryMiB} MiB and ${sig.cpus} vCPUs; a restore cannot change them`,
            hint: 'Leave out --memory and --cpus, or use --cold to boot instead.',
            exitCode: ExitCode.usage,
            ref: req.manifest,
          })
        }
        memoryMiB = sig.memoryMiB
        cpus = sig.cpus
      }
      const disks: BootSpec['disks'] = []
      const diskLayers = artifact.layers.filter((l) => l.role === 'disk').sort((a, b) => (a.index ?? 0) - (b.index ?? 0))
      if (diskLayers.length > 0) {
        const chain = await unpackDiskChain(
          this.store,
          diskLayers.map((l) => ({descriptor: l.descriptor, format: (artifact.ovms.diskLayers?.[l.index ?? 0]?.format ?? 'raw') as ChainFormat})),
        )
        const overlay = join(workDir, 'disk-0.qcow2')
        await createOverlay(chain.at(-1)!, overlay)
        disks.push({chain, overlay})
      }
      const devices: DeviceSpec[] = []
      for (const d of artifact.ovms.devices ?? []) {
        const path = join(workDir, `shm-${d.name.replace(/[^A-Za-z0-9_.-]/g, '_')}`)
        devices.push({type: d.type, name: d.name, size: d.size, mmioAddr: d.mmio_addr, path})
      }
      const initrd = artifact.layers.find((l) => l.role === 'initrd')
      const spec: BootSpec = {
        kernel: this.store.blobPath(kernel.descriptor.digest),
        initrd: initrd ? this.store.blobPath(initrd.descriptor.digest) : undefined,
        cmdline: (snapDir ? undefined : o.cmdline) ?? artifact.ovms.kernel?.args ?? DEFAULT_CMDLINE,
        memoryMiB,
        cpus,
        disks,
        devices,
        workDir,
        // COM2 for the OVMS-Init agent (readiness probes for SNAPSHOT WHEN-RUN); always present, so a snapshot's machine matches.
        agentSocket: join(workDir, 'agent.sock'),
      }
      for (const d of devices) {
        if (d.type === 'ivshmem' && d.size && d.path) {
          await (await open(d.path, 'w', 0o600)).close()
          await truncate(d.path, d.size)
        }
      }
      inst.spec = spec
      inst.devices = devices
      const vm = snapDir ? await engine.restore(spec, snapDir) : await engine.boot(spec)
      inst.vm = vm
      inst.restored = Boolean(snapDir)
      inst.startMs = Date.now() - t0
      vm.on((e) => {
        const ts = new Date(e.at).toISOString()
        if (e.type === 'output') inst.addOutput(e.data)
        else if (e.type === 'console') inst.record({ts, type: 'console', line: e.line})
        else if (e.type === 'state') inst.setState(e.state)
        else if (e.type === 'exit') {
          inst.exit = e.status
          inst.record({ts, type: 'exit', status: e.status})
          if (e.status.reason === 'crashed') inst.error = e.status.detail ?? 'the VMM exited unexpectedly'
          void this.cleanup(inst)
        }
      })
      inst.setState(vm.state)
      return inst.status()
    } catch (err) {
      inst.error = (err as Error).message
      inst.setState('error')
      void this.cleanup(inst)
      throw err
    }
  }

  private remember(inst: Instance): void {
    this.instances.set(inst.id, inst)
    const ended = [...this.instances.values()].filter((i) => i.ended)
    for (const old of ended.slice(0, Math.max(0, ended.length - KEEP_STOPPED))) this.instances.delete(old.id)
  }

  /** Remove the instance's files (followers end on their own with the final state record). */
  private async cleanup(inst: Instance): Promise<void> {
    // A snapshot folder lives in the work dir: a guest that powers off while
    // its snapshot is being published must not pull the files from under it.
    while (inst.snapshotsInFlight.size > 0) await Promise.allSettled([...inst.snapshotsInFlight])
    await rm(inst.workDir, {recursive: true, force: true}).catch(() => undefined)
  }

  async stop(id: string, graceMs = 0): Promise<StopResponse> {
    const inst = this.get(id)
    if (inst.ended) return {status: 'ok', message: `instance ${id} was already ${inst.state}`, ...(inst.exit ? {exit: inst.exit} : {})}
    if (!inst.vm) throw conflict(id, inst.state, 'stop')
    const exit = await inst.vm.stop({graceMs})
    return {status: 'ok', exit}
  }

  async snapshot(id: string, tag?: string): Promise<SnapshotResponse> {
    const inst = this.get(id)
    const vm = inst.vm
    if (!vm || (inst.state !== 'running' && inst.state !== 'paused')) throw conflict(id, inst.state, 'snapshot')
    const t0 = Date.now()
    const dir = join(inst.workDir, `snapshot-${t0}`)
    const work = (async (): Promise<SnapshotResponse> => {
      try {
        const info = await vm.snapshot(dir)
        const pub = await publishSnapshot(this.store, inst.artifact, info, tag)
        return {
          snapshot_ref: tag ?? pub.descriptor.digest,
          digest: pub.descriptor.digest,
          subject: inst.artifact.descriptor.digest,
          size: pub.newBytes,
          paused_ms: info.pausedMs,
          total_ms: Date.now() - t0,
        }
      } finally {
        await rm(dir, {recursive: true, force: true})
      }
    })()
    inst.snapshotsInFlight.add(work)
    try {
      return await work
    } finally {
      inst.snapshotsInFlight.delete(work)
    }
  }

  async inject(req: InjectRequest): Promise<{status: 'ok'; bytes: number}> {
    const inst = this.get(req.instance_id)
    if (inst.ended) throw conflict(inst.id, inst.state, 'inject into')
    const m = req.content.mmio
    const shm = inst.devices.filter((d) => d.type === 'ivshmem')
    const dev = m.device ? shm.find((d) => d.name === m.device) : shm[0]
    if (!dev?.path) {
      throw new AbortError({
        code: 'NO_SHARED_MEMORY',
        message: m.device ? `instance ${inst.id} has no shared-memory device ${m.device}` : `instance ${inst.id} has no shared-memory device`,
        hint: 'Declare an ivshmem device in the manifest: devices: [{type: ivshmem, name: mmio0, size: 67108864}].',
        exitCode: ExitCode.conflict,
      })
    }
    const data = Buffer.from(m.data, m.encoding === 'base64' ? 'base64' : 'utf8')
    const offset = m.offset ?? 0
    if (offset + data.length > (dev.size ?? 0)) {
      throw new AbortError({code: 'INJECT_OUT_OF_RANGE', message: `${data.length} bytes at offset ${offset} do not fit device ${dev.name} (${dev.size} bytes)`, hint: 'Write less, or at a lower offset.', exitCode: ExitCode.usage})
    }
    const fh = await open(dev.path, 'r+')
    try {
      await fh.write(data, 0, data.length, offset)
    } finally {
      await fh.close()
    }
    return {status: 'ok', bytes: data.length}
  }

  /** Past records, then (when `follow`) every new one until the instance ends. Returns an unsubscribe function. */
  follow(id: string, onRecord: Follower, onEnd: () => void, follow = true): () => void {
    const inst = this.get(id)
    for (const r of inst.log) onRecord(r)
    if (!follow || inst.ended) {
      onEnd()
      return () => undefined
    }
    const f: Follower = (r) => {
      onRecord(r)
      if (inst.ended) {
        inst.followers.delete(f)
        onEnd()
      }
    }
    inst.followers.add(f)
    return () => inst.followers.delete(f)
  }

  /** Stop every instance (daemon shutdown). */
  async shutdown(): Promise<void> {
    await Promise.all([...this.instances.values()].filter((i) => !i.ended && i.vm).map((i) => i.vm!.stop().catch(() => undefined)))
  }
}
