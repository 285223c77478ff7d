import {readFile} from 'node:fs/promises'
import {gzipSync} from 'node:zlib'

import {type CpioEntry, S_IFCHR, S_IFDIR, S_IFREG, cpioNewc} from '../disk/cpio.js'
import {builtinModules, indexModules, resolveModules} from '../disk/kmod.js'
import type {BootstrapConfig} from '../artifact/manifest.js'
import {AbortError, ExitCode, fileError} from '../errors/index.js'
import {shellQuote} from '../util/shell.js'

/** Modules the builder needs from a stock distro kernel: virtio-pci, virtio-blk, ext4 (+ crc32c for its checksums). */
export const BUILDER_MODULES = ['virtio_pci', 'virtio_blk', 'crc32c_generic', 'libcrc32c', 'ext4']

/** Where Debian's busybox-static puts its binary. */
export const DEFAULT_BUSYBOX = '/bin/busybox'

/**
 * The builder's agent: runs as /init's child, talks to the host over COM2
 * (/dev/ttyS1) in lines, streams step output to the console (/dev/ttyS0).
 *
 *   guest → host:  READY | EXIT <n> <status> | FROZEN | THAWED | ERROR <text>
 *   host → guest:  STEP <n> | FREEZE | THAW | POWEROFF
 *
 * Step n's script is /ctx/steps/<n>/run.sh on the context disk (/dev/vdb, a tar).
 */
export const AGENT_SCRIPT = `#!/bin/sh
# ovm builder agent
T=/mnt/target
say() { echo "$*" >&3; }
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say READY
while read -r cmd arg <&3; do
  case "$cmd" in
    STEP)
      echo "@@ovm-step-begin $arg"
      sh /ctx/steps/$arg/run.sh </dev/null 2>&1
      rc=$?
      sync
      echo "@@ovm-step-end $arg $rc"
      say "EXIT $arg $rc" ;;
    FREEZE) sync; fsfreeze --freeze $T && say FROZEN || say "ERROR fsfreeze failed" ;;
    THAW) fsfreeze --unfreeze $T && say THAWED || say "ERROR unfreeze failed" ;;
    POWEROFF)
      for m in $T/.ovm/busybox $T/dev $T/proc $T/sys; do umount $m 2>/dev/null; done
      rm -rf $T/.ovm 2>/dev/null
      sync; umount $T; sync
      say BYE
      poweroff -f ;;
    *) say "ERROR unknown command $cmd" ;;
  esac
done
`

/** The start of every /init ovm writes: busybox applets, /proc /sys /dev, output to the console. */
const INIT_PREAMBLE = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
`

/** /init: mount the basics, load modules, mount the target disk and context, start the agent. */
export function initScript(modules: string[]): string {
  return `${INIT_PREAMBLE}echo "@@ovm-builder-up"
${modules.map((m) => `insmod /lib/modules/${m}.ko || echo "@@ovm-error insmod ${m}"`).join('\n')}
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ -b /dev/vda ] && [ -b /dev/vdb ] && break; sleep 0.1; done
mkdir -p /mnt/target /ctx
mount -t ext4 -o noatime /dev/vda /mnt/target || { echo "@@ovm-error mount target"; poweroff -f; }
tar -xf /dev/vdb -C /ctx || { echo "@@ovm-error context"; poweroff -f; }
exec sh /agent.sh
`
}


/**
 * /init of the OVMS-Init profile (rfc/ovms-v0.1.md §7): mount the root disk,
 * set up /proc /sys /dev, write env to /etc/environment, run entrypoint + cmd
 * in a chroot at workdir, print the exit status and power off. Without a
 * command, hand over to the disk's own /sbin/init when it has one.
 */
export function ovmsInitScript(modules: string[], cfg: BootstrapConfig): string {
  const argv = [...(cfg.entrypoint ?? []), ...(cfg.cmd ?? [])]
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', ...(cfg.env ?? [])]
  const w = cfg.workdir ?? '/'
  return `${INIT_PREAMBLE}${modules.map((m) => `insmod /lib/modules/${m}.ko 2>/dev/null`).join('\n')}
