import { spawn } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../api/errors.js';
import type { Layout } from '../config/layout.js';
import { BANGERD_NODE_FLAGS } from '../util/daemon-flags.js';

export const BANGERD_ENTRY = fileURLToPath(new URL('../daemon/main.js', import.meta.url));

/** What this start attempt wrote to the daemon's stderr log (the file is shared across starts). */
function writtenSince(path: string, offset: number): string {
  try {
    return readFileSync(path).subarray(offset).toString('utf8').trim();
  } catch {
    return '';
  }
}

/**
 * Starts bangerd detached (its own session, stdio to a log file) and waits until `probe`
 * succeeds. When several CLIs race to start it, the losers' daemons exit on the lock and the
 * probe still finds the winner.
 */
export async function startDaemon(layout: Layout, probe: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  mkdirSync(layout.logDir, { recursive: true, mode: 0o700 });
  const fd = openSync(layout.daemonStderrPath, 'a', 0o600);
  const logStart = fstatSync(fd).size;
  const started = Date.now();
  let exitCode: number | null | undefined;
  try {
    const child = spawn(process.execPath, [...BANGERD_NODE_FLAGS, BANGERD_ENTRY], { detached: true, stdio: ['ignore', fd, fd], env: process.env });
    child.on('exit', (code) => {
      exitCode = code;
    });
    child.unref();
  } finally {
    closeSync(fd);
  }
  for (;;) {
    if (await probe()) return;
    if (exitCode !== undefined && exitCode !== 0 && Date.now() - started > 300) {
      const msg = writtenSince(layout.daemonStderrPath, logStart);
      // Lost the race to another starter: keep probing for the winner.
      if (!/another bangerd already owns/.test(msg)) {
        // bangerd prints `bangerd: <reason>` and `fix: <fix>`: pass them on as one error.
        const reason = /^bangerd: (.*)$/m.exec(msg)?.[1];
        const fix = /^fix: (.*)$/m.exec(msg)?.[1];
        throw new BangerError('unavailable', `bangerd failed to start (exit ${exitCode}): ${reason ?? (msg.split('\n').at(-1) || 'no output')}`, {
          fix: fix ?? `read ${layout.daemonStderrPath} and ${layout.logPath}`,
        });
      }
    }
    if (Date.now() - started > timeoutMs) {
      throw new BangerError('unavailable', `bangerd did not start within ${timeoutMs / 1000}s`, {
        fix: `read ${layout.daemonStderrPath}`,
      });
    }
    await sleep(25);
  }
}
