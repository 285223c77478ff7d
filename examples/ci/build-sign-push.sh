#!/usr/bin/env bash
# Build an Ovmfile, sign it, push it and verify what the registry holds: the
# generic CI job. Every ovm call uses --json, so the log holds only results,
# and each step's exit code is ovm's documented one (README: Exit codes).
#
# With a key (works anywhere):
#   REGISTRY=localhost:5000 KERNEL_ROOT=/path/to/linux-image \
#   OVM_KEY=release.key OVM_PUB=release.pub OVM_KEY_PASSWORD=... \
#   bash examples/ci/build-sign-push.sh CONTEXT NAME:TAG
# Keyless (no OVM_KEY; the CI's OIDC token: GitHub Actions with
# `id-token: write`, or SIGSTORE_ID_TOKEN), verified by identity:
#   REGISTRY=ghcr.io/acme KERNEL_ROOT=... \
#   OVM_IDENTITY=https://github.com/acme/vms/.github/workflows/vm.yml@refs/heads/main \
#   OVM_ISSUER=https://token.actions.githubusercontent.com OVM_TRUSTED_ROOT=trusted_root.json \
#   bash examples/ci/build-sign-push.sh CONTEXT NAME:TAG
set -euo pipefail
ctx="${1:?build context}"
name="${2:?name:tag}"
ovm="${OVM:-ovm}"
ref="${REGISTRY:?registry host}/${name}"

if [[ -n "${OVM_KEY:-}" ]]; then
  sign=(--key "$OVM_KEY")
  trust=(--key "${OVM_PUB:?OVM_PUB: the public key that verifies OVM_KEY}")
else
  sign=()
  trust=(--certificate-identity "${OVM_IDENTITY:?OVM_IDENTITY: the signer identity to verify (or set OVM_KEY)}"
    --certificate-oidc-issuer "${OVM_ISSUER:?OVM_ISSUER: the OIDC issuer of that identity}")
  [[ -n "${OVM_TRUSTED_ROOT:-}" ]] && trust+=(--trusted-root "$OVM_TRUSTED_ROOT")
fi

$ovm validate "$ctx/Ovmfile" --context "$ctx" --json >/dev/null
$ovm build "$ctx" -t "$ref" --build-arg KERNEL_ROOT="${KERNEL_ROOT:?}" \
  --sign --provenance "${sign[@]}" --push --json > build.json
digest="$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync("build.json","utf8")).result.digest)')"
$ovm verify "${ref%:*}@${digest}" "${trust[@]}" --json > verify.json
echo "built, signed, pushed and verified ${ref}@${digest}"
