import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';

/**
 * A benchmark compares a candidate with a baseline measured on the same machine in the same run,
 * so the ratio stays meaningful on noisy or slow hosts where absolute times do not.
 */
export interface Benchmark {
  name: string;
  description: string;
  /** Goal for median(candidate) / median(baseline), e.g. 2 for "≤ 2.0×". Printed, never asserted. */
  target?: number;
  /** Measured rounds (each runs candidate then baseline once); BENCH_ROUNDS overrides it. */
  rounds?: number;
  /** Unmeasured rounds first, so cold caches do not skew the first samples (default 1). */
  warmup?: number;
  setup?(): Promise<void> | void;
  candidate(): Promise<void> | void;
  baseline(): Promise<void> | void;
  /** Unmeasured, right after each candidate run (e.g. kill its VM so it does not load the machine while the baseline runs). */
  afterCandidate?(): Promise<void> | void;
  /** Unmeasured, right after each baseline run. */
  afterBaseline?(): Promise<void> | void;
  /** Unmeasured, after each candidate/baseline pair (e.g. delete the VM a round created). */
  cleanup?(): Promise<void> | void;
  teardown?(): Promise<void> | void;
  /** Boots or reads the guest assets: `npm run bench` builds them first (scripts/guest-assets.sh), as `npm test` does. */
  needsGuestAssets?: boolean;
  /** Extra lines printed under the result (e.g. where the time went); called after the last round, before teardown. */
  notes?(): Promise<string[]> | string[];
}

/** One measured quantity with its bound, e.g. the daemon's idle RSS ≤ 80 MiB. */
export interface Metric {
  name: string;
  value: number;
  unit: string;
  /** Upper bound; met when value ≤ target. Printed, never asserted. */
  target?: number;
  /** What the value is set against on the same machine, e.g. a bare node process's RSS. */
  reference?: { label: string; value: number };
  /** How it was measured (counts, samples). */
  detail?: string;
}

/**
 * A benchmark that measures quantities (memory, counts) instead of timing a candidate against a
 * baseline. Its setup, measure and teardown run once; BENCH_ROUNDS does not apply.
 */
export interface MetricBenchmark {
  kind: 'metrics';
  name: string;
  description: string;
  needsGuestAssets?: boolean;
  setup?(): Promise<void> | void;
  measure(): Promise<Metric[]>;
  teardown?(): Promise<void> | void;
}

export type AnyBenchmark = Benchmark | MetricBenchmark;

export const isMetricBenchmark = (b: AnyBenchmark): b is MetricBenchmark => 'kind' in b && b.kind === 'metrics';

export interface Stats {
  n: number;
  min: number;
  median: number;
  p90: number;
  max: number;
  mean: number;
}

export interface BenchResult {
  name: string;
  description: string;
  rounds: number;
  /** Milliseconds. */
  candidate?: Stats;
  baseline?: Stats;
  /** median(candidate) / median(baseline). */
  ratio?: number;
  target?: number;
  met?: boolean;
  samples?: { candidate: number[]; baseline: number[] };
  notes?: string[];
  /** Metric benchmarks: each quantity, with `met` against its target. */
  metrics?: Array<Metric & { met?: boolean }>;
  error?: string;
}

export const DEFAULT_ROUNDS = 20;

