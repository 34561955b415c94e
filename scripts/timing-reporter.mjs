// A node:test reporter for scripts/test.sh: one JSON line per test file (wall time, passed or not)
// and one per skipped or todo test (with its reason), for the summary printed at the end of
// `npm test` (scripts/test-summary.mjs). It runs beside the normal reporter, never instead of it:
//   node --test --test-reporter=tap --test-reporter-destination=stdout \
//     --test-reporter=./scripts/timing-reporter.mjs --test-reporter-destination=<file> …
// A file's time is its own `test:complete` event (Node 20 and 24 both report one per file, named by
// its path); when a runtime does not, the sum of its top-level tests stands in (marked "approx").
import { relative, resolve } from 'node:path';

export default async function* timingReporter(source) {
  const cwd = process.cwd();
  const files = new Map(); // file → { ms, ok, approx }
  const topLevel = new Map(); // file → summed top-level test durations, in case no file event comes
  const rel = (f) => (f ? relative(cwd, f) || f : '(unknown file)');
  for await (const event of source) {
    const d = event.data ?? {};
    if (event.type === 'test:complete') {
      const ms = d.details?.duration_ms ?? 0;
      const isFile = d.file && typeof d.name === 'string' && d.nesting === 0 && resolve(cwd, d.name) === d.file;
      if (isFile) {
        files.set(d.file, { ms, ok: d.details?.passed !== false, approx: false });
        continue;
      }
      if (d.nesting === 0 && d.file) topLevel.set(d.file, (topLevel.get(d.file) ?? 0) + ms);
      if (d.file && d.details?.passed === false && !files.has(d.file)) files.set(d.file, { ms: 0, ok: false, approx: true, pending: true });
      continue;
    }
    if (event.type === 'test:pass' || event.type === 'test:fail') {
      const kind = d.skip !== undefined && d.skip !== false ? 'skip' : d.todo !== undefined && d.todo !== false ? 'todo' : undefined;
      if (!kind) continue;
      const reason = typeof d[kind] === 'string' ? d[kind] : '(no reason given)';
      yield `${JSON.stringify({ kind, file: rel(d.file), name: d.name, reason })}\n`;
    }
  }
  for (const [file, ms] of topLevel) {
    const f = files.get(file);
    if (!f) files.set(file, { ms, ok: true, approx: true });
    else if (f.pending) files.set(file, { ms, ok: false, approx: true });
  }
  for (const [file, f] of files) yield `${JSON.stringify({ kind: 'file', file: rel(file), ms: Math.round(f.ms), ok: f.ok, approx: f.approx })}\n`;
}
