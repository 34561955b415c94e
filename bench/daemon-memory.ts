import { spawn } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerClient } from '../src/client/client.js';
import { resolveLayout } from '../src/config/layout.js';
import type { Metric, MetricBenchmark } from './lib.js';
import { nsHome } from './vm.js';

const MiB = 1024 * 1024;

/** Resident set size of a process, from /proc/<pid>/status (VmRSS, kB). */
export async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/**
 * The daemon's RSS once it has settled: the median of `samples` readings a second apart (V8 collects
 * when it chooses, so a single reading can catch garbage that the next collection frees).
 */
async function settledRss(pid: number, samples = 5): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    await sleep(1000);
    values.push(await rssBytes(pid));
  }
  values.sort((a, b) => a - b);
  return values[Math.floor(values.length / 2)] as number;
}

/**
 * RSS right after a full garbage collection in the daemon (./gc-hook.ts, preloaded into it by this
 * benchmark), with the JS heap in use and external memory (Buffers) the process reported then: live
 * memory, what a leak would grow. The median (by RSS) of `samples` collections.
 */
interface Usage {
  rss: number;
  heapUsed: number;
  /** V8's committed heap pages, used or not: what the JS heap costs in RSS. */
  heapTotal: number;
  external: number;
}

async function usageAfterGc(pid: number, doneFile: string, samples = 3): Promise<Usage> {
  const values: Usage[] = [];
  for (let i = 0; i < samples; i++) {
    const before = await readFile(doneFile, 'utf8').catch(() => '');
    process.kill(pid, 'SIGUSR2');
    // Hang guard only: a collection of a ~100 MiB heap takes well under a second.
    const deadline = Date.now() + 60_000;
    while ((await readFile(doneFile, 'utf8').catch(() => '')) === before) {
      if (Date.now() > deadline) throw new Error(`bangerd (pid ${pid}) did not answer the GC signal: is the gc hook loaded?`);
      await sleep(20);
    }
    const u = JSON.parse(await readFile(doneFile, 'utf8')) as Usage;
    values.push({ rss: await rssBytes(pid), heapUsed: u.heapUsed, heapTotal: u.heapTotal, external: u.external });
  }
  values.sort((a, b) => a.rss - b.rss);
  return values[Math.floor(values.length / 2)] as Usage;
}

const mib = (b: number) => (b / MiB).toFixed(1);
/** "rss (heap used/committed + external)" in MiB. */
const fmt = (u: Usage) => `${mib(u.rss)} (${mib(u.heapUsed)}/${mib(u.heapTotal)}+${mib(u.external)})`;

/** A bare `node` process doing nothing: what any Node daemon costs before its own code. */
async function bareNodeRss(): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
  try {
    return await settledRss(child.pid as number, 3);
  } finally {
    child.kill('SIGKILL');
  }
}

function positiveInt(name: string, fallback: number): number {
  const v = Number(process.env[name]);
  return process.env[name] && Number.isInteger(v) && v > 0 ? v : fallback;
}

/**
 * bangerd's memory: idle RSS, RSS growth per running VM and per 1,000 operations, each against its
 * target. Everything runs in an isolated home inside a private network namespace (as the other VM
 * benchmarks); operations and VMs go through the real API with the SDK client.
 *   BENCH_OPS=1000  operations measured (after BENCH_OPS_WARMUP=500: the registry keeps the last 200
 *                   finished operations, so the measured window starts past its bound, and past the
 *                   one-time step of RSS the first few hundred operations take: docs/performance.md)
 *   BENCH_VMS=3     running VMs measured (after one VM booted and deleted, so the boot path is loaded)
 */
