import {Args, Flags} from '@oclif/core'

import {loadArtifact} from '../artifact/load.js'
import {encodeCmdOverride} from '../build/initramfs.js'
import {BaseCommand} from '../cli/base-command.js'
import {connectDaemon, socketFor} from '../contract/daemon.js'
import {DEFAULT_CMDLINE} from '../contract/runtime.js'
import type {ContractClient} from '../contract/client.js'
import type {InstanceStatus} from '../contract/types.js'
import {AbortError, ExitCode, isOvmError} from '../errors/index.js'
import {defaultStoreRoot} from '../oci/layout.js'
import {parseReference} from '../oci/reference.js'
import {describeVerified, enforcePolicy, loadPolicy, policyPath} from '../sign/policy.js'
import {localSource} from '../sign/sign.js'

/** Ctrl-] detaches from the console, as in telnet and virsh. */
export const DETACH_BYTE = 0x1d

export default class Run extends BaseCommand {
  static summary = 'Start an artifact through the runtime daemon and attach to its console (Ctrl-] detaches).'

  static description =
    'An artifact with a RAM snapshot is restored instead of booted (--cold boots it). Without a running daemon, one is started in the background ' +
    '(its log: <store>/serve.log). With -d, prints the instance id and returns; `ovm logs -f ID` and `ovm stop ID` follow it.'

  static examples = [
    '<%= config.bin %> run example/busybox:1.0',
    '<%= config.bin %> run -d example/busybox:1.0 --memory 512M --cpus 2',
    '<%= config.bin %> run example/busybox:warm   # restores its RAM snapshot',
    '<%= config.bin %> run local/alpine:3.19 -- ls -l /   # replaces the image\'s cmd, as docker run does',
  ]

  /** Words after `--` replace the artifact's cmd (OVMS-Init reads them from the kernel command line). */
  static strict = false

  static args = {
    ref: Args.string({description: 'Artifact reference (local store; a registry reference is pulled first).', required: true}),
  }

  static flags = {
    detach: Flags.boolean({char: 'd', description: 'Print the instance id and return instead of attaching.'}),
    engine: Flags.string({description: 'Engine to run it on: auto picks kvm (ours) where /dev/kvm runs guests, else qemu.', options: ['auto', 'qemu', 'kvm'], default: 'auto'}),
    memory: Flags.string({char: 'm', description: 'Guest memory, e.g. 256M or 2G (default 256M; a snapshot keeps its own).'}),
    cpus: Flags.integer({description: 'vCPUs (default 1; a snapshot keeps its own).', min: 1, max: 64}),
    cold: Flags.boolean({description: 'Boot even when the artifact has a RAM snapshot.'}),
    socket: Flags.string({description: 'Daemon socket (default: $OVM_SOCKET, else <store>/ovm.sock).', env: 'OVM_SOCKET'}),
  }

