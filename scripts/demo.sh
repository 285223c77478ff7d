#!/usr/bin/env bash
# The main job end to end on the embedded defaults (local store, local engine):
# install what is needed, build ovm, make an artifact from Debian's kernel,
# a busybox initramfs and a disk image, inspect it, cross-check it with
# skopeo, and boot it when this ovm has an engine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
npm run build --silent >/dev/null
fixtures="$(bash scripts/fixtures.sh | tail -n 1)"
ovm=./bin/run.js
home="${OVM_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/ovm}"
ref=example/busybox:demo

echo "== ovm pack -> $ref (store: $home)"
$ovm pack --name example/busybox --version demo \
  --kernel "$fixtures/vmlinuz" --initrd "$fixtures/initramfs.cpio.gz" \
  --cmdline "console=ttyS0 panic=-1" --disk "$fixtures/disk.qcow2" -t "$ref"

echo "== ovm ls"
$ovm ls
echo "== ovm inspect $ref"
$ovm inspect "$ref" | head -n 14
echo "== skopeo reads the same manifest"
skopeo inspect --raw "oci:$home:$ref" | head -n 5
echo "== ovm store verify"
$ovm store verify

if [[ -f dist/commands/run.js ]]; then
  echo "== ovm run $ref (the guest prints OVM-INIT-OK and powers off)"
  $ovm run "$ref"
fi
