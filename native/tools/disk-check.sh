#!/usr/bin/env bash
# disk-check.sh — virtio-blk under a stock Debian 6.1 kernel, end to end, in
# the nested KVM harness (scripts/nested-kvm.sh). Needs the merged tree
# (ovm-vmm and mkinitramfs.sh from the core, nested-kvm.sh from the harness)
# and, on this host, qemu-img, debugfs (e2fsprogs), cpio, busybox-static and
# the fixtures (test/.cache/fixtures: vmlinuz, kernel-root, disk.raw).
#
#   native/tools/disk-check.sh [--timeout S]
#
# Three boots of the guest, each on a fresh qcow2 overlay over the fixture
# disk: with MSI-X, with INTx (pci=nomsi), and one that is snapshotted
# mid-run and restored in a new process. Each loads the virtio modules,
# reports its interrupts, serial and negotiated features, writes 24 MiB of
# random data to a file on the ext4 disk, syncs, drops caches, reads it back
# and prints both MD5s, then powers off. The third stops after the write
# and waits on its console: the host snapshots it there, a new process
# restores it and types a line, and the guest goes on to write and read
# back another 8 MiB file. Afterwards, here: `qemu-img check` must pass on
# each overlay, and each file extracted from an overlay (debugfs) must have
# the MD5 the guest printed.
#
# Work files go to test/.cache/disk-check (the nested guest sees the
# checkout writable; its /tmp is its own). Exit status: 0 all passed, 1 a
# check failed, 3 something needed is missing, else the harness's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd -P)"
FIX="$ROOT/test/.cache/fixtures"
W="$ROOT/test/.cache/disk-check"
TIMEOUT=590
[[ "${1-}" == --timeout ]] && TIMEOUT=$2

need() { command -v "$1" >/dev/null || { echo "disk-check: $1 is not installed ($2)" >&2; exit 3; }; }
need qemu-img "apt-get install qemu-utils"
need debugfs "apt-get install e2fsprogs"
need cpio "apt-get install cpio"
for f in "$FIX/vmlinuz" "$FIX/disk.raw" "$FIX/kernel-root" "$ROOT/scripts/nested-kvm.sh" "$ROOT/native/tools/mkinitramfs.sh"; do
  [[ -e $f ]] || { echo "disk-check: missing $f (fixtures: bash scripts/fixtures.sh; the rest comes with the merged branches)" >&2; exit 3; }
done
make -C "$ROOT/native" -s
rm -rf "$W"
mkdir -p "$W/init"
"$ROOT/native/tools/mkinitramfs.sh" "$FIX/kernel-root" "$W/base-initramfs.cpio.gz" >/dev/null
cat >"$W/init/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
echo "KB-IRQ: $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
echo "KB-SERIAL: $(cat /sys/block/vda/serial 2>/dev/null)"
echo "KB-FEATURES: $(cat /sys/bus/virtio/devices/virtio0/features)"
mount -t ext4 /dev/vda /mnt || echo KB-MOUNT-FAILED
dd if=/dev/urandom of=/mnt/big bs=1M count=24 2>/dev/null
sync
echo "KB-MD5-WRITE: $(md5sum /mnt/big | cut -d' ' -f1)"
if grep -q kbsnap /proc/cmdline; then
  echo KB-READY
  read line
  echo "KB-GOT: $line"
  dd if=/dev/urandom of=/mnt/after bs=1M count=8 2>/dev/null
  sync
  echo "KB-MD5-AFTER-WRITE: $(md5sum /mnt/after | cut -d' ' -f1)"
fi
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro /dev/vda /mnt
echo "KB-MD5-READ: $(md5sum /mnt/big | cut -d' ' -f1)"
[ -f /mnt/after ] && echo "KB-MD5-AFTER-READ: $(md5sum /mnt/after | cut -d' ' -f1)"
umount /mnt
echo "KB-IRQ-AFTER: $(grep -i virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
echo KB-DONE
poweroff -f
INIT
chmod +x "$W/init/init"
# The kernel unpacks concatenated archives in order: this /init wins.
(cd "$W/init" && echo init | cpio -o -H newc 2>/dev/null | gzip) | cat "$W/base-initramfs.cpio.gz" - >"$W/initramfs.cpio.gz"
qemu-img convert -f raw -O qcow2 "$FIX/disk.raw" "$W/base.qcow2"
for mode in msix intx snap; do
  qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 "$W/overlay-$mode.qcow2"
done

