import {Args} from '@oclif/core'

import {loadArtifact, loadRemoteArtifact} from '../artifact/load.js'
import type {OvmsManifest} from '../artifact/manifest.js'
import type {Descriptor, ImageManifest} from '../oci/descriptor.js'
import {parseReference} from '../oci/reference.js'
import {openRemote} from '../oci/remote/client.js'
import {humanBytes, table} from '../ui/format.js'
import {registryFlags, registryOptions} from '../cli/registry.js'
import {BaseCommand} from '../cli/base-command.js'

export interface InspectResult {
  reference: string
  descriptor: Descriptor
  ovms: OvmsManifest
  manifest: ImageManifest
  layers: {role: string; index?: number; mediaType: string; digest: string; size: number; annotations: Record<string, string>}[]
  totalSize: number
}

export default class Inspect extends BaseCommand {
  static summary = 'Show an artifact: its OVMS manifest and its OCI manifest (layers, sizes, media types, annotations).'

  static examples = ['<%= config.bin %> inspect example/busybox:1.0', '<%= config.bin %> inspect example/busybox@sha256:… --json', '<%= config.bin %> inspect localhost:5000/vm/busybox:1.0']

  static args = {
    ref: Args.string({description: 'Artifact reference (name:tag, name@sha256:…, a digest, or registry/repo:tag to read it from a registry).', required: true}),
  }

  static flags = {
    ...registryFlags,
  }

  async run(): Promise<InspectResult> {
    const {args, flags} = await this.parse(Inspect)
    const a = parseReference(args.ref).registry
      ? await (async () => {
          const remote = openRemote(args.ref, registryOptions(flags))
          return loadRemoteArtifact(remote.repository, remote.part, args.ref)
        })()
      : await loadArtifact(this.openStore(flags.store), args.ref)
    const layers = a.layers.map((l) => ({
      role: l.role,
      ...(l.index === undefined ? {} : {index: l.index}),
      mediaType: l.descriptor.mediaType,
      digest: l.descriptor.digest,
      size: l.descriptor.size,
      annotations: l.descriptor.annotations ?? {},
    }))
    const totalSize = a.descriptor.size + a.manifest.config.size + layers.reduce((s, l) => s + l.size, 0)
    if (!this.jsonEnabled()) {
      const o = a.ovms
      this.log(`Reference:  ${args.ref}`)
      this.log(`Digest:     ${a.descriptor.digest}`)
      this.log(`Name:       ${o.name}`)
      this.log(`Version:    ${o.version}`)
      if (o.metadata?.created) this.log(`Created:    ${o.metadata.created}`)
      if (o.kernel?.args) this.log(`Cmdline:    ${o.kernel.args}`)
      this.log(`Total size: ${humanBytes(totalSize)}`)
      this.log('')
      this.log(
        table(
          ['ROLE', 'MEDIA TYPE', 'DIGEST', 'SIZE', 'ANNOTATIONS'],
          layers.map((l) => [
            l.index === undefined ? l.role : `${l.role}[${l.index}]`,
            l.mediaType,
            l.digest,
            humanBytes(l.size),
            Object.entries(l.annotations)
              .map(([k, v]) => `${k}=${v}`)
              .join(' '),
          ]),
        ),
      )
      this.log('')
      this.log('OVMS manifest:')
      this.log(JSON.stringify(o, null, 2))
    }
    return {reference: args.ref, descriptor: a.descriptor, ovms: a.ovms, manifest: a.manifest, layers, totalSize}
  }
}
