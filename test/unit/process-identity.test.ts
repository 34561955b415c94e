import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { currentBootId, isHandleAlive, isProcessAlive, processStartTime } from '../../src/vmm/process.js';

/** A real process to identify: `sleep` that the test kills at the end. */
async function withProcess(body: (pid: number, startTime: string) => Promise<void>): Promise<void> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    const pid = child.pid as number;
    let startTime = await processStartTime(pid);
    while (!startTime) {
      await new Promise((r) => setImmediate(r));
      startTime = await processStartTime(pid);
    }
    await body(pid, startTime);
  } finally {
    child.kill('SIGKILL');
  }
}

test('boot id: a handle recorded in another boot is dead even when pid and start time match a live process', async (t) => {
  const now = await currentBootId();
  if (!now) return t.skip('this host has no readable /proc/sys/kernel/random/boot_id');
  assert.equal(now, (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim());
  await withProcess(async (pid, startTime) => {
    // The same pid and start time as a live process, recorded under a different boot: after a
    // reboot that pid can belong to anything, so it must never be adopted (or killed) as our VMM.
    const otherBoot = '00000000-0000-4000-8000-000000000000';
    assert.equal(await isProcessAlive(pid, startTime, otherBoot), false);
    assert.equal(await isHandleAlive({ pid, pidStartTime: startTime, bootId: otherBoot }), false);
    // Recorded in this boot: alive.
    assert.equal(await isHandleAlive({ pid, pidStartTime: startTime, bootId: now }), true);
    // Handles stored before boot ids were recorded: compared by pid and start time only.
    assert.equal(await isHandleAlive({ pid, pidStartTime: startTime }), true);
    assert.equal(await isHandleAlive({ pid, pidStartTime: String(Number(startTime) + 1) }), false);
  });
});

test('bad pids are never alive', async () => {
  for (const pid of [0, -1, 1.5, Number.NaN]) assert.equal(await isProcessAlive(pid, '1'), false);
});
