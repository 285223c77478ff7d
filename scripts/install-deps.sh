#!/usr/bin/env bash
# Install the Debian packages and npm dependencies the project needs.
# Idempotent; prints a single summary line on success.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
PKGS=(skopeo umoci busybox-static qemu-utils cpio e2fsprogs zstd lz4 docker-registry apache2-utils qemu-system-x86 tmux gcc libc6-dev)

log="$(mktemp -t ovm-install-deps.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
fail() {
  echo "install-deps: $*" >&2
  if [[ -s "$log" ]]; then echo "--- last output ---" >&2; tail -n 30 "$log" >&2; fi
  exit 1
}

missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -E); else fail "need root to install: ${missing[*]}"; fi
  else
    SUDO=()
  fi
  "${SUDO[@]}" apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
  "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || fail "apt-get install failed for: ${missing[*]}"
  apt_msg="installed ${missing[*]}"
else
  apt_msg="apt packages present"
fi

if [[ ! -f package-lock.json ]]; then
  npm_msg="no package-lock.json, npm ci skipped"
elif [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund >>"$log" 2>&1 || fail "npm ci failed"
  npm_msg="npm ci ran"
else
  npm_msg="node_modules up to date"
fi

echo "install-deps: ${apt_msg}; ${npm_msg}"
