#!/usr/bin/env bash
# Build an Ovmfile, sign it, push it and verify what the registry holds: the
# generic CI job. Every ovm call uses --json, so the log holds only results,
# and each step's exit code is ovm's documented one (README: Exit codes).
#
#   REGISTRY=localhost:5000 KERNEL_ROOT=/path/to/linux-image \
#   OVM_KEY=release.key OVM_PUB=release.pub OVM_KEY_PASSWORD=... \
#   bash examples/ci/build-sign-push.sh CONTEXT NAME:TAG
set -euo pipefail
ctx="${1:?build context}"
name="${2:?name:tag}"
ovm="${OVM:-ovm}"
ref="${REGISTRY:?registry host}/${name}"

$ovm validate "$ctx/Ovmfile" --context "$ctx" --json >/dev/null
$ovm build "$ctx" -t "$ref" --build-arg KERNEL_ROOT="${KERNEL_ROOT:?}" \
  --sign --provenance --key "${OVM_KEY:?}" --push --json > build.json
digest="$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync("build.json","utf8")).result.digest)')"
$ovm verify "${ref%:*}@${digest}" --key "${OVM_PUB:?}" --json > verify.json
echo "built, signed, pushed and verified ${ref}@${digest}"
