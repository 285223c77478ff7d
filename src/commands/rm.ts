import {Args, Flags} from '@oclif/core'

import type {PruneReport} from '../oci/layout.js'
import {humanBytes} from '../ui/format.js'
import {BaseCommand} from '../cli/base-command.js'

export default class Rm extends BaseCommand {
  static summary = 'Remove references from the local store (blobs stay until `ovm prune`).'

  static examples = ['<%= config.bin %> rm example/busybox:1.0', '<%= config.bin %> rm example/busybox:1.0 --prune']

  static strict = false

  static args = {
    ref: Args.string({description: 'Reference(s) to remove.', required: true}),
  }

  static flags = {
    prune: Flags.boolean({description: 'Also remove blobs nothing references any more.'}),
  }

  async run(): Promise<{removed: {reference: string; digest: string}[]; prune?: PruneReport}> {
    const {argv, flags} = await this.parse(Rm)
    const store = this.openStore(flags.store)
    const removed: {reference: string; digest: string}[] = []
    for (const ref of argv as string[]) {
      const desc = await store.untag(ref)
      removed.push({reference: ref, digest: desc.digest})
      if (!this.jsonEnabled()) this.log(`removed ${ref} (${desc.digest})`)
    }
    const prune = flags.prune ? await store.prune() : undefined
    if (prune && !this.jsonEnabled()) this.log(`pruned ${prune.removed.length} blobs, ${humanBytes(prune.bytes)}`)
    return {removed, ...(prune ? {prune} : {})}
  }
}
