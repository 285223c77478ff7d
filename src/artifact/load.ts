import {type Descriptor, isIndexMediaType, isManifestMediaType} from '../oci/descriptor.js'
import {type LayoutStore, MAX_MANIFEST_BYTES} from '../oci/layout.js'
import {type RemoteRepository, collect} from '../oci/remote/client.js'
import {type ParsedArtifact, parseArtifact, unknownMediaType} from './oci.js'
import {OvmsMediaType} from './media-types.js'

export interface LoadedArtifact extends ParsedArtifact {
  reference: string
  descriptor: Descriptor
}

/** Resolve a reference in the store and read its OVMS artifact, verifying every byte read. */
export async function loadArtifact(store: LayoutStore, reference: string): Promise<LoadedArtifact> {
  const descriptor = await store.resolve(reference)
  if (!isManifestMediaType(descriptor.mediaType)) {
    throw unknownMediaType(
      reference,
      descriptor.mediaType,
      isIndexMediaType(descriptor.mediaType) ? `a single OVMS manifest, not an index (${OvmsMediaType.manifest})` : `an OCI image manifest`,
    )
  }
  const manifestBytes = await store.fetchBytes(descriptor)
  const head = JSON.parse(manifestBytes.toString('utf8')) as {config?: Descriptor; artifactType?: string}
  if (!head.config || (head.artifactType ?? head.config.mediaType) !== OvmsMediaType.manifest) {
    throw unknownMediaType(reference, head.artifactType ?? head.config?.mediaType ?? '(none)', `an OVMS artifact (${OvmsMediaType.manifest})`)
  }
  const configBytes = await store.fetchBytes(head.config)
  return {reference, descriptor, ...parseArtifact(manifestBytes, configBytes, reference)}
}

/** Read an OVMS artifact straight from a registry (nothing is stored), verifying what is read. */
export async function loadRemoteArtifact(repo: RemoteRepository, part: string, reference: string): Promise<LoadedArtifact> {
  const descriptor = await repo.resolve(part)
  if (!isManifestMediaType(descriptor.mediaType)) {
    throw unknownMediaType(reference, descriptor.mediaType, `a single OVMS manifest (${OvmsMediaType.manifest})`)
  }
  const manifestBytes = await repo.fetchManifestBytes(descriptor)
  const head = JSON.parse(manifestBytes.toString('utf8')) as {config?: Descriptor; artifactType?: string}
  if (!head.config || (head.artifactType ?? head.config.mediaType) !== OvmsMediaType.manifest) {
    throw unknownMediaType(reference, head.artifactType ?? head.config?.mediaType ?? '(none)', `an OVMS artifact (${OvmsMediaType.manifest})`)
  }
  const configBytes = await collect(await repo.fetch(head.config), head.config.size, MAX_MANIFEST_BYTES)
  return {reference, descriptor, ...parseArtifact(manifestBytes, configBytes, reference)}
}
