import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KeyedMutex } from '../../src/util/keyed-mutex.js';

test('same key runs one at a time in arrival order; other keys run in parallel', async () => {
  const m = new KeyedMutex();
  const log: string[] = [];
  const job = (key: string, name: string, ms: number) =>
    m.run(key, async () => {
      log.push(`start ${name}`);
      await sleep(ms);
      log.push(`end ${name}`);
    });
  await Promise.all([job('a', 'a1', 30), job('a', 'a2', 1), job('b', 'b1', 5)]);
  assert.deepEqual(log, ['start a1', 'start b1', 'end b1', 'end a1', 'start a2', 'end a2']);
  assert.equal(m.isLocked('a'), false);
});

test('a failing holder releases the lock', async () => {
  const m = new KeyedMutex();
  await assert.rejects(
    m.run('k', async () => Promise.reject(new Error('boom'))),
    /boom/,
  );
  assert.equal(await m.run('k', async () => 42), 42);
});