export function daemonMemoryBenchmark(): MetricBenchmark {
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  const gcDir = `/tmp/bg-bgc-${process.pid}`;
  const gcDone = join(gcDir, 'done');
  const hook = new URL('./gc-hook.js', import.meta.url).href;
  const home = nsHome('mem', `accel = "${accel}"\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = "256M"\n`, {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --expose-gc --import ${hook}`.trim(),
    BENCH_GC_DONE: gcDone,
  });
  let client: BangerClient | undefined;
  const vms: string[] = [];
  const daemonPid = async (): Promise<number> => (JSON.parse(await home.banger('daemon', 'status', '--json')) as { pid: number }).pid;
  /** One operation through the registry: `vm create --no-start` to completion, then the VM's delete. */
  const operation = async (c: BangerClient, name: string): Promise<void> => {
    await c.finish(await c.createVm({ name, start: false, nat: false }));
    const { results } = await c.bulk({ action: 'delete', refs: [name] });
    if (!results[0]?.ok) throw new Error(`delete ${name}: ${results[0]?.error?.message}`);
  };
  const boot = async (c: BangerClient, name: string): Promise<void> => {
    await c.finish(await c.createVm({ name, start: true, nat: false }));
    vms.push(name);
  };
  const deleteVms = async (c: BangerClient): Promise<void> => {
    if (!vms.length) return;
    await c.bulk({ action: 'delete', refs: vms.splice(0) });
  };
  return {
    kind: 'metrics',
    name: 'daemon-memory',
    description: `bangerd RSS: idle, per running VM, per 1,000 operations (vm create --no-start + delete) (${accel})`,
    needsGuestAssets: true,
    async setup() {
      await mkdir(gcDir, { mode: 0o700 });
      await home.setup();
    },
    async measure(): Promise<Metric[]> {
      const metrics: Metric[] = [];
      // Idle: a freshly started daemon over this store (kernel and image registered), one status request.
      await home.banger('daemon', 'restart');
      let pid = await daemonPid();
      const idle = await settledRss(pid);
      const idleLive = await usageAfterGc(pid, gcDone);
      metrics.push({
        name: 'idle RSS',
        value: idle / MiB,
        unit: 'MiB',
        target: 80,
        reference: { label: 'bare node', value: (await bareNodeRss()) / MiB },
        detail: `fresh daemon, one status request, median of 5 readings; after a full GC: ${fmt(idleLive)} MiB, rss (JS heap used/committed + external)`,
      });

      // The client talks to the namespaced daemon's socket directly; it must never start one itself.
      const c = new BangerClient({ layout: resolveLayout(home.env()), autostart: false, timeoutMs: 15 * 60_000 });
      client = c;
      const ops = positiveInt('BENCH_OPS', 1000);
      const warm = positiveInt('BENCH_OPS_WARMUP', 500);
      for (let i = 0; i < warm; i++) await operation(c, `w${i}`);
      const before = await usageAfterGc(pid, gcDone);
      // The one-time step of the first operations (code loaded and compiled, V8's young generation
      // grown to the allocation rate, SQLite's cache filled), reported apart from the growth after it:
      // a step that stays flat over the next thousands is warm-up, a steady climb is a leak.
      metrics.push({
        name: 'warm-up step',
        value: (before.rss - idleLive.rss) / MiB,
        unit: 'MiB',
        detail: `after a full GC, rss (JS heap used/committed + external) MiB: idle ${fmt(idleLive)} → ${fmt(before)} after ${warm} operations`,
      });
      // Readings along the way tell a leak (steady climb) from the heap settling (a step, then flat).
      const checkpoints: string[] = [];
      for (let i = 0; i < ops; i++) {
        await operation(c, `o${i}`);
        if ((i + 1) % Math.ceil(ops / 4) === 0 && i + 1 < ops) checkpoints.push(`${i + 1}: ${fmt(await usageAfterGc(pid, gcDone, 1))}`);
      }
      const after = await usageAfterGc(pid, gcDone);
      if ((await daemonPid()) !== pid) throw new Error('the daemon restarted during the operations');
      metrics.push({
        name: 'per 1,000 operations',
        value: ((after.rss - before.rss) / MiB) * (1000 / ops),
        unit: 'MiB',
        // "No growth": within what RSS readings resolve (1 KiB an operation).
        target: 1,
        detail: `after a full GC, rss (JS heap used/committed + external) MiB; ${ops} vm create --no-start + delete after ${warm} warm-up: ${fmt(before)} → ${[...checkpoints, `${ops}: ${fmt(after)}`].join(' → ')}`,
      });
      // The same window in live JS memory: what the daemon's own objects hold (RSS adds native
      // allocations: malloc arenas, SQLite's page cache, V8's reserved heap pages).
      metrics.push({
        name: 'per 1,000 ops, JS heap',
        value: ((after.heapUsed + after.external - before.heapUsed - before.external) / MiB) * (1000 / ops),
        unit: 'MiB',
        target: 1,
        detail: 'heap used + external after a full GC, same window',
      });

      // Per running VM: one VM booted and deleted first (loads the boot path), then N kept running.
      const n = positiveInt('BENCH_VMS', 3);
      await boot(c, 'vwarm');
      await deleteVms(c);
      pid = await daemonPid();
      const idleVms = await usageAfterGc(pid, gcDone);
      for (let i = 0; i < n; i++) await boot(c, `v${i}`);
      const running = await usageAfterGc(pid, gcDone);
      metrics.push({
        name: 'per running VM',
        value: (running.rss - idleVms.rss) / MiB / n,
        unit: 'MiB',
        target: 1,
        detail: `after a full GC, rss (JS heap used/committed + external) MiB; ${n} VMs booted and running: ${fmt(idleVms)} → ${fmt(running)}`,
      });
      await deleteVms(c);
      return metrics;
    },
    async teardown() {
      if (client) await deleteVms(client).catch(() => {});
      client = undefined;
      await home.teardown();
      await rm(gcDir, { recursive: true, force: true });
    },
  };
}
