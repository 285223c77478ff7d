import {readFile} from 'node:fs/promises'
import {gzipSync} from 'node:zlib'

import {type CpioEntry, S_IFCHR, S_IFDIR, S_IFREG, cpioNewc} from '../disk/cpio.js'
import {resolveModulesIn} from '../disk/kmod.js'
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


/** How OVMS-Init mounts the root disk and names the machine (rfc/convert.md §4). */
export interface OvmsInitOptions {
  /** The root disk's file system: ext4 (read-write) or a read-only erofs/squashfs under a tmpfs overlay. */
  rootFs?: 'ext4' | 'erofs' | 'squashfs'
  /** The guest's hostname (`ovm.hostname=` on the kernel command line overrides it); default ovm. */
  hostname?: string
}

/** Kernel modules OVMS-Init needs beyond the builder's for a root file system type. */
export function rootFsModules(rootFs: OvmsInitOptions['rootFs']): string[] {
  return rootFs === 'erofs' ? ['erofs', 'overlay'] : rootFs === 'squashfs' ? ['squashfs', 'overlay'] : []
}

/** A hostname as RFC 1123 allows: letters, digits and inner dashes, at most 63 characters. */
export function safeHostname(name: string): string {
  const h = name.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63).replace(/-+$/, '')
  return h || 'ovm'
}

/** One `ovm.cmd=` word: each argument as base64 of "x" + arg + "x" (so empty args and trailing newlines survive), joined by commas. */
export function encodeCmdOverride(args: string[]): string {
  return `ovm.cmd=${args.map((a) => Buffer.from(`x${a}x`).toString('base64')).join(',')}`
}

/**
 * /init of the OVMS-Init profile (rfc/ovms-v0.1.md §7, rfc/convert.md §4):
 * mount the root disk, set up /proc /sys /dev and the hostname, write env to
 * /etc/environment, and run entrypoint + cmd in a chroot at workdir as the
 * config's user; print the exit status and power off. `ovm.cmd=` on the
 * kernel command line replaces cmd (`ovm run REF -- ARGS`). Without a
 * command, hand over to the disk's own /sbin/init when it has one.
 */
export function ovmsInitScript(modules: string[], cfg: BootstrapConfig, opts: OvmsInitOptions = {}): string {
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...(cfg.env ?? [])]
  const w = cfg.workdir ?? '/'
  const rootFs = opts.rootFs ?? 'ext4'
  const q = (xs: string[] | undefined): string => (xs ?? []).map(shellQuote).join(' ')
  const mountRoot =
    rootFs === 'ext4'
      ? `mount -t ext4 /dev/vda /newroot || { echo "@@ovm-error cannot mount the root disk /dev/vda"; poweroff -f; }`
      : `mkdir -p /lower /rw
mount -t ${rootFs} -o ro /dev/vda /lower || { echo "@@ovm-error cannot mount the ${rootFs} root disk /dev/vda"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || { echo "@@ovm-error cannot mount the overlay on the root disk"; poweroff -f; }`
  // The command reaches the chroot's shell as arguments: no nested quoting. As another user, busybox's
  // start-stop-daemon (no -b: it execs in place) sets the groups, gid and uid.
  const inner =
    'w=$1; shift; mkdir -p "$w" 2>/dev/null; cd "$w" || { echo "@@ovm-error cannot enter the workdir $w"; exit 125; }; ' +
    'if [ -n "$OVM_UGID" ]; then u=$OVM_UGID; unset OVM_UGID; p=$1; shift; exec /.ovm/busybox start-stop-daemon -S -q -n ovm-no-such-process -c "$u" -a "$p" -- "$@"; fi; unset OVM_UGID; exec "$@"'
  return `${INIT_PREAMBLE}${modules.map((m) => `insmod /lib/modules/${m}.ko 2>/dev/null`).join('\n')}
for i in $(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /newroot
${mountRoot}
set -- ${q([...(cfg.entrypoint ?? []), ...(cfg.cmd ?? [])])}
HN=${shellQuote(opts.hostname ?? 'ovm')}
for word in $(cat /proc/cmdline); do
  case "$word" in
    ovm.cmd=*) OVM_CMD=\${word#ovm.cmd=} ;;
    ovm.hostname=*) HN=\${word#ovm.hostname=} ;;
  esac
done
if [ -n "$OVM_CMD" ]; then
  set -- ${q(cfg.entrypoint)}
  IFS=,
  for a in $OVM_CMD; do
    v=$(echo "$a" | base64 -d); v=\${v#x}; set -- "$@" "\${v%x}"
  done
  unset IFS
fi
hostname "$HN"
if [ $# -eq 0 ]; then
  if [ -x /newroot/sbin/init ]; then umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null; exec switch_root /newroot /sbin/init; fi
  echo "@@ovm-exit 0 (no entrypoint, cmd or /sbin/init)"
  sync; poweroff -f
fi
mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/etc /newroot/.ovm
mount -t proc proc /newroot/proc; mount -t sysfs sysfs /newroot/sys; mount -o bind /dev /newroot/dev
touch /newroot/.ovm/busybox; mount -o bind /bin/busybox /newroot/.ovm/busybox
printf '%s\\n' ${q(cfg.env) || "''"} > /newroot/etc/environment
# The user (OCI form: name, uid, name:group, uid:gid), looked up in the image's /etc/passwd and /etc/group.
U=${shellQuote(cfg.user ?? '')}
uid=0; gid=0; home=/root
if [ -n "$U" ]; then
  u=\${U%%:*}; g=; case "$U" in *:*) g=\${U#*:} ;; esac
  case "$u" in
    *[!0-9]*) pw=$(awk -F: -v u="$u" '$1 == u { print $3 ":" $4 ":" $6; exit }' /newroot/etc/passwd 2>/dev/null) ;;
    *) pw=$(awk -F: -v u="$u" '$3 == u { print $3 ":" $4 ":" $6; exit }' /newroot/etc/passwd 2>/dev/null) ;;
  esac
  if [ -n "$pw" ]; then
    uid=\${pw%%:*}; r=\${pw#*:}; gid=\${r%%:*}; home=\${r#*:}
  else
    case "$u" in
      ''|*[!0-9]*) echo "@@ovm-error user $u is not in the image's /etc/passwd"; echo "@@ovm-exit 126"; sync; poweroff -f ;;
    esac
    uid=$u; gid=0; home=/
  fi
  if [ -n "$g" ]; then
    case "$g" in
      *[!0-9]*) gid=$(awk -F: -v g="$g" '$1 == g { print $3; exit }' /newroot/etc/group 2>/dev/null)
        [ -n "$gid" ] || { echo "@@ovm-error group $g is not in the image's /etc/group"; echo "@@ovm-exit 126"; sync; poweroff -f; } ;;
      *) gid=$g ;;
    esac
  fi
fi
OVM_UGID=
if [ "$uid" != 0 ] || [ "$gid" != 0 ]; then
  OVM_UGID=$uid:$gid
  # start-stop-daemon needs a passwd entry for the uid: add one for this boot only when the image has none.
  if ! awk -F: -v u="$uid" '$3 == u { f = 1 } END { exit !f }' /newroot/etc/passwd 2>/dev/null; then
    mkdir -p /tmp; { cat /newroot/etc/passwd 2>/dev/null; echo "ovm-$uid:x:$uid:$gid::$home:/bin/false"; } > /tmp/passwd
    [ -e /newroot/etc/passwd ] || touch /newroot/etc/passwd
    mount -o bind /tmp/passwd /newroot/etc/passwd
  fi
fi
# The probe agent on COM2: "PROBE <base64 command>" runs it in the root file system, answers "PROBED <status>".
if [ -c /dev/ttyS1 ]; then
  (
    exec 3<>/dev/ttyS1
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    while read -r cmd arg <&3; do
      if [ "$cmd" = PROBE ]; then
        c=$(echo "$arg" | base64 -d)
        env -i HOME=/root ${q(env)} chroot /newroot /.ovm/busybox sh -c "$c" >/dev/null 2>&1 </dev/null
        echo "PROBED $?" >&3
      fi
    done
  ) &
fi
echo "@@ovm-start"
env -i HOME="$home" ${q(env)} OVM_UGID="$OVM_UGID" chroot /newroot /.ovm/busybox sh -c ${shellQuote(inner)} ovm-init ${shellQuote(w)} "$@"
rc=$?
echo "@@ovm-exit $rc"
umount /newroot/etc/passwd /newroot/.ovm/busybox /newroot/dev /newroot/sys /newroot/proc 2>/dev/null
sync; umount /newroot; sync
poweroff -f
`
}

