#!/usr/bin/env bash
# Build test fixtures (kernel, initramfs, disk images, stand-in blobs).
# Usage: scripts/fixtures.sh [DIR]   (default: test/.cache/fixtures)
# Every output is written under a temporary name and renamed into place, and
# DIR/.complete is written last; a complete DIR makes this exit immediately.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -ge 1 && -n "$1" ]]; then
  DIR="$(realpath -m -- "$1")"
else
  DIR="$ROOT/test/.cache/fixtures"
fi

OUTPUTS=(kernel-root vmlinuz kernel-version initramfs.cpio.gz disk.raw disk.qcow2 ramsnap.bin)

all_present() {
  [[ -f "$DIR/.complete" ]] || return 1
  local f
  for f in "${OUTPUTS[@]}"; do [[ -e "$DIR/$f" ]] || return 1; done
}

if all_present; then echo "$DIR"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9                       # serialize concurrent runs on the same DIR
if all_present; then echo "$DIR"; exit 0; fi
rm -f "$DIR/.complete"
rm -rf "$DIR"/.tmp.*          # leftovers of a killed run (we hold the lock)

TMP="$(mktemp -d "$DIR/.tmp.XXXXXX")"   # same filesystem, so mv is an atomic rename
LOG="$TMP/log"
: >"$LOG"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

fail() {
  echo "fixtures: $*" >&2
  if [[ -s "$LOG" ]]; then echo "--- last output ---" >&2; tail -n 30 "$LOG" >&2; fi
  exit 1
}
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || fail "missing command '$c' (run scripts/install-deps.sh)"
  done
}
need apt-cache apt-get dpkg-deb cpio gzip mke2fs debugfs qemu-img flock
BUSYBOX="$(command -v busybox || true)"
[[ -x /bin/busybox ]] && BUSYBOX=/bin/busybox
[[ -n "$BUSYBOX" ]] || fail "busybox not found (install busybox-static)"

# ---- kernel: Debian's linux-image-*-amd64, kept extracted (modules needed later)
if [[ ! -d "$DIR/kernel-root" ]]; then
  pkg="$(apt-cache depends linux-image-amd64 2>>"$LOG" \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
  [[ -n "$pkg" ]] || fail "cannot resolve linux-image-amd64 via apt-cache (run apt-get update?)"
  mkdir -p "$DIR/debs"
  deb="$(compgen -G "$DIR/debs/${pkg}_*.deb" | head -n 1 || true)"
  if [[ -z "$deb" ]]; then
    mkdir -p "$TMP/debs"
    (cd "$TMP/debs" && apt-get download "$pkg") >>"$LOG" 2>&1 || fail "apt-get download $pkg failed"
    got="$(compgen -G "$TMP/debs/${pkg}_*.deb" | head -n 1 || true)"
    [[ -n "$got" ]] || fail "apt-get download produced no .deb for $pkg"
    deb="$DIR/debs/$(basename "$got")"
    mv -f "$got" "$deb"
  fi
  dpkg-deb -x "$deb" "$TMP/kernel-root" >>"$LOG" 2>&1 || fail "dpkg-deb -x $deb failed"
  mv -T "$TMP/kernel-root" "$DIR/kernel-root"
fi

