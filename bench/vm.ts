import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Operation } from '../src/api/schemas.js';
import { AgentClient } from '../src/guest/agent-client.js';
import { guestBinary } from '../src/guest/binaries.js';
import { buildBaseInitramfs } from '../src/guest/initramfs.js';
import { buildVmInitrd, vmCmdline } from '../src/guest/vm-boot.js';
import { DiskTools } from '../src/host/disks.js';
import { ProcessRunner } from '../src/host/runner.js';
import { generateHostKey } from '../src/host/ssh-keys.js';
import { killAndWait, spawnDetached } from '../src/vmm/process.js';
import { buildQemuArgs } from '../src/vmm/qemu/args.js';
import { assetCache } from './assets.js';
import { type Benchmark, percentile, run } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BANGER = join(ROOT, 'bin', 'banger.js');

interface Assets {
  kernelDir: string;
  kernelVersion: string;
  kernel: string;
  rootfs: string;
}

export function assets(): Assets {
  const manifest = join(assetCache(), 'assets.json');
  // `npm run bench` builds them first; only a direct `node dist/bench/...` run can miss them.
  if (!existsSync(manifest)) throw new Error(`guest assets missing (${manifest}): run scripts/guest-assets.sh`);
  return JSON.parse(readFileSync(manifest, 'utf8')) as Assets;
}

/**
 * A bare QEMU of the test kernel, initrd (banger-init + the same per-VM payload banger builds),
 * rootfs (a qcow2 overlay, as banger gives a VM) and work disk, in the given network namespace
 * (which setup creates, with a TAP), until the same agent answers: the baseline of banger's
 * VM benchmarks.
 */
export function bareQemuBoot(netns: string) {
  let dir = '';
  let pid: { pid: number; startTime: string } | undefined;
  const inNs = (cmd: string, args: string[]) => ['netns', 'exec', netns, cmd, ...args];
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  return {
    inNs,
    dir: () => dir,
    async setup() {
      const a = assets();
      dir = await mkdtemp('/tmp/bg-bare-');
      await run('ip', ['netns', 'add', netns]).catch(() => '');
      await run('ip', inNs('ip', ['link', 'set', 'lo', 'up']));
      await run('ip', inNs('ip', ['tuntap', 'add', 'dev', 'bgbase0', 'mode', 'tap']));
      await run('ip', inNs('ip', ['link', 'set', 'bgbase0', 'up']));
      const runner = new ProcessRunner();
      await buildBaseInitramfs({
        kernelTree: a.kernelDir,
        version: a.kernelVersion,
        initBinary: guestBinary('banger-init'),
        outPath: join(dir, 'base.cpio.gz'),
      });
      await generateHostKey(runner, join(dir, 'ssh'), 'bench');
      await buildVmInitrd({
        baseInitramfs: join(dir, 'base.cpio.gz'),
        outPath: join(dir, 'initrd.img'),
        hostname: 'baseline',
        agentBinary: guestBinary('banger-agent'),
        hostKeyDir: join(dir, 'ssh'),
        authorizedKey: (await generateHostKey(runner, join(dir, 'client'), 'bench-client')).publicKey,
        network: { ip: '10.99.0.2', prefix: 24, gateway: '10.99.0.1', nameservers: ['10.99.0.1'] },
        firstBoot: false,
      });
      await new DiskTools(runner).mkfsFromDir(join(dir, 'work.ext4'), 1024 ** 3, undefined, 'work');
    },
    async boot() {
      const a = assets();
      const runDir = join(dir, 'bare');
      await rm(runDir, { recursive: true, force: true });
      await mkdir(runDir, { recursive: true });
      const args = buildQemuArgs(
        {
          vmId: 'bare',
          name: 'bare',
          vcpus: 2,
          memoryMib: 512,
          kernelPath: a.kernel,
          initrdPath: join(dir, 'initrd.img'),
          cmdline: await vmCmdline({ hostname: 'baseline' }),
          disks: [
            { id: 'root', path: join(runDir, 'root.qcow2'), format: 'qcow2' },
            { id: 'work', path: join(dir, 'work.ext4'), format: 'raw' },
          ],
          nets: [{ id: 'net0', tapName: 'bgbase0', mac: '52:54:00:99:00:02' }],
          runDir,
          serialLogPath: join(runDir, 'serial.log'),
          vmmLogPath: join(runDir, 'vmm.log'),
          agentSocketPath: join(runDir, 'agent.sock'),
          accel: accel as 'tcg' | 'kvm',
        },
        join(runDir, 'qmp.sock'),
      );
      // The same copy-on-write root banger gives a VM: a qcow2 overlay over the shared rootfs.
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', a.rootfs, '-F', 'raw', join(runDir, 'root.qcow2')]);
      // `ip netns exec` execs QEMU in place, so the pid is QEMU's.
      pid = await spawnDetached('ip', inNs('qemu-system-x86_64', args), join(runDir, 'vmm.log'));
      const agent = new AgentClient({ socketPath: join(runDir, 'agent.sock'), transport: 'virtio-serial' });
      try {
        await agent.waitReady(300_000);
      } finally {
        agent.close();
      }
    },
    async stop() {
      if (pid) await killAndWait(pid.pid, pid.startTime);
      pid = undefined;
    },
    async teardown() {
      if (pid) await killAndWait(pid.pid, pid.startTime).catch(() => {});
      pid = undefined;
      if (dir) await rm(dir, { recursive: true, force: true });
      await run('ip', ['netns', 'del', netns]).catch(() => '');
    },
  };
}

