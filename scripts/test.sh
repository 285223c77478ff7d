#!/usr/bin/env bash
# The project's one test command: deps, build, fixtures, vitest, summary.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
npm run build --silent
bash scripts/fixtures.sh >/dev/null

report=test/.cache/vitest-report.json
mkdir -p test/.cache
rm -f "$report"

set +e
npx vitest run --reporter=default --reporter=json --outputFile="$report"
vitest_rc=$?
node scripts/vitest-summary.mjs "$report"
summary_rc=$?
set -e

# No output after the summary: its "N passed, N failed" stays the last line.
if ((vitest_rc != 0 || summary_rc != 0)); then exit 1; fi
