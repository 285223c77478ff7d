import {describe, expect, it} from 'vitest'

import type {OvmsManifest} from '../../src/artifact/manifest.js'
import {OvmsMediaType} from '../../src/artifact/media-types.js'
import {buildArtifact, checkConsistency, parseArtifact} from '../../src/artifact/oci.js'
import {OvmError} from '../../src/errors/index.js'
import type {Descriptor} from '../../src/oci/descriptor.js'
import {sha256} from '../../src/oci/digest.js'

const blob = (s: string, mediaType: string, annotations?: Record<string, string>): Descriptor => ({
  mediaType,
  digest: sha256(s),
  size: Buffer.byteLength(s),
  ...(annotations ? {annotations} : {}),
})

const kernel = blob('kernel-bytes', OvmsMediaType.kernel)
const initrd = blob('initrd-bytes', OvmsMediaType.initrd)
const disk0 = blob('disk0', OvmsMediaType.diskLayer, {'ovms.format': 'raw'})
const disk1 = blob('disk1', OvmsMediaType.diskLayer, {'ovms.format': 'qcow2'})
const snap = blob('snap', OvmsMediaType.ramSnapshotLz4)

const ovms: OvmsManifest = {
  schemaVersion: 1,
  mediaType: OvmsMediaType.manifest,
  name: 'example/demo',
  version: '1.0',
  kernel: {ref: kernel.digest, args: 'console=ttyS0'},
  initrd: {ref: initrd.digest},
  diskLayers: [
    {ref: disk0.digest, format: 'raw', size: 5},
    {ref: disk1.digest, format: 'qcow2', size: 5},
  ],
  ramSnapshot: {ref: snap.digest, compression: 'lz4'},
  metadata: {created: '2026-01-01T00:00:00Z', platform: {arch: 'x86_64', uefi: false}},
}
const layers = [kernel, initrd, disk0, disk1, snap]

function caught(fn: () => unknown): OvmError {
  try {
    fn()
  } catch (e) {
    return e as OvmError
  }
  throw new Error('expected an error')
}

describe('OVMS ⇄ OCI mapping', () => {
  it('builds an OCI 1.1 artifact whose digests and sizes agree with the bytes', () => {
    const a = buildArtifact(ovms, layers)
    expect(a.manifest.artifactType).toBe(OvmsMediaType.manifest)
    expect(a.manifest.mediaType).toBe('application/vnd.oci.image.manifest.v1+json')
    expect(a.config).toEqual({mediaType: OvmsMediaType.manifest, digest: sha256(a.configBytes), size: a.configBytes.length})
    expect(a.descriptor.digest).toBe(sha256(a.manifestBytes))
    expect(a.descriptor.size).toBe(a.manifestBytes.length)
    expect(JSON.parse(a.configBytes.toString())).toEqual(ovms)
    expect(a.manifest.annotations?.['org.opencontainers.image.created']).toBe('2026-01-01T00:00:00Z')
  })

  it('parses back to the same manifest with each layer in its role', () => {
    const a = buildArtifact(ovms, layers)
    const p = parseArtifact(a.manifestBytes, a.configBytes, 'demo')
    expect(p.ovms).toEqual(ovms)
    expect(p.layers.map((l) => `${l.role}${l.index ?? ''}`)).toEqual(['kernel', 'initrd', 'disk0', 'disk1', 'ram-snapshot'])
    expect(p.layers[3]!.descriptor).toEqual(disk1)
  })

  it('is deterministic: the same inputs give the same digest', () => {
    expect(buildArtifact(ovms, layers).descriptor.digest).toBe(buildArtifact(ovms, layers).descriptor.digest)
  })

  it('refuses a config whose bytes do not match its descriptor', () => {
    const a = buildArtifact(ovms, layers)
    const tampered = Buffer.from(a.configBytes.toString().replace('1.0', '1.1'))
    const e = caught(() => parseArtifact(a.manifestBytes, tampered, 'demo'))
    expect(e.code).toBe('DIGEST_MISMATCH')
    expect(e.exitCode).toBe(5)
  })

  it('refuses an artifact of another type, naming the media type', () => {
    const a = buildArtifact(ovms, layers)
    const other = JSON.parse(a.manifestBytes.toString())
    other.artifactType = 'application/vnd.example.thing+json'
    const e = caught(() => parseArtifact(Buffer.from(JSON.stringify(other)), a.configBytes, 'x:1'))
    expect(e.code).toBe('UNKNOWN_MEDIA_TYPE')
    expect(e.message).toContain('application/vnd.example.thing+json')
  })

  it('finds every disagreement between refs and layers at once', () => {
    const wrongType = {...initrd, mediaType: OvmsMediaType.kernel}
    const wrongFormat = {...disk1, annotations: {'ovms.format': 'raw'}}
    const stray = blob('stray', 'application/x-unknown')
    const {problems} = checkConsistency(ovms, [kernel, wrongType, disk0, wrongFormat, stray])
    const at = problems.map((p) => p.at)
    expect(at).toEqual(['/initrd/ref', '/diskLayers/1/ref', '/ramSnapshot/ref', 'layers[4]'])
    expect(problems[3]!.message).toContain('unknown media type application/x-unknown')
    const e = caught(() => buildArtifact(ovms, [kernel, wrongType, disk0, wrongFormat, stray]))
    expect(e.code).toBe('ARTIFACT_INCONSISTENT')
    expect(e.details).toHaveLength(4)
  })

  it('checks ovms.disk.size against diskLayers[].size', () => {
    const sized = {...disk0, annotations: {'ovms.format': 'raw', 'ovms.disk.size': '6'}}
    const {problems} = checkConsistency(ovms, [kernel, initrd, sized, disk1, snap])
    expect(problems.map((p) => p.at)).toEqual(['/diskLayers/0/size'])
  })

  it('validates the OVMS manifest before building', () => {
    const e = caught(() => buildArtifact({...ovms, name: 'Bad Name'} as OvmsManifest, layers))
    expect(e.code).toBe('MANIFEST_INVALID')
    expect(e.details.map((d) => d.at)).toEqual(['/name'])
  })
})
