#!/bin/sh
# Make the Debian root file system image the Ovmfile starts FROM:
# `debootstrap --variant=minbase` into a temporary folder, packed into an ext4
# image (mkfs.ext4 -d) and converted to a compressed qcow2.
#
#   sudo ./make-rootfs.sh [OUT]          (default OUT: rootfs.qcow2)
#
# Environment: SUITE (default bookworm), MIRROR (default
# http://deb.debian.org/debian), SIZE of the file system (default 1G),
# INCLUDE: more packages, comma-separated (debootstrap --include).
# Needs root (debootstrap) and the Debian packages debootstrap, e2fsprogs,
# qemu-utils. OUT is written under a temporary name and renamed when complete.
set -eu

out=${1:-rootfs.qcow2}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
size=${SIZE:-1G}
include=${INCLUDE:-}

die() {
  echo "make-rootfs.sh: $1" >&2
  exit "${2:-1}"
}

[ "$(id -u)" = 0 ] || die "debootstrap needs root: run sudo $0 $*" 2
for tool in debootstrap mkfs.ext4 qemu-img; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install debootstrap e2fsprogs qemu-utils" 4
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ovm-debian.XXXXXX")
tmp="$out.tmp.$$"
trap 'rm -rf "$work"; rm -f "$tmp"' EXIT INT TERM

echo "debootstrap --variant=minbase${include:+ --include=$include} $suite from $mirror" >&2
debootstrap --variant=minbase ${include:+"--include=$include"} "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 20 "$work/debootstrap.log" >&2
  die "debootstrap failed (whole log above: last 20 lines)" 8
}

# What a VM image does not need: downloaded packages and package lists
# (apt-get update fetches them again), and the build host's name.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
echo debian > "$work/root/etc/hostname"

mkfs.ext4 -q -F -L debian-root -d "$work/root" "$work/root.raw" "$size" >/dev/null
qemu-img convert -c -O qcow2 "$work/root.raw" "$tmp"
qemu-img check -q "$tmp"
mv -f "$tmp" "$out"
echo "wrote $out (Debian $(cat "$work/root/etc/debian_version"), $(du -h "$out" | cut -f1))" >&2
