import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { rssBytes } from '../../bench/daemon-memory.js';
import { type Benchmark, formatResult, type MetricBenchmark, percentile, roundsFor, runBenchmark, runMetricBenchmark, stats } from '../../bench/lib.js';
import { benchmarks } from '../../bench/registry.js';

test('percentile interpolates between ranks; stats summarise', () => {
  assert.equal(percentile([5], 90), 5);
  assert.equal(percentile([3, 1, 2], 50), 2);
  assert.equal(percentile([1, 2, 3, 4], 50), 2.5);
  assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9.1);
  assert.equal(percentile([10, 20], 0), 10);
  assert.equal(percentile([10, 20], 100), 20);
  assert.throws(() => percentile([], 50));
  assert.deepEqual(stats([4, 1, 3, 2]), { n: 4, min: 1, median: 2.5, p90: 3.7, max: 4, mean: 2.5 });
});

test('BENCH_ROUNDS overrides the benchmark, which overrides the default', () => {
  const b = { name: 'x', description: '', candidate() {}, baseline() {}, rounds: 7 };
  assert.equal(roundsFor(b, {}), 7);
  assert.equal(roundsFor({ ...b, rounds: undefined }, {}), 20);
  assert.equal(roundsFor(b, { BENCH_ROUNDS: '3' }), 3);
  assert.equal(roundsFor(b, { BENCH_ROUNDS: 'lots' }), 7);
  assert.equal(roundsFor(b, { BENCH_ROUNDS: '0' }), 7);
});

/** A clock that only moves when the fake workloads say so. */
function fakeBench(candidateMs: number[], baselineMs: number[], extra: Partial<Benchmark> = {}) {
  let t = 0;
  const order: string[] = [];
  let c = 0;
  let s = 0;
  const bench: Benchmark = {
    name: 'fake',
    description: 'fake work',
    target: 2,
    setup: () => {
      order.push('setup');
    },
    candidate: () => {
      order.push('A');
      t += candidateMs[c++ % candidateMs.length] as number;
    },
    baseline: () => {
      order.push('B');
      t += baselineMs[s++ % baselineMs.length] as number;
    },
    teardown: () => {
      order.push('teardown');
    },
    ...extra,
  };
  return { bench, order, now: () => t };
}

test('candidate and baseline run interleaved after setup and one warm-up round; teardown last', async () => {
  // The first entry of each list is consumed by the warm-up round and must not be measured.
  const { bench, order, now } = fakeBench([1000, 30, 10, 20], [1000, 10, 10, 10]);
  const r = await runBenchmark(bench, { rounds: 3, now });
  assert.deepEqual(order, ['setup', 'A', 'B', 'A', 'B', 'A', 'B', 'A', 'B', 'teardown']);
  assert.deepEqual(r.samples, { candidate: [30, 10, 20], baseline: [10, 10, 10] });
  assert.equal(r.candidate?.median, 20);
  assert.equal(r.baseline?.median, 10);
  assert.equal(r.ratio, 2);
  assert.equal(r.met, true, 'a ratio equal to the target meets it');
  assert.equal(r.error, undefined);
  const text = formatResult(r);
  assert.match(text, /ratio 2\.00×\s+target ≤ 2×: met/);
  assert.match(text, /candidate\s+median\s+20\.0 ms\s+p90\s+28\.0 ms/);
});

test('a missed target is reported, not thrown', async () => {
  const { bench, now } = fakeBench([50], [10]);
  const r = await runBenchmark(bench, { rounds: 2, now });
  assert.equal(r.ratio, 5);
  assert.equal(r.met, false);
  assert.match(formatResult(r), /NOT met/);
});

test('a failing candidate or setup is an error result, and teardown still runs', async () => {
  const failing = fakeBench([1], [1], {
    candidate: () => {
      throw new Error('banger exited 1');
    },
  });
  const r = await runBenchmark(failing.bench, { rounds: 2, now: failing.now });
  assert.equal(r.error, 'banger exited 1');
  assert.equal(r.ratio, undefined);
  assert.equal(failing.order.at(-1), 'teardown');
  assert.match(formatResult(r), /ERROR: banger exited 1/);

  const badSetup = fakeBench([1], [1], {
    setup: () => {
      throw new Error('no daemon');
    },
  });
  const r2 = await runBenchmark(badSetup.bench, { rounds: 2, now: badSetup.now });
  assert.equal(r2.error, 'no daemon');
  assert.deepEqual(badSetup.order, ['teardown']);
});

