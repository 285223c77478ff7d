import {Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {connectDaemon, socketFor} from '../contract/daemon.js'
import type {InstanceStatus} from '../contract/types.js'
import {defaultStoreRoot} from '../oci/layout.js'
import {table} from '../ui/format.js'

export function uptime(ms: number | undefined): string {
  if (ms === undefined) return '-'
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
}

export default class Ps extends BaseCommand {
  static summary = 'List the instances of the running daemon.'

  static examples = ['<%= config.bin %> ps', '<%= config.bin %> ps --json']

  static flags = {
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  async run(): Promise<{instances: InstanceStatus[]}> {
    const {flags} = await this.parse(Ps)
    const storeRoot = flags.store ?? defaultStoreRoot()
    const {client} = await connectDaemon({storeRoot, socketPath: socketFor(storeRoot, flags.socket)})
    const instances = await client.list()
    if (!this.jsonEnabled()) {
      this.log(
        table(
          ['ID', 'STATE', 'ARTIFACT', 'UPTIME', 'PID', 'ENGINE'],
          instances.map((i) => [
            i.instance_id,
            i.state,
            i.artifact?.reference ?? '-',
            uptime(i.uptime_ms),
            i.pid ? String(i.pid) : '-',
            `${i.metrics?.engine ?? '-'}${i.metrics?.accel ? `/${i.metrics.accel}` : ''}${i.metrics?.restored ? ' (restored)' : ''}`,
          ]),
        ),
      )
    }
    return {instances}
  }
}
