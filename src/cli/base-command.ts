import {Command, Errors, Flags, type Interfaces} from '@oclif/core'

import {AbortError, BugError, ExitCode, OvmError, isOvmError, renderError} from '../errors/index.js'
import {LayoutStore, defaultStoreRoot} from '../oci/layout.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>

/**
 * The base of every ovm command: `--json`, `--debug`, `--store`, and the one
 * place where errors become output and an exit code.
 */
export abstract class BaseCommand extends Command {
  static enableJsonFlag = true

  static baseFlags = {
    debug: Flags.boolean({description: 'Show stack traces on errors.', helpGroup: 'GLOBAL'}),
    store: Flags.string({
      description: 'Local store folder (default: $OVM_HOME, else $XDG_DATA_HOME/ovm, else ~/.local/share/ovm).',
      helpGroup: 'GLOBAL',
      env: 'OVM_HOME',
    }),
  }

  protected openStore(path?: string): LayoutStore {
    return new LayoutStore(path ?? defaultStoreRoot())
  }

  /** Human output goes to stdout unless --json; progress and notes go to stderr. */
  protected note(msg: string): void {
    if (!this.jsonEnabled()) process.stderr.write(`${msg}\n`)
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<never> {
    const ovmErr = toOvmError(err)
    const debug = this.argv.includes('--debug') || process.env.OVM_DEBUG === '1'
    if (this.jsonEnabled()) {
      process.stdout.write(`${JSON.stringify({error: ovmErr.toJSON()}, null, 2)}\n`)
    } else {
      process.stderr.write(`${renderError(ovmErr, {debug})}\n`)
    }
    throw Object.assign(new Error(ovmErr.message), {skipOclifErrorHandling: true, oclif: {exit: ovmErr.exitCode}})
  }
}

function toOvmError(err: unknown): OvmError {
  if (isOvmError(err)) return err
  if (err instanceof Errors.CLIError || (err as {oclif?: unknown})?.oclif) {
    const e = err as Errors.CLIError
    return new AbortError({
      code: 'USAGE',
      message: e.message.replace(/\n\s*See more help with --help$/, ''),
      hint: 'Run the command with --help to see its arguments and flags.',
      exitCode: ExitCode.usage,
      cause: err,
    })
  }
  return new BugError((err as Error)?.message ?? String(err), err)
}
