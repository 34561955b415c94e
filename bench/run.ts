// `npm run bench [-- name...]`: runs the registered benchmarks (all, or the named ones), prints
// candidate vs baseline with the ratio and its target, and writes .bench/last.json.
// Targets are reported, never enforced: the exit status is non-zero only when a benchmark broke.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { type BenchResult, formatResult, roundsFor, runBenchmark } from './lib.js';
import { benchmarks, ROOT } from './registry.js';

function usage(): string {
  return `usage: node dist/bench/run.js [--list] [name...]\n  BENCH_ROUNDS=N overrides every benchmark's round count\n\nbenchmarks:\n${benchmarks.map((b) => `  ${b.name.padEnd(16)} ${b.description}`).join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h') || argv.includes('--list')) {
    process.stdout.write(usage());
    return 0;
  }
  const unknown = argv.filter((n) => !benchmarks.some((b) => b.name === n));
  if (unknown.length) {
    process.stderr.write(`unknown benchmark ${unknown.map((n) => `"${n}"`).join(', ')}\n${usage()}`);
    return 2;
  }
  const selected = argv.length ? benchmarks.filter((b) => argv.includes(b.name)) : benchmarks;
  const results: BenchResult[] = [];
  let current: (typeof benchmarks)[number] | undefined;
  // Ctrl-C must not leave a benchmark's daemon or temp dir behind.
  process.once('SIGINT', () => {
    void Promise.resolve(current?.teardown?.()).finally(() => process.exit(130));
  });
  for (const b of selected) {
    current = b;
    const rounds = roundsFor(b);
    process.stderr.write(`running ${b.name} (${rounds} rounds)…`);
    const r = await runBenchmark(b, {
      rounds,
      onRound: (i) => {
        if (process.stderr.isTTY) process.stderr.write(`\rrunning ${b.name} (${i}/${rounds})…   `);
      },
    });
    process.stderr.write('\n');
    process.stdout.write(`${formatResult(r)}\n\n`);
    results.push(r);
    current = undefined;
  }
  const dir = join(ROOT, '.bench');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'last.json');
  writeFileSync(
    file,
    `${JSON.stringify({ at: new Date().toISOString(), node: process.version, platform: `${process.platform}/${process.arch}`, cpus: cpus().length, results }, null, 2)}\n`,
  );
  process.stdout.write(`results written to ${file}\n`);
  return results.some((r) => r.error) ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
