// `npm run bench [-- name...]`: runs the registered benchmarks (all, or the named ones), prints
// candidate vs baseline with the ratio and its target (or, for metric benchmarks, each value and its
// target), and writes .bench/last.json. Guest assets are built first when a selected benchmark boots.
// Targets are reported, never enforced: the exit status is non-zero only when a benchmark broke.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { ensureGuestAssets } from './assets.js';
import { type BenchResult, formatResult, isMetricBenchmark, roundsFor, runBenchmark, runMetricBenchmark } from './lib.js';
import { benchmarks, ROOT } from './registry.js';

function usage(): string {
  return `usage: node dist/bench/run.js [--list] [name...]\n  BENCH_ROUNDS=N overrides every timed benchmark's round count\n  BENCH_ACCEL=tcg|kvm  accelerator of the VM benchmarks (default tcg)\n  BENCH_OPS=1000 BENCH_OPS_WARMUP=500 BENCH_VMS=3  daemon-memory's operations and running VMs\nThe VM benchmarks build the guest assets first (scripts/guest-assets.sh, cached), as npm test does.\n\nbenchmarks:\n${benchmarks.map((b) => `  ${b.name.padEnd(16)} ${b.description}`).join('\n')}\n`;
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
  // The VM benchmarks build what they boot, as `npm test` does (cached after the first run).
  let assetsError: string | undefined;
  if (selected.some((b) => b.needsGuestAssets)) {
    process.stderr.write('guest assets: scripts/guest-assets.sh\n');
    assetsError = await ensureGuestAssets().then(
      () => undefined,
      (e: Error) => e.message,
    );
  }
  let current: (typeof benchmarks)[number] | undefined;
  // Ctrl-C must not leave a benchmark's daemon or temp dir behind.
  process.once('SIGINT', () => {
    void Promise.resolve(current?.teardown?.()).finally(() => process.exit(130));
  });
  for (const b of selected) {
    current = b;
    const rounds = roundsFor(b);
    let r: BenchResult;
    if (b.needsGuestAssets && assetsError) {
      r = { name: b.name, description: b.description, rounds, error: assetsError };
    } else if (isMetricBenchmark(b)) {
      process.stderr.write(`running ${b.name}…`);
      r = await runMetricBenchmark(b);
    } else {
      process.stderr.write(`running ${b.name} (${rounds} rounds)…`);
      r = await runBenchmark(b, {
        rounds,
        onRound: (i) => {
          if (process.stderr.isTTY) process.stderr.write(`\rrunning ${b.name} (${i}/${rounds})…   `);
        },
      });
    }
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
