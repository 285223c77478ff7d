#!/usr/bin/env node
// Summarize a vitest JSON report (--reporter=json --outputFile=REPORT.json).
// Prints failed test names, then as the last line: "N passed, N failed[, N skipped]".
// Exit 1 when anything failed, no test ran, or the report is missing/unreadable.
import { readFileSync } from 'node:fs';
import path from 'node:path';

const file = process.argv[2];
if (!file) {
  console.error('usage: node scripts/vitest-summary.mjs REPORT.json');
  process.exit(1);
}

let report;
try {
  report = JSON.parse(readFileSync(file, 'utf8'));
} catch (err) {
  console.error(`vitest-summary: cannot read report ${file}: ${err.code ?? err.message}`);
  process.exit(1);
}
if (!report || typeof report !== 'object') {
  console.error(`vitest-summary: ${file} is not a vitest JSON report`);
  process.exit(1);
}

const num = (v) => (Number.isFinite(v) ? v : 0);
const files = Array.isArray(report.testResults) ? report.testResults : [];
const rel = (p) => (typeof p === 'string' ? path.relative(process.cwd(), p) || p : '?');
const firstLine = (s) => String(s ?? '').split('\n').find((l) => l.trim() !== '')?.trim() ?? '';

// Counts from the assertions themselves; fall back to vitest's totals if absent.
let passed = 0, failed = 0, skipped = 0, seen = 0;
const failures = [];
for (const f of files) {
  const tests = Array.isArray(f.assertionResults) ? f.assertionResults : [];
  for (const t of tests) {
    seen++;
    if (t.status === 'passed') passed++;
    else if (t.status === 'failed') {
      failed++;
      const name = t.fullName || [...(t.ancestorTitles ?? []), t.title].join(' > ');
      failures.push(`FAIL ${rel(f.name)} > ${name}`);
      const why = firstLine(t.failureMessages?.[0]);
      if (why) failures.push(`     ${why}`);
    } else skipped++; // skipped, pending, todo, disabled
  }
  // A file that failed to load/collect has no failed assertions but still failed.
  if (f.status === 'failed' && !tests.some((t) => t.status === 'failed')) {
    failed++;
    failures.push(`FAIL ${rel(f.name)} (file failed to run)`);
    const why = firstLine(f.message);
    if (why) failures.push(`     ${why}`);
  }
}
if (seen === 0 && failed === 0) {
  passed = num(report.numPassedTests);
  failed = num(report.numFailedTests);
  skipped = num(report.numPendingTests) + num(report.numTodoTests);
}

for (const line of failures) console.log(line);
if (passed + failed === 0) console.error('vitest-summary: no tests ran');
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 || passed + failed === 0 ? 1 : 0);
