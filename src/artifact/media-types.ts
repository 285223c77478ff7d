/** OVMS media types (spec §3) and ovm's extensions (rfc/ovms-v0.1.md). */
export const OvmsMediaType = {
  manifest: 'application/vnd.ovms.manifest.v1+json',
  kernel: 'application/vnd.ovms.kernel.v1',
  /** Extension: a tar of /lib/modules/<version> for the kernel. */
  kernelModules: 'application/vnd.ovms.kernel.modules.v1.tar',
  initrd: 'application/vnd.ovms.initrd.v1',
  /** A disk layer: a tar holding one image file (disk.qcow2 or disk.raw). */
  diskLayer: 'application/vnd.oci.image.layer.v1.tar',
  bootstrapConfig: 'application/vnd.ovms.bootstrap.config.v1+json',
  ramSnapshotLz4: 'application/vnd.ovms.ramsnap.v1+lz4',
  /** Extension: zstd-compressed snapshot. */
  ramSnapshotZstd: 'application/vnd.ovms.ramsnap.v1+zstd',
  /** Extension: uncompressed snapshot. */
  ramSnapshotNone: 'application/vnd.ovms.ramsnap.v1',
} as const

export const OvmsAnnotation = {
  /** On a disk layer: qcow2 or raw. */
  format: 'ovms.format',
  /** Extension, on a disk layer: the disk's virtual size in bytes. */
  diskSize: 'ovms.disk.size',
} as const

/**
 * Extension annotations on the OVMS manifest: the guest's memory and vCPUs
 * as the Ovmfile's MEMORY and CPUS gave them. Runtimes use them when a start
 * request names none (rfc/ovms-v0.1.md).
 */
export const ResourceAnnotation = {
  memoryMiB: 'dev.ovm.memory-mib',
  cpus: 'dev.ovm.cpus',
} as const

/** The memory (MiB) and vCPUs an artifact's annotations ask for; a value that is not a whole number in range is ignored. */
export function resourcesFromAnnotations(a: Record<string, string> | undefined): {memoryMiB?: number; cpus?: number} {
  const whole = (v: string | undefined, min: number, max: number): number | undefined => {
    if (v === undefined || !/^\d{1,7}$/.test(v)) return undefined
    const n = Number(v)
    return n >= min && n <= max ? n : undefined
  }
  const memoryMiB = whole(a?.[ResourceAnnotation.memoryMiB], 32, 4_194_304)
  const cpus = whole(a?.[ResourceAnnotation.cpus], 1, 64)
  return {...(memoryMiB ? {memoryMiB} : {}), ...(cpus ? {cpus} : {})}
}

export type RamCompression = 'lz4' | 'zstd' | 'none'

export function ramSnapshotMediaType(c: RamCompression): string {
  return c === 'lz4' ? OvmsMediaType.ramSnapshotLz4 : c === 'zstd' ? OvmsMediaType.ramSnapshotZstd : OvmsMediaType.ramSnapshotNone
}

export const KNOWN_LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  OvmsMediaType.kernel,
  OvmsMediaType.kernelModules,
  OvmsMediaType.initrd,
  OvmsMediaType.diskLayer,
  `${OvmsMediaType.diskLayer}+gzip`,
  `${OvmsMediaType.diskLayer}+zstd`,
  OvmsMediaType.bootstrapConfig,
  OvmsMediaType.ramSnapshotLz4,
  OvmsMediaType.ramSnapshotZstd,
  OvmsMediaType.ramSnapshotNone,
])

/** The `org.opencontainers.image.title` of each layer: the file name it gets when unpacked. */
export function layerTitle(role: 'kernel' | 'kernel-modules' | 'initrd' | 'disk' | 'bootstrap' | 'ram-snapshot', index = 0, compression: RamCompression = 'lz4'): string {
  switch (role) {
    case 'kernel':
      return 'vmlinuz'
    case 'kernel-modules':
      return 'modules.tar'
    case 'initrd':
      return 'initrd.img'
    case 'disk':
      return `disk-${index}.tar`
    case 'bootstrap':
      return 'bootstrap.json'
    case 'ram-snapshot':
      return compression === 'lz4' ? 'ramsnap.lz4' : compression === 'zstd' ? 'ramsnap.zst' : 'ramsnap.bin'
  }
}
