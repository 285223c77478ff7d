#!/usr/bin/env bash
# device-check.sh — check the native VMM on a machine with a real /dev/kvm
# but without Node or QEMU (e.g. Ubuntu 24.04 with gcc and make).
#
#   native/tools/device-check.sh --prepare [DATA]   here (needs qemu-img, busybox-static,
#                                                   cpio and the fixtures): fill DATA
#   native/tools/device-check.sh [DATA]             there: build, unit-test, boot,
#                                                   disk, snapshot, restore, refusal
# DATA (default test/.cache/kvm) holds: vmlinuz (Debian 6.1 bzImage, ~8 MB),
# initramfs.cpio.gz (native/tools/mkinitramfs.sh, ~1.7 MB), base.qcow2 (the
# 64 MiB ext4 fixture disk holding hello.txt, ~1 MB) and overlay.qcow2 (an
# empty qcow2 backed by base.qcow2, made with qemu-img). Carry DATA and
# native/ to the device machine.
#
# Each step has a timeout; the log goes to stdout and, when $OUT is set, to
# $OUT/device-check.log (snapshot files under $OUT are not kept). Exit status:
# the number of failed steps (0 = all passed).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd -P)"
NATIVE="$ROOT/native"

if [[ "${1-}" == --prepare ]]; then
  set -e
  DATA="${2:-$ROOT/test/.cache/kvm}"
  FIX="$ROOT/test/.cache/fixtures"
  mkdir -p "$DATA"
  cp "$FIX/vmlinuz" "$DATA/vmlinuz"
  "$NATIVE/tools/mkinitramfs.sh" "$FIX/kernel-root" "$DATA/initramfs.cpio.gz" >/dev/null
  qemu-img convert -f raw -O qcow2 "$FIX/disk.raw" "$DATA/base.qcow2"
  rm -f "$DATA/overlay.qcow2"
  qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 "$DATA/overlay.qcow2"
  ls -la "$DATA"
  exit 0
fi

DATA="$(realpath -m "${1:-$ROOT/test/.cache/kvm}")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ovm-device-check.XXXXXX")"
LOG="$WORK/device-check.log"
[[ -n "${OUT-}" ]] && mkdir -p "$OUT" && LOG="$OUT/device-check.log"
: >"$LOG"
FAILED=0
SUMMARY=()

say() { echo "$*" | tee -a "$LOG"; }
# step NAME TIMEOUT CMD... : run with a timeout, log everything, record pass/fail
step() {
  local name=$1 t=$2
  shift 2
  say ""
  say "=== $name (timeout ${t}s): $*"
  local start end rc
  start=$(date +%s.%N)
  timeout --kill-after=5 "$t" "$@" >>"$LOG" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("PASS  $name (${secs}s)")
  else
    [[ $rc -eq 124 || $rc -eq 137 ]] && say "--- timed out"
    SUMMARY+=("FAIL  $name (rc=$rc, ${secs}s)")
    FAILED=$((FAILED + 1))
  fi
  say "--- rc=$rc in ${secs}s"
  return $rc
}
# expect FILE TEXT: the step's output must contain TEXT
expect() { grep -qF -- "$2" "$1"; }

say "device-check: $(date -u +%FT%TZ) on $(uname -srm)"
say "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
say "data: $DATA  work: $WORK"
ls -la /dev/kvm >>"$LOG" 2>&1 || say "no /dev/kvm on this machine"
for f in vmlinuz initramfs.cpio.gz; do
  [[ -f "$DATA/$f" ]] || { say "missing $DATA/$f (run: $0 --prepare)"; exit 99; }
done

step build 300 make -C "$NATIVE" -j4
step unit-tests 300 make -C "$NATIVE" test
VMM="$NATIVE/build/ovm-vmm"
K="$DATA/vmlinuz"
I="$DATA/initramfs.cpio.gz"
CMD="console=ttyS0 reboot=k panic=-1 pci=conf1 i8042.noaux"
DISK=()
if [[ -f "$DATA/overlay.qcow2" && -f "$DATA/base.qcow2" ]]; then
  cp "$DATA/base.qcow2" "$WORK/base.qcow2"
  cp "$DATA/overlay.qcow2" "$WORK/overlay.qcow2" # backing file name is relative: base.qcow2
  DISK=(--disk "$WORK/base.qcow2:$WORK/overlay.qcow2")
