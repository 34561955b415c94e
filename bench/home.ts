import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './lib.js';

/** Project root (this file runs as dist/bench/home.js). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BANGER = join(ROOT, 'bin', 'banger.js');

/** An isolated BANGER_HOME with a running daemon, so a benchmark never touches the user's daemon. */
export function daemonHome() {
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
