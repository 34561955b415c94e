import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Benchmark, formatResult, percentile, roundsFor, runBenchmark, stats } from '../../bench/lib.js';
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
    if (b.target !== undefined) assert.ok(b.target > 0, b.name);
  }
});
