import {Flags} from '@oclif/core'

import type {PruneReport} from '../oci/layout.js'
import {humanBytes} from '../ui/format.js'
import {BaseCommand} from '../cli/base-command.js'

export default class Prune extends BaseCommand {
  static summary = 'Delete blobs that no reference reaches, and ingest files left by dead processes.'

  static examples = ['<%= config.bin %> prune', '<%= config.bin %> prune --dry-run --json']

  static flags = {
    'dry-run': Flags.boolean({description: 'Report what would be removed, remove nothing.'}),
  }

  async run(): Promise<PruneReport & {dryRun: boolean}> {
    const {flags} = await this.parse(Prune)
    const report = await this.openStore(flags.store).prune({dryRun: flags['dry-run']})
    if (!this.jsonEnabled()) {
      const verb = flags['dry-run'] ? 'would remove' : 'removed'
      for (const r of report.removed) this.log(`${verb} ${r.digest} (${humanBytes(r.size)})`)
      this.log(`${verb} ${report.removed.length} blobs (${humanBytes(report.bytes)}), ${report.ingestRemoved} stale ingest files and ${report.cacheRemoved} unpacked cache entries; kept ${report.kept}`)
    }
    return {...report, dryRun: flags['dry-run'] === true}
  }
}
