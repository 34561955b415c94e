import { spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { readLogTail } from './console-log.js';

/**
 * This boot's id (/proc/sys/kernel/random/boot_id): a pid and start time recorded before a
 * reboot can match an unrelated process after it, the boot id cannot. Undefined when unreadable.
 */
let bootIdCache: Promise<string | undefined> | undefined;
export function currentBootId(): Promise<string | undefined> {
  bootIdCache ??= readFile('/proc/sys/kernel/random/boot_id', 'utf8').then(
    (t) => (/^[0-9a-f-]{36}$/.test(t.trim()) ? t.trim() : undefined),
    () => undefined,
  );
  return bootIdCache;
}

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

/**
 * Whether `pid` is still the process recorded as (start time, boot id). A record from another boot
 * is dead whatever runs under that pid now. A record without a boot id (stored before boot ids
 * were recorded), or a host whose boot id cannot be read, is compared by start time only.
 */
export async function isProcessAlive(pid: number, startTime: string, bootId?: string): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (bootId !== undefined) {
    const now = await currentBootId();
    if (now !== undefined && now !== bootId) return false;
  }
  return (await processStartTime(pid)) === startTime;
}

/** A stored VMM handle's identity: alive only if pid, start time and (when recorded) boot id match. */
export function isHandleAlive(h: { pid: number; pidStartTime: string; bootId?: string | undefined }): Promise<boolean> {
  return isProcessAlive(h.pid, h.pidStartTime, h.bootId);
}

/** Polls until the process is gone (or its pid was reused). */
export async function waitForExit(pid: number, startTime: string, timeoutMs: number, bootId?: string): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await isProcessAlive(pid, startTime, bootId))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
}

export async function killAndWait(pid: number, startTime: string, timeoutMs = 5000, bootId?: string): Promise<void> {
  if (!(await isProcessAlive(pid, startTime, bootId))) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  if (!(await waitForExit(pid, startTime, timeoutMs, bootId))) {
    throw new Error(`process ${pid} did not exit after SIGKILL within ${timeoutMs} ms`);
  }
}

/**
 * Spawns a VMM detached in its own session with stdio to a log file, so it outlives the daemon.
 * The daemon never holds a pipe to it: re-adoption after restart sees the same process.
 * The log is opened O_APPEND (never through a symlink), so the daemon can cap it by copy-truncate
 * (./console-log.ts) while the VMM keeps writing.
 */
export async function spawnDetached(
  command: string,
  args: readonly string[],
  logPath: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ pid: number; startTime: string; bootId?: string }> {
  const bootId = await currentBootId();
  const fd = openSync(logPath, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
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
      if (st) return { pid, startTime: st, ...(bootId ? { bootId } : {}) };
      await sleep(5);
    }
    throw new Error(`${command} exited immediately`);
  } finally {
    closeSync(fd);
  }
}

export async function waitForSocket(path: string, timeoutMs: number, alive: () => Promise<boolean>): Promise<void> {
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

/**
 * waitForSocket, then until something accepts on it: a socket file exists from bind(), a moment
 * before listen(), and a connect in between is refused. For servers a bare connect-and-close does
 * not disturb (Firecracker's HTTP API), not for single-client ones.
 */
export async function waitForListener(path: string, timeoutMs: number, alive: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  await waitForSocket(path, timeoutMs, alive);
  for (;;) {
    const accepted = await new Promise<boolean>((resolve) => {
      const sock = connect({ path });
      sock.once('connect', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
    if (accepted) return;
    if (!(await alive())) throw new Error(`process exited before listening on ${path}`);
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for a listener on ${path}`);
    await sleep(20);
  }
}

/**
 * The last `maxBytes` of a log as text (trimmed), read at an offset: the file's size does not
 * matter. A log capped by copy-truncate continues from `<path>.1` when the live file is short, so a
 * power-off message that was just rotated away is still seen. Never throws ('' when unreadable).
 */
export async function readTail(path: string, maxBytes = 4096): Promise<string> {
  try {
    return (await readLogTail(path, maxBytes)).toString('utf8').trim();
  } catch {
    return '';
  }
}

/** CPU% (since process start, averaged) and RSS of the VMM from /proc. */
export async function processStats(pid: number): Promise<{ pid: number; cpuPercent: number; rssBytes: number } | null> {
  try {
    const [statText, statusText, uptimeText] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile(`/proc/${pid}/status`, 'utf8'),
      readFile('/proc/uptime', 'utf8'),
    ]);
    const f = statText.slice(statText.lastIndexOf(')') + 2).split(' ');
    const ticks = 100;
    const cpuSeconds = (Number(f[11]) + Number(f[12])) / ticks;
    const startedSecondsAgo = Number(uptimeText.split(' ')[0]) - Number(f[19]) / ticks;
    const rssKib = Number(/VmRSS:\s+(\d+)/.exec(statusText)?.[1] ?? 0);
    return { pid, cpuPercent: startedSecondsAgo > 0 ? Math.round((1000 * cpuSeconds) / startedSecondsAgo) / 10 : 0, rssBytes: rssKib * 1024 };
  } catch {
    return null;
  }
}
