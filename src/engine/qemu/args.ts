/**
 * The QEMU command line for a BootSpec: a pure function, so that boot and
 * restore build the identical machine (migration requires it) and tests can
 * check it without QEMU.
 */
import type {Acceleration, BootSpec} from '../types.js'

export interface QemuArgsOptions {
  machine: string
  accel: Acceleration
  cpuModel: string
  /** The file backing guest RAM. */
  ramPath: string
  /** MAP_SHARED (snapshots skip RAM: x-ignore-shared) or MAP_PRIVATE (restore from an immutable file). */
  ramShared: boolean
  qmpSocket: string
  /** Start waiting for an incoming migration (`migrate-incoming`) instead of running. */
  incoming?: boolean
}

/** Supported manifest device types and how they map onto QEMU devices. */
export const SUPPORTED_DEVICE_TYPES = ['ivshmem'] as const

export function cpuModelFor(accel: Acceleration): string {
  return accel === 'kvm' ? 'host' : 'qemu64'
}

/** `-object` values are comma-separated: a comma in a path is written twice. */
function optPath(p: string): string {
  return p.replaceAll(',', ',,')
}

export function qemuArgs(spec: BootSpec, o: QemuArgsOptions): string[] {
  const args: string[] = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-machine',
    `${o.machine},accel=${o.accel},memory-backend=ram0`,
    '-cpu',
    o.cpuModel,
    '-m',
    `${spec.memoryMiB}M`,
    '-smp',
    String(spec.cpus),
    '-object',
    `memory-backend-file,id=ram0,size=${spec.memoryMiB}M,mem-path=${optPath(o.ramPath)},share=${o.ramShared ? 'on' : 'off'}`,
    '-chardev',
    'stdio,id=con0,signal=off',
    '-serial',
    'chardev:con0',
    '-chardev',
    `socket,id=qmp0,path=${optPath(o.qmpSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp0,mode=control',
    ...(spec.agentSocket ? ['-chardev', `socket,id=agent0,path=${optPath(spec.agentSocket)},server=on,wait=off`, '-serial', 'chardev:agent0'] : []),
    '-kernel',
    spec.kernel,
  ]
  if (spec.initrd) args.push('-initrd', spec.initrd)
  args.push('-append', spec.cmdline)
  for (const [i, d] of spec.disks.entries()) {
    const top = d.chain.at(-1)
    const node =
      d.readOnly && top
        ? `driver=${top.format},node-name=disk${i},read-only=on,file.driver=file,file.filename=${optPath(top.path)}`
        : `driver=qcow2,node-name=disk${i},file.driver=file,file.filename=${optPath(d.overlay)},cache.direct=off,discard=unmap`
    args.push('-blockdev', node, '-device', `virtio-blk-pci,drive=disk${i},id=vd${i}`)
  }
  for (const [i, dev] of spec.devices.entries()) {
    if (dev.type === 'ivshmem') {
      args.push(
        '-object',
        `memory-backend-file,id=shm${i},size=${dev.size ?? 0},mem-path=${optPath(dev.path ?? '')},share=on`,
        '-device',
        `ivshmem-plain,memdev=shm${i},id=${dev.name},master=on`,
      )
    }
  }
  if (o.incoming) args.push('-incoming', 'defer')
  return args
}