  async run(): Promise<InstanceStatus> {
    const dash = this.argv.indexOf('--')
    const cmdArgs = dash >= 0 ? this.argv.slice(dash + 1) : undefined
    const {args, flags, argv} = await this.parse(Run)
    if (cmdArgs === undefined && argv.length > 1) {
      throw new AbortError({
        code: 'USAGE',
        message: `unexpected argument ${JSON.stringify(argv[1])}`,
        hint: 'Put the command after --, e.g. ovm run REF -- ls -l /.',
        exitCode: ExitCode.usage,
      })
    }
    const storeRoot = flags.store ?? defaultStoreRoot()
    const store = this.openStore(storeRoot)
    try {
      await store.resolve(args.ref)
    } catch (err) {
      if (!(isOvmError(err) && err.code === 'REF_NOT_FOUND' && parseReference(args.ref).registry)) throw err
      this.note(`${args.ref} is not in the local store; pulling it`)
      // Keep stdout for this command's own answer (the instance id with -d): pull's output goes to stderr.
      const write = process.stdout.write
      process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write
      try {
        await this.config.runCommand('pull', [args.ref, '--store', storeRoot])
      } finally {
        process.stdout.write = write
      }
    }
    // The trust policy decides before anything is unpacked or booted.
    const policy = await enforcePolicy(localSource(store), args.ref, await loadPolicy(policyPath(storeRoot)))
    if (policy.verified) this.note(`policy ${policy.rule}: ${describeVerified(policy.verified)}`)
    let cmdline: string | undefined
    if (cmdArgs && cmdArgs.length > 0) {
      const a = await loadArtifact(store, args.ref)
      cmdline = `${a.ovms.kernel?.args ?? DEFAULT_CMDLINE} ${encodeCmdOverride(cmdArgs)}`
      if (cmdline.length > 2000) {
        throw new AbortError({
          code: 'CMD_TOO_LONG',
          message: `the command after -- is too long for the kernel command line (${cmdline.length} of at most 2000 bytes)`,
          hint: 'Shorten the arguments, or put the command in a script inside the image.',
          exitCode: ExitCode.usage,
        })
      }
    }
    const {client, started} = await connectDaemon({storeRoot, socketPath: socketFor(storeRoot, flags.socket), autoStart: true})
    if (started) this.note(`started an ovm daemon (log: ${storeRoot}/serve.log)`)
    const st = await client.start({
      manifest: args.ref,
      overrides: {
        engine: flags.engine as 'auto' | 'qemu' | 'kvm',
        ...(flags.memory ? {memory: flags.memory} : {}),
        ...(flags.cpus ? {cpus: flags.cpus} : {}),
        // A RAM snapshot has its command running already: new arguments need a cold boot.
        ...(flags.cold || cmdline ? {cold_boot: true} : {}),
        ...(cmdline ? {cmdline} : {}),
      },
    })
    if (flags.detach || this.jsonEnabled()) {
      if (!this.jsonEnabled()) this.log(st.instance_id)
      return st
    }
    this.note(`${st.instance_id} ${st.metrics?.restored ? 'restored' : 'booted'} in ${st.metrics?.start_ms ?? '?'} ms; console attached, Ctrl-] detaches`)
    let how: 'detached' | 'ended'
    try {
      how = await attachConsole(client, st.instance_id)
    } catch (err) {
      // It ended before the console attached: show what it printed.
      if (!(isOvmError(err) && err.code === 'INSTANCE_NOT_RUNNING')) throw err
      await client.logs(st.instance_id, (r) => r.type === 'console' && process.stdout.write(`${r.line}\n`), {follow: false})
      how = 'ended'
    }
    if (how === 'detached') this.note(`\ndetached; the instance runs on (ovm logs -f ${st.instance_id}, ovm stop ${st.instance_id})`)
    const final = await client.status(st.instance_id)
    if (how === 'ended') this.note(`\ninstance ${st.instance_id} ${final.state}${final.exit ? ` (${final.exit.reason})` : ''}`)
    if (how === 'ended') {
      // OVMS-Init reports the workload's exit status on the console: `ovm run` exits with it, as `docker run` does.
      let workload: number | undefined
      await client.logs(st.instance_id, (r) => {
        const m = r.type === 'console' ? /^@@ovm-exit (\d+)/.exec(r.line) : null
        if (m) workload = Number(m[1])
      }, {follow: false})
      if (workload !== undefined && workload !== 0) process.exitCode = workload
    }
    if (final.state === 'error') {
      throw new AbortError({
        code: 'VM_CRASHED',
        message: `instance ${st.instance_id} ended with an error: ${final.error ?? final.exit?.detail ?? 'the VMM exited unexpectedly'}`,
        hint: `See \`ovm logs ${st.instance_id}\` and the daemon log.`,
        exitCode: ExitCode.engine,
      })
    }
    return final
  }
}

/** Pipe the terminal to the console until the guest ends or the user presses Ctrl-]. */
async function attachConsole(client: ContractClient, id: string): Promise<'detached' | 'ended'> {
  const sock = await client.attach(id)
  const stdin = process.stdin
  const raw = stdin.isTTY
  if (raw) stdin.setRawMode(true)
  return new Promise((resolve) => {
    let done = false
    const finish = (how: 'detached' | 'ended'): void => {
      if (done) return
      done = true
      stdin.off('data', onKey)
      if (raw) stdin.setRawMode(false)
      stdin.pause()
      // A pipe left open by the caller would keep the process alive.
      if (!stdin.isTTY) stdin.destroy()
      sock.destroy()
      resolve(how)
    }
    const onKey = (d: Buffer): void => {
      const i = d.indexOf(DETACH_BYTE)
      if (i >= 0) {
        if (i > 0) sock.write(d.subarray(0, i))
        finish('detached')
        return
      }
      sock.write(d)
    }
    sock.on('data', (d: Buffer) => process.stdout.write(d))
    sock.on('end', () => finish('ended'))
    sock.on('close', () => finish('ended'))
    sock.on('error', () => finish('ended'))
    stdin.on('data', onKey)
    stdin.on('end', () => undefined) // stdin closed (not a TTY): keep showing output until the guest ends
    stdin.resume()
  })
}
