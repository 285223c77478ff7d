import {AbortError, type ErrorDetail, ExitCode} from '../errors/index.js'
import {Annotation, type Descriptor, type ImageManifest, MediaType, jsonBytes, manifestDescriptor} from '../oci/descriptor.js'
import {sha256} from '../oci/digest.js'
import type {OvmsManifest} from './manifest.js'
import {KNOWN_LAYER_MEDIA_TYPES, OvmsAnnotation, OvmsMediaType, ramSnapshotMediaType} from './media-types.js'
import {assertManifest, parseJsonText} from './validate.js'

/** What each layer of an OVMS artifact is for. */
export type LayerRole = 'kernel' | 'kernel-modules' | 'initrd' | 'disk' | 'bootstrap' | 'ram-snapshot'

export interface RoledLayer {
  role: LayerRole
  /** For disks: position in the chain, base = 0. */
  index?: number
  descriptor: Descriptor
}

export interface BuiltArtifact {
  ovms: OvmsManifest
  configBytes: Buffer
  config: Descriptor
  manifest: ImageManifest
  manifestBytes: Buffer
  /** The descriptor of the OCI manifest (what a tag points at). */
  descriptor: Descriptor
}

export interface ParsedArtifact {
  ovms: OvmsManifest
  manifest: ImageManifest
  layers: RoledLayer[]
}

/** Which layers an OVMS manifest expects, by ref, in the order ovm writes them. */
export function expectedLayers(ovms: OvmsManifest): {role: LayerRole; index?: number; ref: string; mediaTypes: string[]; format?: string}[] {
  const out: ReturnType<typeof expectedLayers> = []
  if (ovms.kernel) out.push({role: 'kernel', ref: ovms.kernel.ref, mediaTypes: [OvmsMediaType.kernel]})
  if (ovms.kernel?.modules) out.push({role: 'kernel-modules', ref: ovms.kernel.modules.ref, mediaTypes: [OvmsMediaType.kernelModules]})
  if (ovms.initrd) out.push({role: 'initrd', ref: ovms.initrd.ref, mediaTypes: [OvmsMediaType.initrd]})
  for (const [index, d] of (ovms.diskLayers ?? []).entries()) {
    out.push({
      role: 'disk',
      index,
      ref: d.ref,
      format: d.format,
      mediaTypes: [OvmsMediaType.diskLayer, `${OvmsMediaType.diskLayer}+gzip`, `${OvmsMediaType.diskLayer}+zstd`],
    })
  }
  if (ovms.bootstrap) out.push({role: 'bootstrap', ref: ovms.bootstrap.ref, mediaTypes: [OvmsMediaType.bootstrapConfig]})
  if (ovms.ramSnapshot) {
    out.push({role: 'ram-snapshot', ref: ovms.ramSnapshot.ref, mediaTypes: [ramSnapshotMediaType(ovms.ramSnapshot.compression ?? 'lz4')]})
  }
  return out
}

/**
 * Check that the OVMS manifest's refs and the OCI layers agree: each ref that
 * is a digest names a layer of the right media type, disk formats match the
 * `ovms.format` annotation, and no layer is left unexplained.
 */
export function checkConsistency(ovms: OvmsManifest, layers: Descriptor[]): {roles: RoledLayer[]; problems: ErrorDetail[]} {
  const problems: ErrorDetail[] = []
  const roles: RoledLayer[] = []
  const used = new Set<number>()
  for (const exp of expectedLayers(ovms)) {
    const pointer = exp.role === 'disk' ? `/diskLayers/${exp.index}/ref` : exp.role === 'kernel-modules' ? '/kernel/modules/ref' : exp.role === 'ram-snapshot' ? '/ramSnapshot/ref' : `/${exp.role}/ref`
    if (!exp.ref.startsWith('sha256:')) continue // a registry reference: resolved elsewhere
    const i = layers.findIndex((l, j) => !used.has(j) && l.digest === exp.ref)
    if (i < 0) {
      problems.push({at: pointer, message: `${exp.ref} is not one of the artifact's layers`, hint: 'Every digest ref must name a layer of the OCI manifest.'})
      continue
    }
    used.add(i)
    const layer = layers[i] as Descriptor
    if (!exp.mediaTypes.includes(layer.mediaType)) {
      problems.push({
        at: pointer,
        message: `layer ${layer.digest} has media type ${layer.mediaType}, expected ${exp.mediaTypes[0]}`,
        hint: 'Repack the artifact so each layer carries the media type of its role.',
      })
    }
    if (exp.role === 'disk' && layer.annotations?.[OvmsAnnotation.format] !== exp.format) {
      problems.push({
        at: pointer,
        message: `disk layer ${layer.digest} is annotated ${OvmsAnnotation.format}=${layer.annotations?.[OvmsAnnotation.format] ?? '(none)'}, but the manifest says ${exp.format}`,
        hint: 'The annotation and diskLayers[].format must agree.',
      })
    }
    const declaredSize = layer.annotations?.[OvmsAnnotation.diskSize]
    const disk = exp.role === 'disk' ? ovms.diskLayers?.[exp.index as number] : undefined
    if (disk?.size !== undefined && declaredSize !== undefined && declaredSize !== String(disk.size)) {
      problems.push({
        at: `/diskLayers/${exp.index}/size`,
        message: `disk layer ${layer.digest} is annotated ${OvmsAnnotation.diskSize}=${declaredSize}, but the manifest says ${disk.size}`,
        hint: 'The annotation and diskLayers[].size must agree.',
      })
    }
    roles.push({role: exp.role, index: exp.index, descriptor: layer})
  }
  for (const [j, l] of layers.entries()) {
    if (used.has(j)) continue
    problems.push({
      at: `layers[${j}]`,
      message: KNOWN_LAYER_MEDIA_TYPES.has(l.mediaType)
        ? `layer ${l.digest} (${l.mediaType}) is not referenced by the OVMS manifest`
        : `layer ${l.digest} has unknown media type ${l.mediaType}`,
      hint: 'An OVMS artifact holds only the layers its manifest names.',
    })
  }
  return {roles, problems}
}

