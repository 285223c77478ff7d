#!/usr/bin/env bash
# Build the small initramfs the VMM's checks boot (native/tools/device-check.sh,
# test/kvm/*): static busybox, the virtio-pci/virtio-blk/ext4 modules of the
# given kernel (loaded in dependency order), and an /init that
#   prints OVM-BOOTED; mounts /dev/vda (ext4) if present, prints its hello.txt,
#   writes before.txt and prints OVM-DISK-WRITE-OK; starts a counter printing
#   "tick N" every second; prints OVM-READY and waits for a line on the console;
#   then prints "got:LINE", writes after.txt to the disk (OVM-AFTER-OK) and
#   powers off two seconds later. With `ovm.spin` on the kernel command line it
#   prints OVM-SPINNING instead and spins forever without a single VM exit.
# Usage: native/tools/mkinitramfs.sh KERNEL_ROOT OUT.cpio.gz
#   KERNEL_ROOT: an unpacked linux-image package (lib/modules/VERSION/kernel/...)
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 KERNEL_ROOT OUT.cpio.gz" >&2; exit 2; }
KROOT=$1
OUT=$2
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || { echo "mkinitramfs: busybox (static) not found: apt-get install busybox-static" >&2; exit 3; }
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic' \
  || { echo "mkinitramfs: $BUSYBOX is not static (install busybox-static)" >&2; exit 3; }
MODDIR=$(echo "$KROOT"/lib/modules/*/kernel)
[[ -d $MODDIR ]] || { echo "mkinitramfs: no lib/modules/*/kernel under $KROOT" >&2; exit 3; }

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
R=$T/root
mkdir -p "$R"/{bin,dev,proc,sys,mnt,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [[ $a == busybox || -e $R/bin/$a ]] || ln -s busybox "$R/bin/$a"; done
ORDER="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk crc16 mbcache crc32c_generic libcrc32c jbd2 ext4"
: >"$R/modules.order"
for m in $ORDER; do
  f=$(find "$MODDIR" -name "$m.ko" | head -n 1)
  [[ -n $f ]] || continue # built into this kernel
  cp "$f" "$R/lib/modules/$m.ko"
  echo "$m" >>"$R/modules.order"
done
cat >"$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
echo OVM-BOOTED
echo "cpus: $(grep -c ^processor /proc/cpuinfo)"
if [ -b /dev/vda ]; then
  if mount -t ext4 /dev/vda /mnt; then
    echo "disk says: $(cat /mnt/hello.txt)"
    echo "written before the snapshot" > /mnt/before.txt && sync && echo OVM-DISK-WRITE-OK
  else
    echo OVM-DISK-MOUNT-FAILED
  fi
fi
if grep -q ovm.spin /proc/cmdline; then
  echo OVM-SPINNING
  while :; do :; done
fi
( i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 1; done ) &
echo OVM-READY
read line
echo "got:$line"
if grep -q " /mnt " /proc/mounts; then
  echo "written after the restore" > /mnt/after.txt && sync && cat /mnt/after.txt && echo OVM-AFTER-OK
  umount /mnt
fi
sleep 2
poweroff -f
INIT
chmod 0755 "$R/init"
mknod -m 0600 "$R/dev/console" c 5 1 2>/dev/null || true
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$T/out.gz"
mv -f "$T/out.gz" "$OUT"
echo "$OUT"
