import {createHash} from 'node:crypto'
import {readFile} from 'node:fs/promises'

/** SLSA provenance v1 (https://slsa.dev/provenance/v1) for an ovm build. */
export const SLSA_PROVENANCE_V1 = 'https://slsa.dev/provenance/v1'
export const OVM_BUILD_TYPE = 'https://ovm.dev/build/ovmfile/v1'

export interface ProvenanceInput {
  ovmfilePath: string
  buildArgs: Record<string, string>
  tags: string[]
  base: {description: string; key: string}
  /** Where the kernel came from: a file:// URI, a kernel artifact's reference, or the base artifact's. */
  kernel: {uri: string; digest: string}
  engine: {name: string; version: string}
  steps: {line: number; text: string; cacheKey: string; layer?: string}[]
  startedOn: Date
  finishedOn: Date
  builderVersion: string
}

function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex')
}

export async function buildProvenance(p: ProvenanceInput): Promise<Record<string, unknown>> {
  const ovmfile = await readFile(p.ovmfilePath)
  const baseDigest = p.base.key.startsWith('sha256:') ? {sha256: p.base.key.slice(7)} : undefined
  return {
    buildDefinition: {
      buildType: OVM_BUILD_TYPE,
      externalParameters: {ovmfile: {path: p.ovmfilePath, digest: {sha256: sha256Hex(ovmfile)}}, buildArgs: p.buildArgs, tags: p.tags},
      internalParameters: {engine: p.engine},
      resolvedDependencies: [
        {name: 'base', uri: p.base.description, ...(baseDigest ? {digest: baseDigest} : {annotations: {key: p.base.key}})},
        {name: 'kernel', uri: p.kernel.uri, digest: {sha256: p.kernel.digest.replace(/^sha256:/, '')}},
      ],
    },
    runDetails: {
      builder: {id: `https://ovm.dev/ovm@${p.builderVersion}`},
      metadata: {startedOn: p.startedOn.toISOString(), finishedOn: p.finishedOn.toISOString()},
      byproducts: p.steps.map((s) => ({
        name: `Ovmfile:${s.line}: ${s.text}`,
        annotations: {cacheKey: s.cacheKey, ...(s.layer ? {layer: s.layer} : {})},
      })),
    },
  }
}
