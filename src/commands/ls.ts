import {loadArtifact} from '../artifact/load.js'
import {isOvmError} from '../errors/index.js'
import {humanBytes, shortDigest, table} from '../ui/format.js'
import {BaseCommand} from '../cli/base-command.js'

export interface LsEntry {
  reference: string
  digest: string
  mediaType: string
  name?: string
  version?: string
  created?: string
  size?: number
  layers?: number
  ramSnapshot?: boolean
  error?: string
}

export default class Ls extends BaseCommand {
  static summary = 'List the artifacts in the local store.'

  static examples = ['<%= config.bin %> ls', '<%= config.bin %> ls --json']

  async run(): Promise<{store: string; artifacts: LsEntry[]}> {
    const {flags} = await this.parse(Ls)
    const store = this.openStore(flags.store)
    const entries: LsEntry[] = []
    for (const {reference, descriptor} of await store.list()) {
      const e: LsEntry = {reference, digest: descriptor.digest, mediaType: descriptor.artifactType ?? descriptor.mediaType}
      try {
        const a = await loadArtifact(store, reference)
        e.name = a.ovms.name
        e.version = a.ovms.version
        e.created = a.ovms.metadata?.created
        e.size = descriptor.size + a.manifest.config.size + a.manifest.layers.reduce((s, l) => s + l.size, 0)
        e.layers = a.manifest.layers.length
        e.ramSnapshot = Boolean(a.ovms.ramSnapshot)
      } catch (err) {
        e.error = isOvmError(err) ? err.code : String(err)
      }
      entries.push(e)
    }
    if (!this.jsonEnabled()) {
      if (entries.length === 0) {
        this.log(`No artifacts in ${store.root}. Make one with \`ovm pack\`.`)
      } else {
        this.log(
          table(
            ['REFERENCE', 'DIGEST', 'SIZE', 'LAYERS', 'SNAPSHOT', 'CREATED'],
            entries.map((e) => [
              e.reference,
              shortDigest(e.digest),
              e.size === undefined ? `(${e.error ?? '?'})` : humanBytes(e.size),
              String(e.layers ?? ''),
              e.ramSnapshot ? 'yes' : '',
              e.created ?? '',
            ]),
          ),
        )
      }
    }
    return {store: store.root, artifacts: entries}
  }
}
