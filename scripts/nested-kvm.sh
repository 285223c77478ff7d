#!/usr/bin/env bash
# Run a command inside a QEMU TCG guest that has a working /dev/kvm.
#
# Usage: scripts/nested-kvm.sh [--mem MiB] [--smp N] [--timeout S] [--log FILE]
#                              [--fixtures DIR] -- CMD [ARG...]
#
# The guest (q35, TCG, `-cpu max`, so it sees AMD SVM and loads kvm-amd) boots
# Debian's kernel from the fixtures with an initramfs built here (busybox, the
# kvm, virtio-pci, 9p and overlay modules in dependency order, and the
# test/nested/kvm-probe.c probe). Its /init checks that /dev/kvm runs guest
# code, mounts the host's root read-only over virtio-9p with a tmpfs overlay
# on top (writes vanish with the guest), mounts this checkout writable at the
# same path, chroots, cd's into the checkout and runs CMD there with the
# host's own node on PATH and OVM_NESTED=1 in its environment.
#
# CMD's output is streamed to this script's stdout (it runs without a tty and
# with stdin from /dev/null); the guest's kernel console goes to the log
# (default test/.cache/nested/console.log) and a copy of CMD's output to
# LOG.output. See test/nested/README.md.
#
# Exit status: CMD's own exit status, or
#   2   usage error
#   3   something the harness needs on this host is missing (named on stderr)
#   124 the run took longer than --timeout (the guest is killed)
#   125 the guest could not run CMD (no working /dev/kvm in it, a module or
#       mount failed, or it ended without reporting CMD's exit status)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
CACHE="$ROOT/test/.cache/nested"
MEM=4096
SMP=2
TIMEOUT=900
LOG=""
FIXTURES=""

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
}
die() { # die CODE MESSAGE...
  local code=$1
  shift
  echo "nested-kvm: $*" >&2
  exit "$code"
}
num() { [[ "$2" =~ ^[0-9]+$ && "$2" -ge "$3" ]] || die 2 "$1 needs a whole number >= $3, got '$2'"; }

while (($#)); do
  case "$1" in
    --mem) num --mem "${2-}" 512; MEM=$2; shift 2 ;;
    --smp) num --smp "${2-}" 1; SMP=$2; shift 2 ;;
    --timeout) num --timeout "${2-}" 1; TIMEOUT=$2; shift 2 ;;
    --log) [[ -n "${2-}" ]] || die 2 "--log needs a file name"; LOG=$2; shift 2 ;;
    --fixtures) [[ -n "${2-}" ]] || die 2 "--fixtures needs a folder"; FIXTURES=$2; shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) echo "nested-kvm: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || { echo "nested-kvm: no command given (put it after --)" >&2; usage; }
[[ "$ROOT" != *[[:space:]]* ]] || die 3 "the checkout path '$ROOT' contains white space; the guest cannot mount it there"

mkdir -p "$CACHE"
LOG="$(realpath -m -- "${LOG:-$CACHE/console.log}")"
mkdir -p "$(dirname "$LOG")"

# ---- host prerequisites
for c in qemu-system-x86_64 cpio find flock timeout; do
  command -v "$c" >/dev/null 2>&1 || die 3 "missing command '$c' (run scripts/install-deps.sh)"
done
NODE="$(command -v node || true)"
[[ -n "$NODE" ]] || die 3 "node is not on PATH; the guest runs the host's own node"
BUSYBOX="$(command -v busybox || true)"
[[ -x /bin/busybox ]] && BUSYBOX=/bin/busybox
[[ -n "$BUSYBOX" ]] || die 3 "busybox not found (install busybox-static)"
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }
if command -v readelf >/dev/null 2>&1 && ! file_is_static "$BUSYBOX"; then
  die 3 "$BUSYBOX is dynamically linked; the initramfs needs busybox-static"
fi

