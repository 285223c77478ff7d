import {Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {serve, socketFor} from '../contract/daemon.js'
import {defaultStoreRoot} from '../oci/layout.js'

export default class Serve extends BaseCommand {
  static summary = 'Run the runtime daemon: the OVMS contract (HTTP over a UNIX socket, mode 0600) for the local store.'

  static description =
    'Serves POST /start /stop /snapshot /inject and GET /status/{id} /logs/{id} /instances (schemas/contract.openapi.json). ' +
    'Logs one NDJSON record per request on stderr. SIGINT or SIGTERM stops every instance and removes the socket. ' +
    'The QEMU engine runs TCG unless OVM_QEMU_ACCEL=kvm (see rfc/runtime.md).'

  static examples = ['<%= config.bin %> serve', '<%= config.bin %> serve --socket /run/user/1000/ovm.sock']

  static flags = {
    socket: Flags.string({description: 'Socket path (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  async run(): Promise<{socket: string}> {
    const {flags} = await this.parse(Serve)
    const storeRoot = flags.store ?? defaultStoreRoot()
    const socket = socketFor(storeRoot, flags.socket)
    await serve({storeRoot, socketPath: socket, onReady: () => this.note(`ovm serve: listening on ${socket} (store ${storeRoot}, pid ${process.pid})`)})
    return {socket}
  }
}
