import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Benchmark, run } from './lib.js';
import { nsHome } from './vm.js';

/**
 * `banger vm cp` of a tree (BENCH_CP_MB, default 200 MB of incompressible files in nested
 * directories, plus small files) vs `scp -r` of the same tree to/from the same VM, inside the
 * benchmark's network namespace. `in`: host → guest; `out`: guest → host (unpacked by the
 * hostile-input extractor). The target is ≤ 1.0×.
 */
export function vmCpBenchmark(direction: 'in' | 'out'): Benchmark {
  const accel = process.env.BENCH_ACCEL ?? 'tcg';
  const mb = Number(process.env.BENCH_CP_MB ?? 200);
  const h = nsHome(
    `cp${direction}`,
    `accel = "${accel}"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = "${Math.max(2, Math.ceil((mb * 4) / 1024))}G"\n`,
  );
  let dir = '';
  let n = 0;
  const tree = () => join(dir, 'tree');
  const sshConfig = () => join(h.env().BANGER_HOME as string, 'state', 'ssh', 'config');
  const inNs = (cmd: string, ...args: string[]) => run('ip', ['netns', 'exec', h.netns, cmd, ...args], h.env(), 600_000);
  const ssh = (...cmd: string[]) => inNs('ssh', '-F', sshConfig(), '-o', 'ConnectTimeout=3', 'bench.vm', ...cmd);
  const scp = (from: string, to: string) => inNs('scp', '-q', '-r', '-F', sshConfig(), from, to);
  return {
    name: `vm-cp-${direction}`,
    needsGuestAssets: true,
    description: `\`banger vm cp\` of ${mb} MB (${direction === 'in' ? 'host → guest' : 'guest → host'}) vs \`scp -r\` of the same tree (${accel})`,
    target: 1.0,
    rounds: 3,
    warmup: 1,
    async setup() {
      await h.setup();
      dir = await mkdtemp('/tmp/bg-bcp-');
      // 2 MiB files in 10 directories, plus 200 small ones: bulk and per-file costs both show.
      const files = Math.max(1, Math.round(mb / 2));
      for (let i = 0; i < files; i++) {
        await mkdir(join(tree(), `d${i % 10}`), { recursive: true });
        await writeFile(join(tree(), `d${i % 10}`, `f${i}.bin`), randomBytes(2 * 1024 * 1024));
      }
      await mkdir(join(tree(), 'small'), { recursive: true });
      for (let i = 0; i < 200; i++) await writeFile(join(tree(), 'small', `s${i}.txt`), `${i}\n`.repeat(50));
      await h.banger('vm', 'create', '--name', 'bench');
      // scp needs the guest's sshd, which may come up after the agent.
      for (let i = 0; ; i++) {
        const ok = await ssh('true').then(
          () => true,
          () => false,
        );
        if (ok) break;
        if (i > 120) throw new Error('the benchmark VM never accepted ssh');
        await sleep(1000);
      }
      if (direction === 'out') await h.banger('vm', 'cp', tree(), 'bench:/root/tree');
    },
    async candidate() {
      n++;
      if (direction === 'in') await h.banger('vm', 'cp', tree(), `bench:/root/cp-${n}`);
      else await h.banger('vm', 'cp', 'bench:/root/tree', join(dir, `cp-${n}`));
    },
    async afterCandidate() {
      if (direction === 'in') await ssh('rm', '-rf', `/root/cp-${n}`);
      else await rm(join(dir, `cp-${n}`), { recursive: true, force: true });
    },
    async baseline() {
      if (direction === 'in') await scp(tree(), `bench.vm:/root/scp-${n}`);
      else await scp('bench.vm:/root/tree', join(dir, `scp-${n}`));
    },
    async afterBaseline() {
      if (direction === 'in') await ssh('rm', '-rf', `/root/scp-${n}`);
      else await rm(join(dir, `scp-${n}`), { recursive: true, force: true });
    },
    async teardown() {
      await h.teardown();
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  };
}