/** The boot initramfs of a built artifact (OVMS-Init profile). */
export async function ovmsInitramfs(opts: InitramfsOptions & {bootstrap: BootstrapConfig} & OvmsInitOptions): Promise<BuilderInitramfs> {
  return assembleInitramfs(opts, (mods) => [{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(ovmsInitScript(mods, opts.bootstrap, opts))}], rootFsModules(opts.rootFs))
}

export interface InitramfsOptions {
  modulesDir: string
  busybox?: string
  /** Compress the cpio archive (default: gzip level 6); the build passes one that reuses earlier results. */
  gzip?: (cpio: Buffer) => Promise<Buffer>
}

export interface BuilderInitramfs {
  bytes: Buffer
  modules: string[]
}

/** Assemble the builder's initramfs (gzip'd newc cpio) from busybox-static and the kernel's modules. */
export async function buildInitramfs(opts: InitramfsOptions): Promise<BuilderInitramfs> {
  return assembleInitramfs(opts, (mods) => [
    {name: 'init', mode: S_IFREG | 0o755, data: Buffer.from(initScript(mods))},
    {name: 'agent.sh', mode: S_IFREG | 0o755, data: Buffer.from(AGENT_SCRIPT)},
  ])
}

async function assembleInitramfs(opts: InitramfsOptions, scripts: (modules: string[]) => CpioEntry[], extraModules: string[] = []): Promise<BuilderInitramfs> {
  const busyboxPath = opts.busybox ?? DEFAULT_BUSYBOX
  let busybox: Buffer
  try {
    busybox = await readFile(busyboxPath)
  } catch (err) {
    throw fileError(err, busyboxPath, 'busybox (install Debian\'s busybox-static)')
  }
  const {order, missing} = await resolveModulesIn(opts.modulesDir, [...BUILDER_MODULES, ...extraModules])
  const needed = missing.filter((m) => m !== 'libcrc32c' && m !== 'crc32c_generic')
  if (needed.length > 0) {
    throw new AbortError({
      code: 'MODULES_MISSING',
      message: `the kernel's modules folder ${opts.modulesDir} lacks ${needed.join(', ')}, which the ${extraModules.some((m) => needed.includes(m)) ? 'root file system' : 'builder'} needs`,
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
  const cpio = cpioNewc(entries)
  return {bytes: opts.gzip ? await opts.gzip(cpio) : gzipSync(cpio, {level: 6}), modules: order.map((m) => m.name)}
}
