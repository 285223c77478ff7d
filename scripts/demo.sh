#!/usr/bin/env bash
# The main job end to end on the embedded defaults (local store, local engine):
# install what is needed, build ovm, pack an artifact from files on disk, build
# Ovmfile.example in a builder VM (Debian's kernel, busybox), rebuild it from
# the cache, inspect and verify the store, and boot the result with ovm run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
npm run build --silent >/dev/null
fixtures="$(bash scripts/fixtures.sh | tail -n 1)"
ovm=./bin/run.js
home="${OVM_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/ovm}"
ref=example/busybox:demo

echo "== ovm pack -> $ref (store: $home): an artifact from files on disk"
$ovm pack --name example/busybox --version demo \
  --kernel "$fixtures/vmlinuz" --initrd "$fixtures/initramfs.cpio.gz" \
  --cmdline "console=ttyS0 panic=-1" --disk "$fixtures/disk.qcow2" -t "$ref"
echo "== skopeo reads the same manifest"
skopeo inspect --raw "oci:$home:$ref" | head -n 5

# The build context of Ovmfile.example: busybox from Debian's busybox-static and the app.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp /bin/busybox examples/hello/app.sh "$ctx/"

echo "== ovm build -f Ovmfile.example -> example/hello:1 (a builder VM runs each step)"
$ovm build -f Ovmfile.example --build-arg KERNEL_ROOT="$fixtures/kernel-root" -t example/hello:1 "$ctx"
echo "== ovm build again: every step cached, no VM booted"
$ovm build -f Ovmfile.example --build-arg KERNEL_ROOT="$fixtures/kernel-root" -t example/hello:1 "$ctx" | tail -n 1
echo "== ovm ls"
$ovm ls
echo "== ovm inspect example/hello:1"
$ovm inspect example/hello:1 | head -n 20
echo "== ovm store verify"
$ovm store verify
echo "== ovm run example/hello:1 (boots the artifact; its entrypoint prints and the VM powers off)"
$ovm run example/hello:1
