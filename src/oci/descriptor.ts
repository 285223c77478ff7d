import {createHash} from 'node:crypto'

/** OCI descriptors, manifests and indexes: the shapes ovm reads and writes. */

export const MediaType = {
  imageManifest: 'application/vnd.oci.image.manifest.v1+json',
  imageIndex: 'application/vnd.oci.image.index.v1+json',
  imageConfig: 'application/vnd.oci.image.config.v1+json',
  empty: 'application/vnd.oci.empty.v1+json',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const

export const Annotation = {
  refName: 'org.opencontainers.image.ref.name',
  title: 'org.opencontainers.image.title',
  created: 'org.opencontainers.image.created',
  version: 'org.opencontainers.image.version',
} as const

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  annotations?: Record<string, string>
  artifactType?: string
  urls?: string[]
  data?: string
  platform?: {architecture: string; os: string; variant?: string}
}

export interface ImageManifest {
  schemaVersion: 2
  mediaType: typeof MediaType.imageManifest
  artifactType?: string
  config: Descriptor
  layers: Descriptor[]
  subject?: Descriptor
  annotations?: Record<string, string>
}

export interface ImageIndex {
  schemaVersion: 2
  mediaType?: typeof MediaType.imageIndex
  artifactType?: string
  manifests: Descriptor[]
  subject?: Descriptor
  annotations?: Record<string, string>
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MediaType.imageManifest || mt === MediaType.dockerManifest
}

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaType.imageIndex || mt === MediaType.dockerManifestList
}

/** Canonical bytes for a JSON document ovm writes (stable key order as given). */
export function jsonBytes(doc: unknown): Buffer {
  return Buffer.from(JSON.stringify(doc))
}

/** The descriptor of an image manifest's bytes (what a tag or a referrers list points at). */
export function manifestDescriptor(bytes: Uint8Array, artifactType?: string, annotations?: Record<string, string>): Descriptor {
  return {
    mediaType: MediaType.imageManifest,
    digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`,
    size: bytes.length,
    ...(artifactType ? {artifactType} : {}),
    ...(annotations ? {annotations} : {}),
  }
}