# Runs inside the nested guest: sh boots.sh ROOT FIXTURES WORK
cat >"$W/boots.sh" <<'BOOTS'
#!/bin/sh
ROOT=$1 FIX=$2 W=$3
VMM="$ROOT/native/build/ovm-vmm"
CMD="console=ttyS0 reboot=k panic=-1 pci=conf1 i8042.noaux quiet"
for mode in msix intx; do
  extra=""
  [ $mode = intx ] && extra=" pci=nomsi"
  "$VMM" boot --kernel "$FIX/vmlinuz" --initrd "$W/initramfs.cpio.gz" --cmdline "$CMD$extra" --mem 256 \
    --disk "$W/base.qcow2:$W/overlay-$mode.qcow2" --until KB-DONE --keep-running --timeout 300 >"$W/$mode.log" 2>&1
  echo "disk-check: $mode boot rc=$?"
done
"$VMM" boot --kernel "$FIX/vmlinuz" --initrd "$W/initramfs.cpio.gz" --cmdline "$CMD kbsnap" --mem 256 \
  --disk "$W/base.qcow2:$W/overlay-snap.qcow2" --until KB-READY --snapshot "$W/snapshot" --timeout 300 >"$W/snap.log" 2>&1
echo "disk-check: snapshot boot rc=$?"
"$VMM" restore "$W/snapshot" --disk "$W/base.qcow2:$W/overlay-snap.qcow2" --input 'go\n' --until KB-DONE \
  --keep-running --timeout 200 >>"$W/snap.log" 2>&1
echo "disk-check: restore rc=$?"
BOOTS
set +e
"$ROOT/scripts/nested-kvm.sh" --timeout "$TIMEOUT" --log "$W/console.log" -- sh "$W/boots.sh" "$ROOT" "$FIX" "$W"
rc=$?
set -e
[[ $rc -eq 0 ]] || { echo "disk-check: the nested run failed (rc=$rc); see $W/console.log" >&2; exit "$rc"; }

FAILED=0
check() { # check NAME RESULT ("ok" or why not)
  if [[ $2 == ok ]]; then echo "PASS  $1"; else echo "FAIL  $1: $2"; FAILED=1; fi
}
# The guest's console ends lines with CR LF: drop the CRs.
field() { tr -d '\r' <"$2" | grep -a "^$1:" | tail -n 1 | cut -d' ' -f2; }
for mode in msix intx snap; do
  L="$W/$mode.log"
  tr -d '\r' <"$L" | grep -a '^KB-' | sed "s/^/$mode: /"
  if [[ $mode == snap ]]; then
    grep -aq 'KB-GOT: go' "$L" && r=ok || r="the restored guest did not get its input"
    check "snap: the guest runs on after a restore in a new process" "$r"
  else
    want_irq=PCI-MSI
    [[ $mode == intx ]] && want_irq=XT-PIC
    grep -aq "KB-IRQ-AFTER:.*$want_irq" "$L" && r=ok || r="no $want_irq interrupts counted"
    check "$mode: interrupts via $want_irq" "$r"
    grep -aq 'KB-SERIAL: ovm-disk0' "$L" && r=ok || r="serial (GET_ID) missing"
    check "$mode: serial via GET_ID" "$r"
  fi
  w=$(field KB-MD5-WRITE "$L")
  rd=$(field KB-MD5-READ "$L")
  [[ -n $w && $w == "$rd" ]] && r=ok || r="guest wrote '$w', read back '$rd'"
  check "$mode: the guest reads back what it wrote, after dropping caches" "$r"
  files=big
  if [[ $mode == snap ]]; then
    files="big after"
    aw=$(field KB-MD5-AFTER-WRITE "$L")
    ar=$(field KB-MD5-AFTER-READ "$L")
    [[ -n $aw && $aw == "$ar" ]] && r=ok || r="guest wrote '$aw' after the restore, read back '$ar'"
    check "snap: disk I/O after the restore reads back" "$r"
  fi
  qemu-img check -q "$W/overlay-$mode.qcow2" && r=ok || r="qemu-img check failed"
  check "$mode: qemu-img check on the overlay the VMM wrote" "$r"
  qemu-img convert -O raw "$W/overlay-$mode.qcow2" "$W/$mode.raw"
  for file in $files; do
    want=$w
    [[ $file == after ]] && want=$aw
    debugfs -R "dump /$file $W/$file-$mode" "$W/$mode.raw" >/dev/null 2>&1 || true
    h=$(md5sum "$W/$file-$mode" 2>/dev/null | cut -d' ' -f1)
    [[ -n $want && $h == "$want" ]] && r=ok || r="host sees '$h', guest wrote '$want'"
    check "$mode: the host reads the guest's /$file from the overlay" "$r"
  done
  rm -f "$W/$mode.raw"
done
exit $FAILED