/** Linear interpolation between closest ranks (numpy's default), p in [0, 100]. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) throw new Error('percentile of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const pos = ((sorted.length - 1) * p) / 100;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (pos - lo);
}

export function stats(values: number[]): Stats {
  return {
    n: values.length,
    min: Math.min(...values),
    median: percentile(values, 50),
    p90: percentile(values, 90),
    max: Math.max(...values),
    mean: values.reduce((s, v) => s + v, 0) / values.length,
  };
}

/** BENCH_ROUNDS wins (so a quick run needs no code change), then the benchmark's own, then the default. */
export function roundsFor(b: AnyBenchmark, env: NodeJS.ProcessEnv = process.env): number {
  const fromEnv = Number(env.BENCH_ROUNDS);
  if (isMetricBenchmark(b)) return 1;
  if (env.BENCH_ROUNDS && Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv;
  return b.rounds ?? DEFAULT_ROUNDS;
}

async function timed(fn: () => Promise<void> | void, now: () => number): Promise<number> {
  const t0 = now();
  await fn();
  return now() - t0;
}

/**
 * Runs candidate and baseline interleaved (A, B, A, B, …) so drift in machine load hits both
 * sides alike. Teardown always runs; a failure is reported in the result, not thrown.
 */
/** Runs a benchmark's body, then always its teardown; either failure ends up in `result.error` (the body's first). */
async function guarded(result: BenchResult, teardown: (() => void | Promise<void>) | undefined, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    result.error = e instanceof Error ? e.message : String(e);
  } finally {
    try {
      await teardown?.();
    } catch (e) {
      result.error ??= `teardown failed: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
}

export async function runBenchmark(
  b: Benchmark,
  opts: { rounds?: number; now?: () => number; onRound?: (round: number, candidateMs: number, baselineMs: number) => void } = {},
): Promise<BenchResult> {
  const rounds = opts.rounds ?? roundsFor(b);
  const now = opts.now ?? (() => performance.now());
  const result: BenchResult = { name: b.name, description: b.description, rounds };
  if (b.target !== undefined) result.target = b.target;
  const cand: number[] = [];
  const base: number[] = [];
  await guarded(result, b.teardown, async () => {
    await b.setup?.();
    for (let i = 0; i < (b.warmup ?? 1); i++) {
      await b.candidate();
      await b.afterCandidate?.();
      await b.baseline();
      await b.afterBaseline?.();
      await b.cleanup?.();
    }
    for (let i = 0; i < rounds; i++) {
      const c = await timed(() => b.candidate(), now);
      await b.afterCandidate?.();
      const s = await timed(() => b.baseline(), now);
      await b.afterBaseline?.();
      await b.cleanup?.();
      cand.push(c);
      base.push(s);
      opts.onRound?.(i + 1, c, s);
    }
    const notes = await b.notes?.();
    if (notes?.length) result.notes = notes;
  });
  if (result.error || cand.length === 0) return result;
  result.candidate = stats(cand);
  result.baseline = stats(base);
  result.ratio = result.candidate.median / result.baseline.median;
  if (b.target !== undefined) result.met = result.ratio <= b.target;
  result.samples = { candidate: cand, baseline: base };
  return result;
}

/** Runs a metric benchmark once: setup, measure, teardown (always). A failure is reported in the result. */
export async function runMetricBenchmark(b: MetricBenchmark): Promise<BenchResult> {
  const result: BenchResult = { name: b.name, description: b.description, rounds: 1 };
  await guarded(result, b.teardown, async () => {
    await b.setup?.();
    result.metrics = (await b.measure()).map((m) => (m.target === undefined ? { ...m } : { ...m, met: m.value <= m.target }));
  });
  return result;
}

const ms = (v: number) => `${v.toFixed(1).padStart(7)} ms`;
const num = (v: number) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));

function formatMetrics(r: BenchResult, metrics: NonNullable<BenchResult['metrics']>): string[] {
  const width = Math.max(...metrics.map((m) => m.name.length));
  return metrics
    .flatMap((m) => {
      const ref = m.reference ? `   ${m.reference.label}: ${num(m.reference.value)} ${m.unit}` : '';
      const target = m.target === undefined ? '' : `   target ≤ ${num(m.target)} ${m.unit}: ${m.met ? 'met' : 'NOT met'}`;
      const line = `  ${m.name.padEnd(width)}  ${num(m.value).padStart(8)} ${m.unit}${ref}${target}`;
      return m.detail ? [line, `  ${' '.repeat(width)}  (${m.detail})`] : [line];
    })
    .concat(r.notes?.map((n) => `  ${n}`) ?? []);
}

export function formatResult(r: BenchResult): string {
  const lines = [`${r.name}: ${r.description}`];
  if (r.metrics && !r.error) return [...lines, ...formatMetrics(r, r.metrics)].join('\n');
  if (r.error || !r.candidate || !r.baseline || r.ratio === undefined) {
    lines.push(`  ERROR: ${r.error ?? 'no samples'}`);
    return lines.join('\n');
  }
  lines.push(`  ${r.rounds} rounds, interleaved candidate/baseline`);
  lines.push(`  candidate  median ${ms(r.candidate.median)}   p90 ${ms(r.candidate.p90)}`);
  lines.push(`  baseline   median ${ms(r.baseline.median)}   p90 ${ms(r.baseline.p90)}`);
  const target = r.target === undefined ? '' : `   target ≤ ${String(r.target)}×: ${r.met ? 'met' : 'NOT met'}`;
  lines.push(`  ratio ${r.ratio.toFixed(2)}×${target}`);
  for (const n of r.notes ?? []) lines.push(`  ${n}`);
  return lines.join('\n');
}

/** Runs a command to completion; rejects with its stderr when it exits non-zero. */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.stderr.on('data', (c) => {
      err += c;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}: ${err.trim()}`));
    });
  });
}
