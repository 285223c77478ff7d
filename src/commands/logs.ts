import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {connectDaemon, socketFor} from '../contract/daemon.js'
import type {LogRecord} from '../contract/types.js'
import {defaultStoreRoot} from '../oci/layout.js'

export default class Logs extends BaseCommand {
  static summary = "Print an instance's console output (and, on stderr, its state changes)."

  static description = 'With --json, prints the NDJSON records of GET /logs/{id} as they are.'

  static examples = ['<%= config.bin %> logs 3f2a9c0d1e4b', '<%= config.bin %> logs -f 3f2a9c0d1e4b']

  static enableJsonFlag = false

  static args = {
    id: Args.string({description: 'Instance id (see `ovm ps`).', required: true}),
  }

  static flags = {
    follow: Flags.boolean({char: 'f', description: 'Keep printing until the instance stops.'}),
    json: Flags.boolean({description: 'Print the NDJSON records.'}),
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  /**
   * --json is this command's own flag (NDJSON records, not one object), so
   * oclif's --json handling is off; but an error under --json must still come
   * as the JSON error object every command prints (schemas/cli/error.json).
   */
  override jsonEnabled(): boolean {
    const json = this.argv.indexOf('--json')
    const rest = this.argv.indexOf('--')
    return json !== -1 && (rest === -1 || json < rest)
  }

  async run(): Promise<void> {
    const {args, flags} = await this.parse(Logs)
    const storeRoot = flags.store ?? defaultStoreRoot()
    const {client} = await connectDaemon({storeRoot, socketPath: socketFor(storeRoot, flags.socket)})
    const ac = new AbortController()
    const onSig = (): void => ac.abort()
    process.once('SIGINT', onSig)
    try {
      await client.logs(
        args.id,
        (r: LogRecord) => {
          if (flags.json) process.stdout.write(`${JSON.stringify(r)}\n`)
          else if (r.type === 'console') process.stdout.write(`${r.line}\n`)
          else if (r.type === 'state') process.stderr.write(`[${r.ts}] ${r.state}\n`)
          else process.stderr.write(`[${r.ts}] exit: ${r.status.reason}${r.status.detail ? ` (${r.status.detail})` : ''}\n`)
        },
        {follow: flags.follow === true, signal: ac.signal},
      )
    } finally {
      process.off('SIGINT', onSig)
    }
  }
}