test('the registry: unique names, descriptions, positive targets', () => {
  const names = benchmarks.map((b) => b.name);
  assert.equal(new Set(names).size, names.length);
  assert.ok(names.includes('cli-status'));
  for (const b of benchmarks) {
    assert.ok(b.description.length > 10, b.name);
    if ('target' in b && b.target !== undefined) assert.ok(b.target > 0, b.name);
  }
});

test('notes are taken after the last round and printed under the ratio', async () => {
  const { bench, order, now } = fakeBench([20], [10], {
    notes: () => {
      order.push('notes');
      return ['where the time went'];
    },
  });
  const r = await runBenchmark(bench, { rounds: 2, now });
  assert.deepEqual(order.slice(-2), ['notes', 'teardown']);
  assert.deepEqual(r.notes, ['where the time went']);
  assert.match(formatResult(r), /ratio 2\.00×.*\n {2}where the time went$/);
});

test('a metric benchmark runs once: each value against its target (≤ meets it), printed with its reference', async () => {
  const order: string[] = [];
  const b: MetricBenchmark = {
    kind: 'metrics',
    name: 'mem',
    description: 'fake memory',
    setup: () => void order.push('setup'),
    measure: async () => {
      order.push('measure');
      return [
        { name: 'idle', value: 80, unit: 'MiB', target: 80, reference: { label: 'bare node', value: 40 } },
        { name: 'per VM', value: 1.5, unit: 'MiB', target: 1, detail: '3 VMs' },
        { name: 'info', value: 7, unit: 'MiB' },
      ];
    },
    teardown: () => void order.push('teardown'),
  };
  assert.equal(roundsFor(b, { BENCH_ROUNDS: '9' }), 1);
  const r = await runMetricBenchmark(b);
  assert.deepEqual(order, ['setup', 'measure', 'teardown']);
  assert.deepEqual(
    r.metrics?.map((m) => [m.name, m.met]),
    [
      ['idle', true],
      ['per VM', false],
      ['info', undefined],
    ],
  );
  const text = formatResult(r);
  assert.match(text, /idle\s+80\.00 MiB\s+bare node: 40\.00 MiB\s+target ≤ 80\.00 MiB: met/);
  assert.match(text, /per VM\s+1\.50 MiB\s+target ≤ 1\.00 MiB: NOT met\n\s+\(3 VMs\)/);
  assert.doesNotMatch(text, /info.*target/);
});

test('a failing metric benchmark is an error result, and teardown still runs', async () => {
  let tornDown = false;
  const r = await runMetricBenchmark({
    kind: 'metrics',
    name: 'mem',
    description: 'fake memory',
    measure: async () => {
      throw new Error('daemon died');
    },
    teardown: () => {
      tornDown = true;
    },
  });
  assert.equal(r.error, 'daemon died');
  assert.equal(r.metrics, undefined);
  assert.ok(tornDown);
  assert.match(formatResult(r), /ERROR: daemon died/);
});

test('rssBytes reads a process resident set: 64 MiB written by a child show up in it', async () => {
  const child = (code: string) =>
    spawn(process.execPath, ['-e', `${code}; process.stdout.write('ready'); setInterval(() => {}, 1 << 30)`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const bare = child('0');
  const big = child('globalThis.b = Buffer.alloc(64 * 1024 * 1024, 1)');
  try {
    await Promise.all([once(bare.stdout, 'data'), once(big.stdout, 'data')]);
    const diff = (await rssBytes(big.pid as number)) - (await rssBytes(bare.pid as number));
    assert.ok(diff >= 60 * 1024 * 1024, `difference ${diff} bytes`);
  } finally {
    bare.kill('SIGKILL');
    big.kill('SIGKILL');
  }
});