if [[ -z "$FIXTURES" ]]; then
  FIXTURES="$ROOT/test/.cache/fixtures"
  if [[ ! -f "$FIXTURES/vmlinuz" || ! -f "$FIXTURES/kernel-version" || ! -d "$FIXTURES/kernel-root" ]]; then
    echo "nested-kvm: kernel fixtures missing, running scripts/fixtures.sh" >&2
    bash "$ROOT/scripts/fixtures.sh" >/dev/null || die 3 "scripts/fixtures.sh failed; the guest needs its kernel and modules"
  fi
fi
FIXTURES="$(realpath -m -- "$FIXTURES")"
KERNEL="$FIXTURES/vmlinuz"
[[ -f "$KERNEL" ]] || die 3 "kernel $KERNEL is missing (run bash scripts/fixtures.sh)"
[[ -f "$FIXTURES/kernel-version" ]] || die 3 "$FIXTURES/kernel-version is missing (run bash scripts/fixtures.sh)"
KVER="$(<"$FIXTURES/kernel-version")"
MODDIR="$FIXTURES/kernel-root/lib/modules/$KVER"
[[ -d "$MODDIR/kernel" ]] || die 3 "kernel modules $MODDIR/kernel are missing (run bash scripts/fixtures.sh)"

# ---- modules, in dependency order (read from each .ko's depends= field; no kmod needed)
declare -A MODPATH=()
while IFS= read -r f; do
  n="${f##*/}"; n="${n%.ko}"; MODPATH[${n//-/_}]="$f"
done < <(find "$MODDIR/kernel" -name '*.ko')
ORDER=()
declare -A SEEN=()
add_module() { # add_module NAME: its dependencies first, then itself
  local name=${1//-/_} dep deps
  [[ -z "${SEEN[$name]-}" ]] || return 0
  SEEN[$name]=1
  local f="${MODPATH[$name]-}"
  if [[ -z "$f" ]]; then
    if grep -q "/${name}.ko\$\|/${name//_/-}.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then return 0; fi
    die 3 "kernel module '$name' is missing under $MODDIR/kernel (a broken fixture? delete $FIXTURES and rerun scripts/fixtures.sh)"
  fi
  deps="$(tr '\0' '\n' <"$f" | grep -a -m1 '^depends=' | cut -d= -f2 || true)"
  for dep in ${deps//,/ }; do add_module "$dep"; done
  ORDER+=("$f")
}
for m in kvm_amd virtio_pci 9pnet_virtio 9p overlay; do add_module "$m"; done

# ---- the probe (static, runs in the initramfs before the host root is mounted)
PROBE_SRC="$ROOT/test/nested/kvm-probe.c"
PROBE="$CACHE/kvm-probe"
if [[ ! -x "$PROBE" || "$PROBE_SRC" -nt "$PROBE" ]]; then
  CC="${CC:-cc}"
  command -v "$CC" >/dev/null 2>&1 || die 3 "no C compiler '$CC' to build $PROBE_SRC (install gcc and libc6-dev)"
  "$CC" -static -O2 -Wall -o "$PROBE.tmp.$$" "$PROBE_SRC" \
    || die 3 "cannot build $PROBE_SRC statically (install gcc and libc6-dev: the static libc)"
  mv -f "$PROBE.tmp.$$" "$PROBE"
fi

# ---- the initramfs: rebuilt only when one of its inputs changed
INIT_TEXT="$(sed -n '/^# ---- guest init begins/,/^# ---- guest init ends/p' "$0")"
KEY="$( {
  printf '%s\n' "$INIT_TEXT" "$KVER" "${ORDER[@]}"
  sha256sum "$BUSYBOX" "$PROBE" "${ORDER[@]}" | cut -d' ' -f1
} | sha256sum | cut -c1-16)"
INITRD="$CACHE/initramfs-$KEY.cpio"
if [[ ! -f "$INITRD" ]]; then
  exec 8>"$CACHE/.initramfs.lock"
  flock 8
  if [[ ! -f "$INITRD" ]]; then
    T="$(mktemp -d "$CACHE/.initramfs.XXXXXX")"
    R="$T/root"
    mkdir -p "$R"/{bin,dev,proc,sys,mnt/lower,mnt/rw,mnt/checkout,newroot,lib/modules}
    cp "$BUSYBOX" "$R/bin/busybox"
    for applet in $("$R/bin/busybox" --list); do
      [[ "$applet" == busybox ]] || ln -sf busybox "$R/bin/$applet"
    done
    cp "$PROBE" "$R/bin/kvm-probe"
    : >"$R/lib/modules/order"
    for f in "${ORDER[@]}"; do
      cp "$f" "$R/lib/modules/"
      echo "${f##*/}" >>"$R/lib/modules/order"
    done
    printf '%s\n' "$INIT_TEXT" | sed '1d;$d' >"$R/init"
    chmod 0755 "$R/init"
    (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$T/initramfs.cpio" \
      || { rm -rf "$T"; die 3 "cpio failed building the initramfs"; }
    mv -f "$T/initramfs.cpio" "$INITRD"
    rm -rf "$T"
    # keep only the newest initramfs
    find "$CACHE" -maxdepth 1 -name 'initramfs-*.cpio' ! -name "${INITRD##*/}" -delete
  fi
  exec 8>&-
fi

# ---- the run folder: what the guest runs, and where it reports back
RUN="$(mktemp -d "$CACHE/run.XXXXXX")"
RUN_NAME="${RUN##*/}"
OUT="$RUN/output"
: >"$OUT"
: >"$LOG"
: >"$LOG.qemu"
{
  echo "# written by scripts/nested-kvm.sh; sourced in the guest by run.sh"
  printf 'export PATH=%q\n' "$(dirname "$NODE"):$PATH"
  printf 'export HOME=%q\n' "${HOME:-/root}"
  for name in $(compgen -e); do
    case "$name" in
      CI | LANG | LC_ALL | TZ | NODE_OPTIONS | OVM_* | VITEST_* | DEBUG) printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done
  echo "export OVM_NESTED=1"
} >"$RUN/env"
{
  echo "# written by scripts/nested-kvm.sh; run in the guest's chroot by /init"
  printf 'cd %q || exit 125\n' "$ROOT"
  printf '. %q\n' "$RUN/env"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$RUN/run.sh"
printf '%s\n' "$ROOT" >"$RUN/root"

QPID=""
TAILPID=""
cleanup() {
  [[ -n "$QPID" ]] && kill "$QPID" 2>/dev/null || true
  [[ -n "$TAILPID" ]] && kill "$TAILPID" 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$(date +%s.%N)
# The guest boots in about 6 s; a TCG guest on a loaded host now and then
# stalls in early boot (RCU stall, timers never fire). A boot that has not
# reached the command within BOOT_WAIT seconds is killed and tried once more.
BOOT_WAIT="${OVM_NESTED_BOOT_WAIT:-90}"
for attempt in 1 2; do
  : >"$LOG"
  : >"$OUT"
  left=$((TIMEOUT - $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%d", e - s }')))
  ((left > 0)) || left=1
  timeout --kill-after=5 "$left" qemu-system-x86_64 \
    -machine q35,accel=tcg -cpu max -smp "$SMP" -m "$MEM" \
    -nodefaults -no-user-config -display none -no-reboot -monitor none \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 ovm.run=$RUN_NAME" \
    -chardev "file,id=con,path=$LOG" -serial chardev:con \
    -chardev "file,id=out,path=$OUT" -serial chardev:out \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$ROOT,mount_tag=checkout,security_model=none,multidevs=remap" \
    </dev/null >>"$LOG.qemu" 2>&1 &
  QPID=$!
  booted=""
  for ((i = 0; i < BOOT_WAIT * 5; i++)); do
    kill -0 "$QPID" 2>/dev/null || break
    if grep -a -q -e OVM-NESTED-READY -e OVM-NESTED-FAIL "$LOG" 2>/dev/null; then booted=1; break; fi
    sleep 0.2
  done
  if [[ -z "$booted" ]] && kill -0 "$QPID" 2>/dev/null && ((attempt == 1)); then
    echo "nested-kvm: the guest did not reach the command within $BOOT_WAIT s (stalled boot); killing it and booting again" >&2
    cp -f "$LOG" "$LOG.stalled" 2>/dev/null || true
    kill "$QPID" 2>/dev/null || true
    wait "$QPID" 2>/dev/null || true
    QPID=""
    continue
  fi
  break
done
tail -n +1 -s 0.2 -F --pid="$QPID" "$OUT" 2>/dev/null &
TAILPID=$!
set +e
wait "$QPID"
qrc=$?
set -e
QPID=""
wait "$TAILPID" 2>/dev/null || true
TAILPID=""
cp -f "$OUT" "$LOG.output" 2>/dev/null || true
ELAPSED=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

ready="$(grep -a -m1 -o 'OVM-NESTED-READY [0-9.]*' "$LOG" | cut -d' ' -f2 || true)"
timing="after ${ELAPSED} s${ready:+ (guest ready to run the command at ${ready} s of its uptime)}"
console_tail() {
  echo "nested-kvm: --- last lines of the guest console ($LOG) ---" >&2
  tail -n 25 "$LOG" | tr -d '\r' >&2
  if [[ -s "$LOG.qemu" ]]; then echo "nested-kvm: --- qemu said ---" >&2; tail -n 10 "$LOG.qemu" >&2; fi
}

if ((qrc == 124 || qrc == 137)); then
  console_tail
  die 124 "timed out: the guest was still running after --timeout $TIMEOUT s and was killed; its console is in $LOG"
fi
status=""
[[ -f "$RUN/status" ]] && status="$(tr -dc '0-9' <"$RUN/status")"
if [[ -z "$status" ]]; then
  status="$(tr -d '\r' <"$LOG" | grep -a -o 'OVM-NESTED-EXIT [0-9]*' | tail -n 1 | cut -d' ' -f2 || true)"
fi
if [[ -z "$status" ]]; then
  why="$(tr -d '\r' <"$LOG" | grep -a -m1 'OVM-NESTED-FAIL' | sed 's/.*OVM-NESTED-FAIL //' || true)"
  console_tail
  if [[ -n "$why" ]]; then die 125 "the guest could not run the command: $why ($timing)"; fi
  die 125 "the guest ended without reporting the command's exit status (qemu exit $qrc, $timing); see $LOG"
fi
echo "nested-kvm: command exited $status $timing" >&2
exit "$status"

# The guest's /init, copied into the initramfs from the lines between the markers.
# ---- guest init begins
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "OVM-NESTED-FAIL $*" >/dev/console
  sync
  poweroff -f
  sleep 10
}
for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m" 2>/dev/console || fail "insmod $m failed (see the console above)"
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm and kvm-amd: does the CPU model expose svm (-cpu max)?"
probe_out="$(kvm-probe 8 0x42 20 2>&1)" || fail "/dev/kvm does not run guest code: $(echo "$probe_out" | grep FAIL)"
echo "$probe_out" >/dev/console
run_name=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in ovm.run=*) run_name="${arg#ovm.run=}" ;; esac
done
[ -n "$run_name" ] || fail "no ovm.run= on the kernel command line"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /mnt/lower \
  || fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw || fail "cannot mount a tmpfs for the overlay"
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
  || fail "cannot mount the overlay on the host root"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=512000 checkout /mnt/checkout \
  || fail "cannot mount the checkout (9p tag checkout)"
run="/mnt/checkout/test/.cache/nested/$run_name"
[ -f "$run/root" ] || fail "the checkout has no $run/root"
root="$(cat "$run/root")"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
# last, so that a checkout under /tmp or /run is not hidden by those tmpfs
mkdir -p "/newroot$root" && mount --move /mnt/checkout "/newroot$root" || fail "cannot mount the checkout at $root"
echo "OVM-NESTED-READY $(cut -d' ' -f1 /proc/uptime)" >/dev/console
stty -F /dev/ttyS1 raw -echo 2>/dev/null
set -o pipefail
chroot /newroot /bin/bash "$root/test/.cache/nested/$run_name/run.sh" </dev/null 2>&1 | cat >/dev/ttyS1
rc=$?
echo "$rc" >"/newroot$root/test/.cache/nested/$run_name/status"
sync
echo "OVM-NESTED-EXIT $rc (at $(cut -d' ' -f1 /proc/uptime) s)" >/dev/console
poweroff -f
# ---- guest init ends
