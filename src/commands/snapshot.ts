import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {connectDaemon, socketFor} from '../contract/daemon.js'
import type {SnapshotResponse} from '../contract/types.js'
import {defaultStoreRoot} from '../oci/layout.js'
import {humanBytes} from '../ui/format.js'

export default class Snapshot extends BaseCommand {
  static summary = 'Take a RAM snapshot of a running instance and publish it to the local store as an artifact.'

  static description =
    'The guest is paused while its RAM, CPU and device state and its disk overlay are captured at the same instant, then resumes. ' +
    "The new artifact's subject is the artifact the instance started from; `ovm run` of it restores instead of booting."

  static examples = ['<%= config.bin %> snapshot 3f2a9c0d1e4b -t example/app:warm']

  static args = {
    id: Args.string({description: 'Instance id (see `ovm ps`).', required: true}),
  }

  static flags = {
    tag: Flags.string({char: 't', description: 'Reference to publish the snapshot under (name:tag).'}),
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  async run(): Promise<SnapshotResponse> {
    const {args, flags} = await this.parse(Snapshot)
    const storeRoot = flags.store ?? defaultStoreRoot()
    const {client} = await connectDaemon({storeRoot, socketPath: socketFor(storeRoot, flags.socket)})
    const r = await client.snapshot(args.id, flags.tag)
    if (!this.jsonEnabled()) {
      this.note(`paused ${r.paused_ms ?? '?'} ms, ${humanBytes(r.size ?? 0)} of new layers`)
      this.log(`${r.snapshot_ref}${r.snapshot_ref === r.digest ? '' : `@${r.digest}`}`)
    }
    return r
  }
}
