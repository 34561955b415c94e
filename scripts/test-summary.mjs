// The summary at the end of `npm test` (scripts/test.sh): how long each stage took, how long each
// test file took (slowest first; every failed file), and every skipped or todo test with its reason.
//   node scripts/test-summary.mjs <report dir>
// The dir holds stages.tsv (name, milliseconds, status per line, from test.sh) and one
// <n>-<stage>.jsonl per node --test run (from scripts/timing-reporter.mjs).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: test-summary.mjs <report dir>\n');
  process.exit(2);
}
/** Files listed per stage, slowest first (failed files are always listed). */
const TOP = Number(process.env.BANGER_TEST_SUMMARY_FILES ?? 15);

const secs = (ms) => `${(ms / 1000).toFixed(1)} s`.padStart(9);
const out = [];

const stagesFile = join(dir, 'stages.tsv');
const stages = existsSync(stagesFile)
  ? readFileSync(stagesFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [name, ms, status] = l.split('\t');
        return { name, ms: Number(ms), status };
      })
  : [];
out.push('', '=== summary ===', 'stages:');
for (const s of stages) out.push(`  ${secs(s.ms)}  ${s.name}${s.status === 'ok' ? '' : `  [${s.status}]`}`);
out.push(`  ${secs(stages.reduce((a, s) => a + s.ms, 0))}  total`);

const skips = [];
for (const f of readdirSync(dir)
  .filter((n) => n.endsWith('.jsonl'))
  .sort()) {
  const rows = readFileSync(join(dir, f), 'utf8')
    .split('\n')
    .filter(Boolean)
    .flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
  const stage = f.replace(/^\d+-/, '').replace(/\.jsonl$/, '');
  const files = rows.filter((r) => r.kind === 'file').sort((a, b) => b.ms - a.ms);
  const total = files.reduce((a, r) => a + r.ms, 0);
  out.push('', `files of ${stage} (${files.length}, ${(total / 1000).toFixed(1)} s summed; slowest first):`);
  files.forEach((r, i) => {
    if (i < TOP || !r.ok) out.push(`  ${secs(r.ms)}  ${r.file}${r.approx ? ' (sum of its tests)' : ''}${r.ok ? '' : '  [FAILED]'}`);
  });
  const hidden = files.filter((r, i) => i >= TOP && r.ok).length;
  if (hidden) out.push(`  … and ${hidden} more (full list: ${join(dir, f)})`);
  for (const r of rows) if (r.kind === 'skip' || r.kind === 'todo') skips.push({ stage, ...r });
}

out.push('', skips.length ? `skipped or todo tests (${skips.length}):` : 'skipped or todo tests: none');
for (const s of skips) out.push(`  [${s.stage}] ${s.file}: ${s.name} (${s.kind}: ${s.reason})`);
process.stdout.write(`${out.join('\n')}\n`);