fi

if [[ -x "$VMM" ]]; then
  # 1. Cold boots to the marker (three, for timings), each powering off at the end.
  for n in 1 2 3; do
    step "boot-to-marker-$n" 120 "$VMM" boot --kernel "$K" --initrd "$I" --cmdline "$CMD quiet" --mem 256 \
      --until OVM-READY --timeout 100
  done
  # 2. Boot with the disk, to the marker, then snapshot (the guest waits on its console).
  SNAP="$WORK/snap"
  step boot-disk-snapshot 180 "$VMM" boot --kernel "$K" --initrd "$I" --cmdline "$CMD" --mem 256 \
    "${DISK[@]}" --until OVM-READY --snapshot "$SNAP" --timeout 150
  ls -las "$SNAP" >>"$LOG" 2>&1
  # The disk as it was at the snapshot: every restore starts from a fresh copy of it
  # (a restored guest must never see writes made after its snapshot).
  [[ ${#DISK[@]} -gt 0 ]] && cp "$WORK/overlay.qcow2" "$WORK/overlay-at-snapshot.qcow2"
  fresh_disk() { [[ ${#DISK[@]} -gt 0 ]] && cp "$WORK/overlay-at-snapshot.qcow2" "$WORK/overlay.qcow2"; return 0; }
  if [[ ${#DISK[@]} -gt 0 ]]; then
    expect "$LOG" "OVM-DISK-WRITE-OK" && SUMMARY+=("PASS  disk read+write before snapshot") \
      || { SUMMARY+=("FAIL  disk read+write before snapshot"); FAILED=$((FAILED + 1)); }
  fi
  # 3. Restore in a fresh process: type a line; the guest answers, writes to the disk, powers off.
  MARK="got:hello"
  [[ ${#DISK[@]} -gt 0 ]] && MARK="OVM-AFTER-OK"
  fresh_disk
  step restore-continue 120 "$VMM" restore "$SNAP" "${DISK[@]}" --input 'hello\n' --until "$MARK" \
    --keep-running --timeout 100
  tail -n 30 "$LOG" | grep -q 'final=poweroff' && SUMMARY+=("PASS  restored guest powered off cleanly") \
    || { SUMMARY+=("FAIL  restored guest did not end with poweroff"); FAILED=$((FAILED + 1)); }
  # 4. Restore twice more for timings (killed at the marker).
  for n in 1 2; do
    fresh_disk
    step "restore-to-marker-$n" 60 "$VMM" restore "$SNAP" "${DISK[@]}" --input 'again\n' --until "got:again" \
      --timeout 50
  done
  # 5. A damaged snapshot is refused with a reason.
  BAD="$WORK/bad"
  mkdir -p "$BAD" && cp "$SNAP/state.bin" "$BAD/" && ln -sf "$SNAP/memory.raw" "$BAD/memory.raw"
  fresh_disk
  printf '\x55' | dd of="$BAD/state.bin" bs=1 seek=200 conv=notrunc status=none
  say ""
  say "=== refuse-damaged"
  if timeout 30 "$VMM" restore "$BAD" "${DISK[@]}" >>"$LOG" 2>&1; then
    SUMMARY+=("FAIL  damaged snapshot was restored"); FAILED=$((FAILED + 1))
  elif tail -n 3 "$LOG" | grep -q 'checksum mismatch'; then
    SUMMARY+=("PASS  damaged snapshot refused (checksum)")
  else
    SUMMARY+=("FAIL  damaged snapshot refused without the checksum reason"); FAILED=$((FAILED + 1))
  fi
fi

say ""
say "=== timings (ovm-vmm lines)"
grep -E '^ovm-vmm: (boot_setup_ms|restore_setup_ms|marker_ms|snapshot_dir|final)' "$LOG" | tee -a "$LOG.tmp" >/dev/null
cat "$LOG.tmp" 2>/dev/null | tee -a "$LOG"; rm -f "$LOG.tmp"
say ""
say "=== summary"
for l in "${SUMMARY[@]}"; do say "$l"; done
say "failed steps: $FAILED"
rm -rf "$WORK/snap" "$WORK/bad"
exit "$FAILED"
