/** Running the contract server as a daemon, and finding (or starting) one. */
import {spawn} from 'node:child_process'
import {mkdirSync, openSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {AbortError, ExitCode} from '../errors/index.js'
import {LayoutStore} from '../oci/layout.js'
import {ContractClient} from './client.js'
import {Runtime} from './runtime.js'
import {ContractServer, socketAnswers} from './server.js'

/** The socket of the daemon serving `storeRoot`: `$OVM_SOCKET`, else `<store>/ovm.sock`. */
export function socketFor(storeRoot: string, explicit?: string): string {
  return explicit ?? process.env.OVM_SOCKET ?? join(storeRoot, 'ovm.sock')
}

/** Serve until SIGINT/SIGTERM; then stop every instance and remove the socket. */
export async function serve(opts: {storeRoot: string; socketPath: string; onReady?: () => void; log?: (line: string) => void}): Promise<void> {
  const runtime = new Runtime({store: new LayoutStore(opts.storeRoot)})
  const server = new ContractServer({runtime, socketPath: opts.socketPath, log: opts.log})
  await server.listen()
  opts.onReady?.()
  await new Promise<void>((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done)
      process.off('SIGTERM', done)
      resolve()
    }
    process.on('SIGINT', done)
    process.on('SIGTERM', done)
  })
  await runtime.shutdown()
  await server.close()
}

/**
 * A client of the running daemon; when none answers and `autoStart`, start
 * `ovm serve` in the background (log: `<store>/serve.log`) and wait for it.
 */
export async function connectDaemon(opts: {storeRoot: string; socketPath: string; autoStart?: boolean}): Promise<{client: ContractClient; started: boolean}> {
  const client = new ContractClient(opts.socketPath)
  if (await socketAnswers(opts.socketPath)) return {client, started: false}
  if (!opts.autoStart) {
    throw new AbortError({
      code: 'DAEMON_NOT_RUNNING',
      message: `no ovm daemon is running at ${opts.socketPath}`,
      hint: 'Start one with `ovm serve` (or `ovm run` starts one itself).',
      exitCode: ExitCode.notFound,
    })
  }
  mkdirSync(dirname(opts.socketPath), {recursive: true, mode: 0o700})
  mkdirSync(opts.storeRoot, {recursive: true})
  const logPath = join(opts.storeRoot, 'serve.log')
  const out = openSync(logPath, 'a', 0o600)
  const entry = process.argv[1] as string
  const child = spawn(process.execPath, [...process.execArgv, entry, 'serve', '--socket', opts.socketPath, '--store', opts.storeRoot], {
    detached: true,
    stdio: ['ignore', out, out],
    env: process.env,
  })
  child.unref()
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    if (await socketAnswers(opts.socketPath, 200)) return {client, started: true}
    if (child.exitCode !== null) break
    await sleep(50)
  }
  throw new AbortError({
    code: 'DAEMON_START_FAILED',
    message: `could not start an ovm daemon at ${opts.socketPath}`,
    hint: `See ${logPath}, or run \`ovm serve\` yourself.`,
    exitCode: ExitCode.engine,
  })
}
