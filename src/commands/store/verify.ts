import {Flags} from '@oclif/core'

import {ExitCode} from '../../errors/index.js'
import type {VerifyReport} from '../../oci/layout.js'
import {humanBytes} from '../../ui/format.js'
import {BaseCommand} from '../../cli/base-command.js'

export default class StoreVerify extends BaseCommand {
  static summary = 'Re-hash every blob in the local store; move corrupt ones to quarantine/.'

  static description = `Exits ${ExitCode.integrity} when a blob is corrupt or a tagged manifest is missing, 0 otherwise.`

  static examples = ['<%= config.bin %> store verify', '<%= config.bin %> store verify --no-quarantine --json']

  static flags = {
    quarantine: Flags.boolean({description: 'Move corrupt blobs to quarantine/ (default).', default: true, allowNo: true}),
  }

  async run(): Promise<VerifyReport & {store: string; ok: boolean}> {
    const {flags} = await this.parse(StoreVerify)
    const store = this.openStore(flags.store)
    const report = await store.verify({quarantine: flags.quarantine})
    const ok = report.bad.length === 0 && report.missing.length === 0
    if (!this.jsonEnabled()) {
      for (const b of report.bad) this.log(`CORRUPT ${b.digest}: ${b.reason}${b.quarantinedTo ? ` (moved to ${b.quarantinedTo})` : ''}`)
      for (const m of report.missing) this.log(`MISSING ${m.digest}${m.reference ? ` (${m.reference})` : ''}`)
      this.log(
        `${ok ? 'ok' : 'FAILED'}: ${report.checked} blobs, ${humanBytes(report.bytes)} checked; ${report.bad.length} corrupt, ${report.missing.length} missing` +
          (report.staleIngest > 0 ? `; ${report.staleIngest} stale ingest files (ovm prune removes them)` : ''),
      )
    }
    if (!ok) process.exitCode = ExitCode.integrity
    return {store: store.root, ok, ...report}
  }
}
