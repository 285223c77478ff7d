import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import type {Descriptor} from '../oci/descriptor.js'
import {openRemote} from '../oci/remote/client.js'
import {type ReferrerNode, listReferrers, localReferrers, referrersTree} from '../oci/remote/referrers.js'
import {parseReference} from '../oci/reference.js'
import {humanBytes} from '../ui/format.js'
import {registryOptions} from '../cli/registry.js'

export interface DiscoverResult {
  reference: string
  descriptor: Descriptor
  source: 'registry' | 'local'
  referrers: ReferrerNode[]
}

export default class Discover extends BaseCommand {
  static summary = 'List the referrers of an artifact (signatures, attestations, SBOMs) as a tree.'

  static description =
    'A reference with a registry is looked up there (the referrers API where the registry has it, else the sha256-<hex> tag schema); ' +
    'without one, or with --local, in the local store.'

  static examples = [
    '<%= config.bin %> discover localhost:5000/example/busybox:1.0',
    '<%= config.bin %> discover localhost:5000/example/busybox:1.0 --artifact-type application/vnd.dev.sigstore.bundle.v0.3+json --json',
  ]

  static args = {
    ref: Args.string({description: 'Artifact reference.', required: true}),
  }

  static flags = {
    'artifact-type': Flags.string({description: 'Only referrers of this artifact type (at the first level).'}),
    depth: Flags.integer({description: 'Levels of referrers of referrers to show.', default: 4, min: 1}),
    local: Flags.boolean({description: 'Look in the local store even when the reference names a registry.', default: false}),
    'plain-http': Flags.boolean({description: 'Use plain HTTP, not TLS (always on for localhost and 127.0.0.1).', default: false}),
    'registry-config': Flags.string({description: 'Credentials file.', env: 'OVM_REGISTRY_CONFIG'}),
  }

  async run(): Promise<DiscoverResult> {
    const {args, flags} = await this.parse(Discover)
    const remote = !flags.local && parseReference(args.ref).registry !== undefined
    let descriptor: Descriptor
    let list: (d: string) => Promise<Descriptor[]>
    if (remote) {
      const r = openRemote(args.ref, registryOptions(flags))
      descriptor = await r.repository.resolve(r.part)
      list = (d) => listReferrers(r.repository, d)
    } else {
      const store = this.openStore(flags.store)
      descriptor = await store.resolve(args.ref)
      list = (d) => localReferrers(store, d)
    }
    const referrers = await referrersTree(list, descriptor.digest, {artifactType: flags['artifact-type'], depth: flags.depth})
    if (!this.jsonEnabled()) {
      this.log(`${args.ref.replace(/@sha256:[a-f0-9]{64}$/, '')}@${descriptor.digest}`)
      if (referrers.length === 0) this.log('└── (no referrers)')
      for (const line of renderTree(referrers, '')) this.log(line)
    }
    return {reference: args.ref, descriptor, source: remote ? 'registry' : 'local', referrers}
  }
}

/** oras-style tree: artifact types grouping digests. */
export function renderTree(nodes: ReferrerNode[], indent: string): string[] {
  const out: string[] = []
  const byType = new Map<string, ReferrerNode[]>()
  for (const n of nodes) {
    const t = n.descriptor.artifactType ?? '(no artifact type)'
    byType.set(t, [...(byType.get(t) ?? []), n])
  }
  const types = [...byType.keys()].sort()
  types.forEach((t, i) => {
    const lastType = i === types.length - 1
    out.push(`${indent}${lastType ? '└── ' : '├── '}${t}`)
    const sub = indent + (lastType ? '    ' : '│   ')
    const group = byType.get(t) ?? []
    group.forEach((n, j) => {
      const last = j === group.length - 1
      out.push(`${sub}${last ? '└── ' : '├── '}${n.descriptor.digest}  ${humanBytes(n.descriptor.size)}${describeReferrer(n.descriptor.annotations)}`)
      out.push(...renderTree(n.referrers, sub + (last ? '    ' : '│   ')))
    })
  })
  return out
}

/** What a Sigstore bundle holds, from the annotations cosign and ovm write: a signature or an attestation. */
function describeReferrer(annotations: Record<string, string> | undefined): string {
  const predicate = annotations?.['dev.sigstore.bundle.predicateType']
  if (!predicate) return ''
  return predicate === 'https://sigstore.dev/cosign/sign/v1' ? '  signature' : `  attestation ${predicate}`
}