/** Assemble the OCI image manifest for an OVMS manifest and its layers. */
export function buildArtifact(ovms: OvmsManifest, layers: Descriptor[], opts: {created?: string; subject?: Descriptor} = {}): BuiltArtifact {
  const valid = assertManifest(ovms, `${ovms.name ?? 'artifact'} manifest`)
  const {problems} = checkConsistency(valid, layers)
  if (problems.length > 0) throw inconsistent(ovms.name, problems)
  const configBytes = jsonBytes(valid)
  const config: Descriptor = {mediaType: OvmsMediaType.manifest, digest: sha256(configBytes), size: configBytes.length}
  const annotations: Record<string, string> = {
    [Annotation.title]: valid.name,
    [Annotation.version]: valid.version,
  }
  const created = opts.created ?? valid.metadata?.created
  if (created) annotations[Annotation.created] = created
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.imageManifest,
    artifactType: OvmsMediaType.manifest,
    config,
    layers,
    ...(opts.subject ? {subject: opts.subject} : {}),
    annotations,
  }
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 2))
  return {
    ovms: valid,
    configBytes,
    config,
    manifest,
    manifestBytes,
    descriptor: manifestDescriptor(manifestBytes, OvmsMediaType.manifest),
  }
}

/** Parse an OCI manifest (and its config bytes) back into an OVMS artifact, checking everything. */
export function parseArtifact(manifestBytes: Buffer, configBytes: Buffer, source: string): ParsedArtifact {
  const manifest = parseJsonText(manifestBytes.toString('utf8'), source) as ImageManifest
  if (manifest.mediaType !== MediaType.imageManifest || !manifest.config || !Array.isArray(manifest.layers)) {
    throw unknownMediaType(source, String(manifest.mediaType ?? '(none)'), 'an OCI image manifest')
  }
  const type = manifest.artifactType ?? manifest.config.mediaType
  if (type !== OvmsMediaType.manifest || manifest.config.mediaType !== OvmsMediaType.manifest) {
    throw unknownMediaType(source, type, `an OVMS artifact (${OvmsMediaType.manifest})`)
  }
  const got = sha256(configBytes)
  if (got !== manifest.config.digest || configBytes.length !== manifest.config.size) {
    throw new AbortError({
      code: 'DIGEST_MISMATCH',
      message: `${source}: config blob does not match its descriptor (${got}, ${configBytes.length} bytes; expected ${manifest.config.digest}, ${manifest.config.size} bytes)`,
      hint: 'Fetch the artifact again; for the local store run `ovm store verify`.',
      exitCode: ExitCode.integrity,
      ref: source,
    })
  }
  const ovms = assertManifest(parseJsonText(configBytes.toString('utf8'), `${source} (config)`), `${source} (config)`)
  const {roles, problems} = checkConsistency(ovms, manifest.layers)
  if (problems.length > 0) throw inconsistent(source, problems)
  return {ovms, manifest, layers: roles}
}

export function unknownMediaType(source: string, got: string, want: string): AbortError {
  return new AbortError({
    code: 'UNKNOWN_MEDIA_TYPE',
    message: `${source} has media type ${got}, but ovm expects ${want}`,
    hint: 'This reference is not an OVMS artifact. Check the name; container images need `ovm convert`.',
    exitCode: ExitCode.invalid,
    ref: source,
  })
}

function inconsistent(source: string, details: ErrorDetail[]): AbortError {
  return new AbortError({
    code: 'ARTIFACT_INCONSISTENT',
    message: `${source}: the OVMS manifest and the OCI layers disagree (${details.length} problem${details.length === 1 ? '' : 's'})`,
    hint: 'Repack the artifact with `ovm pack`.',
    exitCode: ExitCode.invalid,
    ref: source,
    details,
  })
}