/**
 * `banger vm create` until the agent answers, against QEMU started by hand with the same kernel,
 * initrd (banger-init + the same payload), rootfs and work disk, until the same agent answers.
 * The difference is banger's own cost: API, operation, disks, store, process management.
 */
export function vmCreateBenchmark(): Benchmark {
  let home = '';
  let n = 0;
  // Both sides run in a private network namespace: banger's bridge, TAPs and NAT never touch the host.
  const netns = `bgb-${process.pid}`;
  const bare = bareQemuBoot(netns);
  const env = () => ({ ...process.env, BANGER_HOME: home });
  const banger = (...args: string[]) => run('ip', bare.inNs(process.execPath, [BANGER, ...args]), env(), 300_000);
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  return {
    name: 'vm-create',
    needsGuestAssets: true,
    description: `\`banger vm create\` → agent ready vs bare qemu-system-x86_64 of the same kernel/initrd/rootfs → agent ready (${accel})`,
    target: 1.05,
    rounds: 5,
    warmup: 1,
    async setup() {
      const a = assets();
      await bare.setup();
      home = join(bare.dir(), 'home');
      await mkdir(join(home, 'config'), { recursive: true });
      await writeFile(join(home, 'config', 'config.toml'), `accel = "${accel}"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 512\ndisk_size = "1G"\n`);
      await banger('kernel', 'import', 'k', '--from', a.kernelDir);
      await banger('image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k');
    },
    async candidate() {
      n++;
      // Until the agent answers, as the baseline: sshd is not part of this comparison.
      await banger('vm', 'create', '--name', `bench-${n}`, '--wait-for', 'agent');
    },
    baseline: () => bare.boot(),
    afterCandidate: () => banger('vm', 'delete', `bench-${n}`).then(() => undefined),
    afterBaseline: () => bare.stop(),
    async teardown() {
      if (home) {
        await deleteAllVms(banger);
        await banger('daemon', 'stop').catch(() => '');
      }
      await bare.teardown();
    },
  };
}

