import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { imagePullBenchmark } from './image-pull.js';
import { type Benchmark, run } from './lib.js';
import { rootCloneBenchmark, tapPoolBenchmark, vmCreateBenchmark } from './vm.js';

/** Project root (this file runs as dist/bench/registry.js). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BANGER = join(ROOT, 'bin', 'banger.js');

/** An isolated BANGER_HOME with a running daemon, so a benchmark never touches the user's daemon. */
function daemonHome() {
  let dir = '';
  let pid = 0;
  const env = () => {
    const e: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: dir };
    // A user's BANGER_CONFIG must not leak into the isolated home.
    delete e.BANGER_CONFIG;
    return e;
  };
  return {
    env,
    async setup() {
      // Short path: the socket path must fit in 108 bytes.
      dir = await mkdtemp('/tmp/bg-bench-');
      pid = (JSON.parse(await run(process.execPath, [BANGER, 'daemon', 'start', '--json'], env())) as { pid: number }).pid;
    },
    async teardown() {
      if (!dir) return;
      try {
        await run(process.execPath, [BANGER, 'daemon', 'stop'], env());
      } catch {
        try {
          if (pid) process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const statusHome = daemonHome();

/** Every benchmark `npm run bench` knows. Append new ones here; names must be unique. */
export const benchmarks: Benchmark[] = [
  {
    name: 'cli-status',
    description: '`banger daemon status` against a running daemon vs `node -e 0` (CLI start-up + one API round trip)',
    target: 2,
    rounds: 20,
    setup: statusHome.setup,
    candidate: async () => {
      await run(process.execPath, [BANGER, 'daemon', 'status'], statusHome.env());
    },
    baseline: async () => {
      await run(process.execPath, ['-e', '0']);
    },
    teardown: statusHome.teardown,
  },
  rootCloneBenchmark(),
  vmCreateBenchmark(),
  tapPoolBenchmark(),
  imagePullBenchmark(),
];
