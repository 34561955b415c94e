import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** Start time (clock ticks since boot, field 22 of /proc/<pid>/stat); identifies a process across pid reuse. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parens: split after the last ')'.
    const rest = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); starttime is field 22.
    const state = rest[0];
    if (state === 'Z' || state === 'X') return undefined;
    return rest[19];
  } catch {
    return undefined;
  }
}

export async function isProcessAlive(pid: number, startTime: string): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  return (await processStartTime(pid)) === startTime;
}

/** Polls until the process is gone (or its pid was reused). */
export async function waitForExit(pid: number, startTime: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await isProcessAlive(pid, startTime))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
}

export async function killAndWait(pid: number, startTime: string, timeoutMs = 5000): Promise<void> {
  if (!(await isProcessAlive(pid, startTime))) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  if (!(await waitForExit(pid, startTime, timeoutMs))) {
    throw new Error(`process ${pid} did not exit after SIGKILL within ${timeoutMs} ms`);
  }
}

/**
 * Spawns a VMM detached in its own session with stdio to a log file, so it outlives the daemon.
 * The daemon never holds a pipe to it: re-adoption after restart sees the same process.
 */
export async function spawnDetached(
  command: string,
  args: readonly string[],
  logPath: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ pid: number; startTime: string }> {
  const fd = openSync(logPath, 'a', 0o600);
  try {
    const child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], env });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('error', (e) =>
        reject(
          (e as NodeJS.ErrnoException).code === 'ENOENT'
            ? new Error(`${command} not found; install it or set its path in config.toml (see \`banger doctor\`)`)
            : e,
        ),
      );
      child.once('spawn', () => resolve(child.pid as number));
    });
    child.unref();
    // A process that exits immediately may not have a /proc entry worth reading; retry briefly.
    for (let i = 0; i < 20; i++) {
      const st = await processStartTime(pid);
      if (st) return { pid, startTime: st };
      await sleep(5);
    }
    throw new Error(`${command} exited immediately`);
  } finally {
    closeSync(fd);
  }
}

export async function waitForSocket(
  path: string,
  timeoutMs: number,
  alive: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if ((await stat(path)).isSocket()) return;
    } catch {
      /* not yet */
    }
    if (!(await alive())) throw new Error(`process exited before creating ${path}`);
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${path}`);
    await sleep(20);
  }
}

export async function readTail(path: string, maxBytes = 4096): Promise<string> {
  try {
    const buf = await readFile(path);
    return buf.subarray(Math.max(0, buf.length - maxBytes)).toString('utf8').trim();
  } catch {
    return '';
  }
}
