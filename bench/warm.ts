import type { Operation, Snapshot } from '../src/api/schemas.js';
import { type Benchmark, type MetricBenchmark, percentile } from './lib.js';
import { nsHome } from './vm.js';

/**
 * Warm start (docs/snapshots.md) against cold boots of the same image and size, each side in the
 * same daemon inside a private network namespace (vm.ts nsHome, image `debian-bookworm`): `vm
 * create` from the warm pool vs `vm create --cold`, `vm fork --count 3` vs three cold creates at once, and what a snapshot of a running
 * 1 GiB VM costs.
 */
function warmHome(tag: string, memoryMib = 512) {
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  const home = nsHome(`w${tag}`, `accel = "${accel}"\n[vm_defaults]\nvcpu = 2\nmemory_mib = ${memoryMib}\ndisk_size = "1G"\n`);
  return {
    ...home,
    accel,
    /** The daemon's own time of the last operation on `target` (ms). */
    async opMs(target: string, kind: string): Promise<number> {
      const { operations } = JSON.parse(await home.banger('daemon', 'ops', '--json')) as { operations: Operation[] };
      const op = operations.filter((o) => o.target === target && o.kind === kind && o.endedAt).pop();
      if (!op?.endedAt) throw new Error(`no finished ${kind} operation on ${target}`);
      return Date.parse(op.endedAt) - Date.parse(op.createdAt);
    },
  };
}

const median = (xs: number[]) => percentile(xs, 50);

/** `vm create` restored from the image's warm snapshot vs `vm create --cold`, both until the agent answers. */
export function warmCreateBenchmark(): Benchmark {
  const h = warmHome('c');
  let n = 0;
  const warmOps: number[] = [];
  const coldOps: number[] = [];
  return {
    name: 'warm-create',
    needsGuestAssets: true,
    description: `\`vm create\` from the warm pool → agent ready vs \`vm create --cold\` of the same image and size (${h.accel}; target end to end ≤ 0.1×, daemon op ≤ 0.05×)`,
    target: 0.1,
    rounds: 5,
    warmup: 1,
    async setup() {
      await h.setup();
      await h.banger('image', 'warm', 'debian-bookworm');
    },
    async candidate() {
      n++;
      await h.banger('vm', 'create', '--name', `warm-${n}`, '--image', 'debian-bookworm', '--wait-for', 'agent');
    },
    async baseline() {
      await h.banger('vm', 'create', '--name', `cold-${n}`, '--image', 'debian-bookworm', '--wait-for', 'agent', '--cold');
    },
    async afterCandidate() {
      warmOps.push(await h.opMs(`warm-${n}`, 'vm.create'));
      await h.banger('vm', 'delete', `warm-${n}`);
    },
    async afterBaseline() {
      coldOps.push(await h.opMs(`cold-${n}`, 'vm.create'));
      await h.banger('vm', 'delete', `cold-${n}`);
    },
    notes: () => {
      // The warmup round is in the lists too: the medians are of the measured rounds.
      const w = warmOps.slice(-5);
      const c = coldOps.slice(-5);
      return [
        `daemon operation time: warm ${median(w).toFixed(0)} ms vs cold ${median(c).toFixed(0)} ms = ${(median(w) / median(c)).toFixed(3)}× (target ≤ 0.05×)`,
      ];
    },
    teardown: h.teardown,
  };
}

/** `vm fork --count 3` of a running VM until all three are ready vs three cold creates at once. */
export function forkBenchmark(): Benchmark {
  const h = warmHome('f');
  let n = 0;
  return {
    name: 'vm-fork',
    needsGuestAssets: true,
    description: `\`vm fork <vm> --count 3\` → all ready vs three cold \`vm create\` at once (${h.accel}; target ≤ 0.1×)`,
    target: 0.1,
    rounds: 3,
    warmup: 1,
    async setup() {
      await h.setup();
      await h.banger('vm', 'create', '--name', 'src', '--image', 'debian-bookworm');
    },
    async candidate() {
      n++;
      await h.banger('vm', 'fork', 'src', '--count', '3', '--name', `f${n}a`, `f${n}b`, `f${n}c`);
    },
    async baseline() {
      await Promise.all(['a', 'b', 'c'].map((k) => h.banger('vm', 'create', '--name', `c${n}${k}`, '--image', 'debian-bookworm', '--cold')));
    },
    afterCandidate: () => h.banger('vm', 'delete', `f${n}a`, `f${n}b`, `f${n}c`).then(() => undefined),
    afterBaseline: () => h.banger('vm', 'delete', `c${n}a`, `c${n}b`, `c${n}c`).then(() => undefined),
    teardown: h.teardown,
  };
}

/** A memory snapshot of a running 1 GiB VM: how long the daemon's operation takes and what it writes. */
export function snapshotCostBenchmark(): MetricBenchmark {
  const h = warmHome('s', 1024);
  return {
    kind: 'metrics',
    name: 'snapshot-1g',
    needsGuestAssets: true,
    description: 'a memory snapshot of a running 1 GiB VM (booted, 256 MiB of its page cache filled): operation time and bytes written',
    async setup() {
      await h.setup();
      await h.banger('vm', 'create', '--name', 'big', '--image', 'debian-bookworm');
      // Some touched memory, as a VM that did work has: 256 MiB written through the page cache.
      await h.banger('vm', 'exec', 'big', '--', 'sh', '-c', 'head -c 268435456 /dev/urandom > /tmp/fill && sync');
    },
    async measure() {
      const times: number[] = [];
      let last: Snapshot | undefined;
      for (let i = 0; i < 3; i++) {
        last = JSON.parse(await h.banger('vm', 'snapshot', 'big', '--name', `s${i}`, '--json')) as Snapshot;
        times.push(await h.opMs('big', 'vm.snapshot'));
      }
      const s = last as Snapshot;
      return [
        {
          name: 'snapshot operation time (median of 3)',
          value: Math.round(median(times)),
          unit: 'ms',
          detail: `each: ${times.map((t) => t.toFixed(0)).join(', ')} ms`,
        },
        {
          name: 'bytes written per snapshot',
          value: Math.round((s.manifest.stateBytes + s.manifest.memoryBytes) / 1024 ** 2),
          unit: 'MiB',
          detail: `device state ${s.manifest.stateBytes} B, RAM ${s.manifest.memoryBytes} B (sparse), disk layers frozen in place (0 B copied)`,
        },
      ];
    },
    teardown: h.teardown,
  };
}
