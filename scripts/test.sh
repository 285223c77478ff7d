#!/usr/bin/env bash
# The project's one test command: deps, build, fixtures, vitest on the host,
# the KVM suite (test/kvm) inside the nested KVM guest, one summary of both.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
npm run build --silent
# The native VMM: the Node addon (node-gyp) and the stand-alone tools and C tests (make).
mkdir -p test/.cache
npm run build:native --silent >test/.cache/native-build.log 2>&1 || { tail -n 40 test/.cache/native-build.log; echo 'test: building native/ failed (log: test/.cache/native-build.log)' >&2; exit 1; }
bash scripts/fixtures.sh >/dev/null

report=test/.cache/vitest-report.json
kvm_report=test/.cache/vitest-kvm.json
mkdir -p test/.cache
rm -f "$report" "$kvm_report"

set +e
npx vitest run --reporter=default --reporter=json --outputFile="$report"
vitest_rc=$?
# The KVM suite needs a /dev/kvm that works: run it inside the nested guest
# (scripts/nested-kvm.sh). No report from it counts as a failure in the summary.
# The outer guest runs Debian's kernel on QEMU's emulated SVM (TCG); that kernel
# has been seen to panic there, once, two minutes into a run (a stack overflow
# in its interrupt entry, in the outer guest, not in ours). A panic of the
# outer guest is not a test result: its console is kept and the suite runs
# once more. Any other failure, and a second panic, count as they are.
nested_log=test/.cache/nested/console.log
for attempt in 1 2; do
  echo "test: running test/kvm inside the nested KVM guest (scripts/nested-kvm.sh)"
  rm -f "$kvm_report"
  bash scripts/nested-kvm.sh --timeout 1200 --log "$nested_log" -- \
    node_modules/.bin/vitest run test/kvm --reporter=default --reporter=json --outputFile="$kvm_report"
  kvm_rc=$?
  if ((kvm_rc == 125 && attempt == 1)) && grep -aq 'Kernel panic' "$nested_log"; then
    cp -f "$nested_log" "$nested_log.panic"
    echo "test: the nested guest's own kernel panicked (console kept in $nested_log.panic); running test/kvm once more" >&2
    continue
  fi
  break
done
node scripts/vitest-summary.mjs "$report" "$kvm_report"
summary_rc=$?
set -e

# No output after the summary: its "N passed, N failed" stays the last line.
if ((vitest_rc != 0 || kvm_rc != 0 || summary_rc != 0)); then exit 1; fi