/** The per-VM root disk: a qcow2 overlay (what banger does) vs a sparse copy (the fallback without reflink). */
export function rootCloneBenchmark(): Benchmark {
  let dir = '';
  let n = 0;
  const disks = new DiskTools(new ProcessRunner());
  return {
    name: 'root-clone',
    needsGuestAssets: true,
    description: 'root disk for a new VM from the 2 GiB test image: qcow2 overlay vs `cp --sparse=always` (target: overlay < 50 ms, size-independent)',
    rounds: 10,
    async setup() {
      dir = await mkdtemp('/tmp/bg-bclone-');
    },
    async candidate() {
      await disks.createOverlay(assets().rootfs, join(dir, `o${++n}.qcow2`));
    },
    async baseline() {
      await run('cp', ['--sparse=always', assets().rootfs, join(dir, `c${n}.ext4`)], process.env, 120_000);
    },
    async cleanup() {
      await rm(join(dir, `o${n}.qcow2`), { force: true });
      await rm(join(dir, `c${n}.ext4`), { force: true });
    },
    async teardown() {
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  };
}

/** An isolated banger home in its own network namespace, with the test image registered. */
export function nsHome(tag: string, config: string, extraEnv: NodeJS.ProcessEnv = {}) {
  const netns = `bgb-${tag}-${process.pid}`;
  let dir = '';
  const env = () => ({ ...process.env, ...extraEnv, BANGER_HOME: join(dir, 'home') });
  // A safety net, not a measure: a 200 MB workspace under TCG takes minutes.
  const banger = (...args: string[]) => run('ip', ['netns', 'exec', netns, process.execPath, BANGER, ...args], env(), 1_800_000);
  /** Any command in the home's network namespace with its environment. */
  const inNs = (cmd: string, args: string[]) => run('ip', ['netns', 'exec', netns, cmd, ...args], env(), 1_800_000);
  return {
    banger,
    inNs,
    env,
    netns,
    async setup() {
      const a = assets();
      dir = await mkdtemp(`/tmp/bg-b${tag}-`);
      await run('ip', ['netns', 'add', netns]);
      await run('ip', ['netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up']);
      await mkdir(join(dir, 'home', 'config'), { recursive: true });
      await writeFile(join(dir, 'home', 'config', 'config.toml'), config);
      await banger('kernel', 'import', 'k', '--from', a.kernelDir);
      await banger('image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k');
    },
    async teardown() {
      if (dir) {
        await deleteAllVms(banger);
        await banger('daemon', 'stop').catch(() => '');
        await rm(dir, { recursive: true, force: true });
      }
      await run('ip', ['netns', 'del', netns]).catch(() => '');
    },
  };
}

/** `vm create` + `vm ssh -- true` with a warm TAP pool vs with the pool disabled (tap_pool_size = 0). */
export function tapPoolBenchmark(): Benchmark {
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  const base = `accel = "${accel}"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 512\ndisk_size = "512M"\n`;
  const warm = nsHome('warm', `tap_pool_size = 2\n${base}`);
  const cold = nsHome('cold', `tap_pool_size = 0\n${base}`);
  let n = 0;
  const createAndSsh = async (h: typeof warm) => {
    await h.banger('vm', 'create', '--name', `p${n}`);
    await h.banger('vm', 'ssh', `p${n}`, '--', 'true');
  };
  return {
    name: 'tap-pool',
    needsGuestAssets: true,
    description: `create → SSH-ready with a warm TAP pool (2) vs the pool disabled (0) (${accel})`,
    rounds: 3,
    warmup: 1,
    async setup() {
      await warm.setup();
      await cold.setup();
    },
    candidate: async () => {
      n++;
      await createAndSsh(warm);
    },
    afterCandidate: () => warm.banger('vm', 'delete', `p${n}`).then(() => undefined),
    baseline: () => createAndSsh(cold),
    afterBaseline: () => cold.banger('vm', 'delete', `p${n}`).then(() => undefined),
    async teardown() {
      await warm.teardown();
      await cold.teardown();
    },
  };
}

/** Median of each stage's duration (ms) over the given operations, in first-seen stage order. */
export function stageMedians(ops: Operation[]): Map<string, number> {
  const by = new Map<string, number[]>();
  for (const op of ops) {
    for (const s of op.stages) {
      if (!s.endedAt) continue;
      const list = by.get(s.name) ?? [];
      list.push(Date.parse(s.endedAt) - Date.parse(s.startedAt));
      by.set(s.name, list);
    }
  }
  return new Map([...by].map(([name, d]) => [name, percentile(d, 50)]));
}

/**
 * Three `banger vm create` at once vs the same three one after another (each until its agent is
 * ready). The notes split the time by the create operation's stages, which shows what bounds the
 * concurrent case (on a 2-core machine under TCG: the guests' boots share two CPUs).
 */
export function vmConcurrencyBenchmark(): Benchmark {
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  const h = nsHome('conc', `accel = "${accel}"\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = "256M"\n`);
  const N = 3;
  const WARMUP = 1;
  let round = 0;
  const names = (side: 'c' | 's') => Array.from({ length: N }, (_, i) => `${side}${round}-${i}`);
  const create = (name: string) => h.banger('vm', 'create', '--name', name).then(() => undefined);
  const remove = async (side: 'c' | 's') => {
    await h.banger('vm', 'delete', ...names(side));
  };
  return {
    name: 'vm-concurrency',
    description: `${N} concurrent \`banger vm create\` (→ agent ready) vs the same ${N} one after another (${accel}, ${cpus().length} CPUs)`,
    target: 0.7,
    rounds: 2,
    warmup: WARMUP,
    needsGuestAssets: true,
    setup: () => h.setup(),
    async candidate() {
      round++;
      await Promise.all(names('c').map(create));
    },
    afterCandidate: () => remove('c'),
    async baseline() {
      for (const name of names('s')) await create(name);
    },
    afterBaseline: () => remove('s'),
    async notes() {
      // Targets are <side><round>-<i>; round 1 is the warm-up.
      const ops = (JSON.parse(await h.banger('daemon', 'ops', '--json')) as { operations: Operation[] }).operations.filter(
        (o) => o.kind === 'vm.create' && o.state === 'succeeded' && Number(/^[cs](\d+)-\d+$/.exec(o.target ?? '')?.[1] ?? 0) > WARMUP,
      );
      const conc = stageMedians(ops.filter((o) => o.target?.startsWith('c')));
      const seq = stageMedians(ops.filter((o) => o.target?.startsWith('s')));
      const lines = ['median stage time per VM, concurrent vs sequential (measured rounds):'];
      for (const [stage, c] of conc)
        lines.push(`  ${stage.padEnd(16)} ${(c / 1000).toFixed(2).padStart(7)} s   ${((seq.get(stage) ?? Number.NaN) / 1000).toFixed(2).padStart(7)} s`);
      return lines;
    },
    teardown: () => h.teardown(),
  };
}

/** VMMs outlive their daemon by design: a benchmark's home deletes its VMs before it stops the daemon. */
async function deleteAllVms(banger: (...args: string[]) => Promise<string>): Promise<void> {
  const listed = await banger('vm', 'list', '--json').catch(() => '{"vms":[]}');
  const names = (JSON.parse(listed) as { vms: Array<{ name: string }> }).vms.map((v) => v.name);
  if (names.length) await banger('vm', 'delete', ...names).catch(() => '');
}
