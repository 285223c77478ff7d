#!/usr/bin/env node
// Summarize vitest JSON reports (--reporter=json --outputFile=REPORT.json): the main
// run's, then any more (the nested KVM run's), counted together.
// Prints failed test names, then as the last line: "N passed, N failed[, N skipped]".
// Exit 1 when anything failed, no test ran, or the report is missing/unreadable.
import { readFileSync } from 'node:fs';
import path from 'node:path';

const [file, ...extra] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/vitest-summary.mjs REPORT.json [MORE.json...]');
  process.exit(1);
}

function load(f) {
  let report;
  try {
    report = JSON.parse(readFileSync(f, 'utf8'));
  } catch (err) {
    return { error: `cannot read report ${f}: ${err.code ?? err.message}` };
  }
  if (!report || typeof report !== 'object') return { error: `${f} is not a vitest JSON report` };
  return { report };
}

const num = (v) => (Number.isFinite(v) ? v : 0);
const rel = (p) => (typeof p === 'string' ? path.relative(process.cwd(), p) || p : '?');
const firstLine = (s) => String(s ?? '').split('\n').find((l) => l.trim() !== '')?.trim() ?? '';

let passed = 0, failed = 0, skipped = 0;
const failures = [];

function count(report) {
  const files = Array.isArray(report.testResults) ? report.testResults : [];
  // Counts from the assertions themselves; fall back to vitest's totals if absent.
  let p = 0, f = 0, s = 0, seen = 0;
  for (const tf of files) {
    const tests = Array.isArray(tf.assertionResults) ? tf.assertionResults : [];
    for (const t of tests) {
      seen++;
      if (t.status === 'passed') p++;
      else if (t.status === 'failed') {
        f++;
        const name = t.fullName || [...(t.ancestorTitles ?? []), t.title].join(' > ');
        failures.push(`FAIL ${rel(tf.name)} > ${name}`);
        const why = firstLine(t.failureMessages?.[0]);
        if (why) failures.push(`     ${why}`);
      } else s++; // skipped, pending, todo, disabled
    }
    // A file that failed to load/collect has no failed assertions but still failed.
    if (tf.status === 'failed' && !tests.some((t) => t.status === 'failed')) {
      f++;
      failures.push(`FAIL ${rel(tf.name)} (file failed to run)`);
      const why = firstLine(tf.message);
      if (why) failures.push(`     ${why}`);
    }
  }
  if (seen === 0 && f === 0) {
    p = num(report.numPassedTests);
    f = num(report.numFailedTests);
    s = num(report.numPendingTests) + num(report.numTodoTests);
  }
  passed += p;
  failed += f;
  skipped += s;
}

// The first report is the main run: without it nothing can be said.
const main = load(file);
if (main.error) {
  console.error(`vitest-summary: ${main.error}`);
  process.exit(1);
}
count(main.report);
// Further reports (the nested KVM run): a missing one is one failure, named.
for (const f of extra) {
  const r = load(f);
  if (r.error) {
    failed++;
    failures.push(`FAIL ${rel(f)}: no test report (${r.error}); the run that should have written it failed before its tests ran`);
    if (f.includes('kvm')) failures.push('     see the output above and test/.cache/nested/console.log');
  } else count(r.report);
}

for (const line of failures) console.log(line);
if (passed + failed === 0) console.error('vitest-summary: no tests ran');
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 || passed + failed === 0 ? 1 : 0);
