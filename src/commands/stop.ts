import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {connectDaemon, socketFor} from '../contract/daemon.js'
import type {StopResponse} from '../contract/types.js'
import {defaultStoreRoot} from '../oci/layout.js'

export default class Stop extends BaseCommand {
  static summary = 'Stop an instance.'

  static examples = ['<%= config.bin %> stop 3f2a9c0d1e4b', '<%= config.bin %> stop 3f2a9c0d1e4b --grace 5000']

  static args = {
    id: Args.string({description: 'Instance id (see `ovm ps`).', required: true}),
  }

  static flags = {
    grace: Flags.integer({description: 'Ask the guest to power off and wait this many ms before ending it.', default: 0, min: 0}),
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  async run(): Promise<StopResponse & {instance_id: string}> {
    const {args, flags} = await this.parse(Stop)
    const storeRoot = flags.store ?? defaultStoreRoot()
    const {client} = await connectDaemon({storeRoot, socketPath: socketFor(storeRoot, flags.socket)})
    const r = await client.stop(args.id, flags.grace)
    if (!this.jsonEnabled()) this.log(r.message ?? `${args.id} stopped${r.exit ? ` (${r.exit.reason})` : ''}`)
    return {instance_id: args.id, ...r}
  }
}
