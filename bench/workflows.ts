// Agent-workflow benchmarks (issue 12): time to first command, exec round trip and workspace
// prepare (vm cp: cp.ts), each against the plain-SSH or bare-QEMU way of doing the same thing.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Operation } from '../src/api/schemas.js';
import { resolveLayout } from '../src/config/layout.js';
import type { Benchmark, Metric, MetricBenchmark } from './lib.js';
import { bareQemuBoot, nsHome, stageMedians } from './vm.js';

const accel = () => process.env.BENCH_ACCEL ?? 'tcg';
const config = () => `accel = "${accel()}"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = "2G"\n`;

/** Plain ssh into a banger VM through banger's own ssh_config (what `ssh <name>.vm` does once it is installed). */
function sshArgs(env: NodeJS.ProcessEnv, name: string, command: string): string[] {
  const cfg = join(resolveLayout(env).stateDir, 'ssh', 'config');
  return ['-F', cfg, '-o', 'ConnectTimeout=10', '--', `${name}.vm`, command];
}

/** `vm run --rm -- true` end to end vs a bare QEMU boot of the same kernel and rootfs to agent ready. */
export function firstCommandBenchmark(): Benchmark {
  const h = nsHome('first', config());
  const bare = bareQemuBoot(`bgb-first-${process.pid}`);
  return {
    name: 'first-command',
    needsGuestAssets: true,
    description: `\`banger vm run --rm -- true\` (create → agent → command through the agent → delete) vs bare QEMU of the same kernel/initrd/rootfs → agent ready (${accel()})`,
    target: 1.3,
    rounds: 3,
    warmup: 1,
    setup: async () => {
      await h.setup();
      await bare.setup();
    },
    candidate: async () => {
      await h.banger('vm', 'run', '--rm', '--', 'true');
    },
    baseline: () => bare.boot(),
    afterBaseline: () => bare.stop(),
    teardown: async () => {
      await bare.teardown();
      await h.teardown();
    },
  };
}

/** One running VM; `vm exec -- true` vs `ssh <vm> true`. */
export function execRoundTripBenchmark(): Benchmark {
  const h = nsHome('exec', config());
  return {
    name: 'exec-rtt',
    needsGuestAssets: true,
    description: `\`banger vm exec b -- true\` vs \`ssh b.vm true\` on the same running VM (${accel()})`,
    target: 0.5,
    rounds: 10,
    warmup: 2,
    setup: async () => {
      await h.setup();
      await h.banger('vm', 'create', '--name', 'b');
    },
    candidate: async () => {
      await h.banger('vm', 'exec', 'b', '--', 'true');
    },
    baseline: async () => {
      await h.inNs('ssh', sshArgs(h.env(), 'b', 'true'));
    },
    teardown: () => h.teardown(),
  };
}

/** A tree of `files` files totalling about `bytes` bytes of incompressible data. */
async function makeTree(dir: string, files: number, bytes: number): Promise<void> {
  const per = Math.max(1, Math.floor(bytes / files));
  for (let i = 0; i < files; i++) {
    const sub = join(dir, `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) await mkdir(sub, { recursive: true });
    await writeFile(join(sub, `f${i}.bin`), execFileSync('head', ['-c', String(per), '/dev/urandom']));
  }
}

/** Peak resident set of a process (VmHWM), bytes. */
async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? Number.NaN) * 1024;
}

/**
 * `vm workspace prepare` of a 10k-file / 200 MB git repo vs `tar -c | ssh tar -x` of the same
 * working tree, timed side by side, with the daemon's peak RSS after the prepares.
 */
export function workspaceBenchmark(): MetricBenchmark {
  const h = nsHome('ws', config());
  let repo = '';
  const time = async (fn: () => Promise<unknown>) => {
    const t = performance.now();
    await fn();
    return performance.now() - t;
  };
  return {
    kind: 'metrics',
    name: 'workspace-prepare',
    needsGuestAssets: true,
    description: `\`banger vm workspace prepare\` of a 10k-file / 200 MB repo vs \`tar | ssh tar -x\` of its tree, and the daemon's peak RSS (${accel()})`,
    setup: async () => {
      await h.setup();
      await h.banger('vm', 'create', '--name', 'b');
      repo = await mkdtemp('/tmp/bg-bws-');
      await makeTree(repo, 10_000, 200 * 1024 * 1024);
      execFileSync('sh', ['-c', 'git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm init'], { cwd: repo });
    },
    async measure(): Promise<Metric[]> {
      const prepare = await time(() => h.banger('vm', 'workspace', 'prepare', 'b', repo, '--guest-path', '/root/ws'));
      const cfg = join(resolveLayout(h.env()).stateDir, 'ssh', 'config');
      const tarSsh = await time(() =>
        h.inNs('sh', ['-c', `tar -C "$1" -cf - . | ssh -F "$2" b.vm 'mkdir -p /root/tarws && tar -C /root/tarws -xf -'`, 'sh', repo, cfg]),
      );
      const status = JSON.parse(await h.banger('daemon', 'status', '--json')) as { pid: number };
      const rss = await peakRss(status.pid);
      // Where the prepare's time went, by its operation's stages.
      const ops = (JSON.parse(await h.banger('daemon', 'ops', '--json')) as { operations: Operation[] }).operations.filter(
        (o) => o.kind === 'workspace.prepare' && o.state === 'succeeded',
      );
      const stages = [...stageMedians(ops)].map(([name, ms]) => `${name} ${(ms / 1000).toFixed(1)} s`).join(', ');
      return [
        {
          name: 'prepare / tar|ssh',
          value: prepare / tarSsh,
          unit: '×',
          target: 1.2,
          detail: `${(prepare / 1000).toFixed(1)} s vs ${(tarSsh / 1000).toFixed(1)} s; prepare stages: ${stages}`,
        },
        { name: 'daemon peak RSS', value: rss / 1024 ** 2, unit: 'MiB', detail: 'VmHWM of bangerd after the prepare' },
      ];
    },
    teardown: async () => {
      if (repo) await rm(repo, { recursive: true, force: true });
      await h.teardown();
    },
  };
}