for i in $(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "@@ovm-error cannot mount the root disk /dev/vda"; poweroff -f; }
${argv.length === 0 ? `if [ -x /newroot/sbin/init ]; then umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null; exec switch_root /newroot /sbin/init; fi
echo "@@ovm-exit 0 (no entrypoint, cmd or /sbin/init)"
sync; poweroff -f` : `mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/etc /newroot/.ovm
mount -t proc proc /newroot/proc; mount -t sysfs sysfs /newroot/sys; mount -o bind /dev /newroot/dev
touch /newroot/.ovm/busybox; mount -o bind /bin/busybox /newroot/.ovm/busybox
printf '%s\\n' ${(cfg.env ?? []).map(shellQuote).join(' ') || "''"} > /newroot/etc/environment
hostname ovm
# The probe agent on COM2: "PROBE <base64 command>" runs it in the root file system, answers "PROBED <status>".
if [ -c /dev/ttyS1 ]; then
  (
    exec 3<>/dev/ttyS1
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    while read -r cmd arg <&3; do
      if [ "$cmd" = PROBE ]; then
        c=$(echo "$arg" | base64 -d)
        env -i ${env.map(shellQuote).join(' ')} chroot /newroot /.ovm/busybox sh -c "$c" >/dev/null 2>&1 </dev/null
        echo "PROBED $?" >&3
      fi
    done
  ) &
fi
echo "@@ovm-start"
env -i ${env.map(shellQuote).join(' ')} chroot /newroot /.ovm/busybox sh -c ${shellQuote(`mkdir -p ${shellQuote(w)} && cd ${shellQuote(w)} && exec ${argv.map(shellQuote).join(' ')}`)}
rc=$?
echo "@@ovm-exit $rc"
umount /newroot/.ovm/busybox /newroot/dev /newroot/sys /newroot/proc 2>/dev/null
sync; umount /newroot; sync
poweroff -f`}
`
}

/** The boot initramfs of a built artifact (OVMS-Init profile). */
export async function ovmsInitramfs(opts: {modulesDir: string; bootstrap: BootstrapConfig; busybox?: string}): Promise<BuilderInitramfs> {
  return assembleInitramfs(opts, (mods) => [{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(ovmsInitScript(mods, opts.bootstrap))}])
}

export interface BuilderInitramfs {
  bytes: Buffer
  modules: string[]
}

/** Assemble the builder's initramfs (gzip'd newc cpio) from busybox-static and the kernel's modules. */
export async function buildInitramfs(opts: {modulesDir: string; busybox?: string}): Promise<BuilderInitramfs> {
  return assembleInitramfs(opts, (mods) => [
    {name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(initScript(mods))},
    {name: 'agent.sh', mode: S_IFREG | 0o755, data: Buffer.from(AGENT_SCRIPT)},
  ])
}

async function assembleInitramfs(opts: {modulesDir: string; busybox?: string}, scripts: (modules: string[]) => CpioEntry[]): Promise<BuilderInitramfs> {
  const busyboxPath = opts.busybox ?? DEFAULT_BUSYBOX
  let busybox: Buffer
  try {
    busybox = await readFile(busyboxPath)
  } catch (err) {
    throw fileError(err, busyboxPath, 'busybox (install Debian\'s busybox-static)')
  }
  const index = await indexModules(opts.modulesDir)
  const {order, missing} = await resolveModules(index, BUILDER_MODULES, await builtinModules(opts.modulesDir))
  const needed = missing.filter((m) => m !== 'libcrc32c' && m !== 'crc32c_generic')
  if (needed.length > 0) {
    throw new AbortError({
      code: 'MODULES_MISSING',
      message: `the kernel's modules folder ${opts.modulesDir} lacks ${needed.join(', ')}, which the builder needs`,
      hint: 'Give the modules that match the kernel (KERNEL PATH MODULES /lib/modules/VERSION), or a kernel with these drivers built in.',
      exitCode: ExitCode.invalid,
      ref: opts.modulesDir,
    })
  }
  const dir = (name: string): CpioEntry => ({name, mode: S_IFDIR | 0o755})
  const entries: CpioEntry[] = [
    dir('bin'),
    dir('dev'),
    {name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1},
    dir('proc'),
    dir('sys'),
    dir('mnt'),
    dir('lib'),
    dir('lib/modules'),
    {name: 'bin/busybox', mode: S_IFREG | 0o755, data: busybox},
    ...scripts(order.map((m) => m.name)),
  ]
  for (const m of order) entries.push({name: `lib/modules/${m.name}.ko`, mode: S_IFREG | 0o644, data: await readFile(m.path)})
  return {bytes: gzipSync(cpioNewc(entries), {level: 6}), modules: order.map((m) => m.name)}
}