if [[ ! -f "$DIR/vmlinuz" || ! -f "$DIR/kernel-version" ]]; then
  shopt -s nullglob
  kernels=("$DIR"/kernel-root/boot/vmlinuz-*)
  shopt -u nullglob
  [[ ${#kernels[@]} -eq 1 ]] || fail "expected exactly one kernel-root/boot/vmlinuz-*, found ${#kernels[@]}"
  kver="${kernels[0]##*/vmlinuz-}"
  [[ -d "$DIR/kernel-root/lib/modules/$kver" ]] || fail "kernel-root/lib/modules/$kver missing"
  if [[ ! -f "$DIR/vmlinuz" ]]; then
    cp "${kernels[0]}" "$TMP/vmlinuz"
    chmod 0644 "$TMP/vmlinuz"
    [[ "$(dd if="$TMP/vmlinuz" bs=1 skip=514 count=4 status=none)" == HdrS ]] \
      || fail "${kernels[0]} is not a bzImage (no HdrS at 0x202)"
    mv -f "$TMP/vmlinuz" "$DIR/vmlinuz"
  fi
  printf '%s\n' "$kver" >"$TMP/kernel-version"
  mv -f "$TMP/kernel-version" "$DIR/kernel-version"
fi

# ---- initramfs: static busybox + /init that prints OVM-INIT-OK and powers off
if [[ ! -f "$DIR/initramfs.cpio.gz" ]]; then
  R="$TMP/initramfs"
  mkdir -p "$R/bin" "$R/dev" "$R/proc" "$R/sys"
  cp "$BUSYBOX" "$R/bin/busybox"
  for applet in $("$R/bin/busybox" --list); do
    [[ "$applet" == busybox || -e "$R/bin/$applet" ]] || ln -s busybox "$R/bin/$applet"
  done
  [[ -e "$R/bin/sh" && -e "$R/bin/poweroff" && -e "$R/bin/mount" ]] || fail "busybox lacks sh/mount/poweroff applets"
  # The kernel opens /dev/console before running /init; provide it when we can.
  mknod -m 0600 "$R/dev/console" c 5 1 2>/dev/null || true
  cat >"$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo OVM-INIT-OK > /dev/console
poweroff -f
INIT
  chmod 0755 "$R" "$R/bin" "$R/dev" "$R/proc" "$R/sys" "$R/bin/busybox" "$R/init"
  find "$R" -exec touch -h -d @0 {} +
  (cd "$R" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$TMP/initramfs.cpio" 2>>"$LOG" \
    || fail "cpio failed"
  gzip -9n <"$TMP/initramfs.cpio" >"$TMP/initramfs.cpio.gz"
  mv -f "$TMP/initramfs.cpio.gz" "$DIR/initramfs.cpio.gz"
fi

# ---- disk images: 64 MiB ext4 and its qcow2 conversion
if [[ ! -f "$DIR/disk.raw" ]]; then
  S="$TMP/disk-src"
  mkdir -p "$S/etc"
  printf 'ovm-fixture\n' >"$S/etc/hostname"
  printf 'hello from the ovm fixture disk\n' >"$S/hello.txt"
  chmod 0755 "$S" "$S/etc"; chmod 0644 "$S/etc/hostname" "$S/hello.txt"
  find "$S" -exec touch -h -d @0 {} +
  truncate -s 64M "$TMP/disk.raw"
  E2FSPROGS_FAKE_TIME=1 mke2fs -q -t ext4 -d "$S" \
    -U 0f5e7a2c-6b1d-4c3e-9a8f-0123456789ab \
    -E root_owner=0:0,hash_seed=5b2f6c1e-0d3a-4e7b-8c9d-abcdef012345 \
    -L ovm-fixture "$TMP/disk.raw" >>"$LOG" 2>&1 || fail "mke2fs failed"
  # mke2fs -d copies each source file's ctime (which touch cannot set); pin it.
  (cd "$S" && find . -mindepth 1 | LC_ALL=C sort | sed 's|^\.\(.*\)$|sif "\1" ctime 0|') >"$TMP/debugfs.cmd"
  debugfs -w -f "$TMP/debugfs.cmd" "$TMP/disk.raw" >>"$LOG" 2>&1 || fail "debugfs (ctime pinning) failed"
  mv -f "$TMP/disk.raw" "$DIR/disk.raw"
fi
if [[ ! -f "$DIR/disk.qcow2" ]]; then
  qemu-img convert -f raw -O qcow2 "$DIR/disk.raw" "$TMP/disk.qcow2" >>"$LOG" 2>&1 \
    || fail "qemu-img convert failed"
  mv -f "$TMP/disk.qcow2" "$DIR/disk.qcow2"
fi

# ---- ramsnap.bin: 1 MiB deterministic stand-in blob
if [[ ! -f "$DIR/ramsnap.bin" ]]; then
  head -c 1048576 /dev/zero | tr '\0' 'x' >"$TMP/ramsnap.bin"
  mv -f "$TMP/ramsnap.bin" "$DIR/ramsnap.bin"
fi

for f in "${OUTPUTS[@]}"; do [[ -e "$DIR/$f" ]] || fail "output $f missing after build"; done
date -u +%Y-%m-%dT%H:%M:%SZ >"$TMP/.complete"
mv -f "$TMP/.complete" "$DIR/.complete"
echo "$DIR"
