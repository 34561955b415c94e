import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setImmediate as tick } from 'node:timers/promises';
import { BangerError } from '../../src/api/errors.js';
import type { OperationEvent } from '../../src/api/schemas.js';
import { OperationRegistry } from '../../src/daemon/operations.js';
import type { Clock, OpContext } from '../../src/util/op-context.js';

/** Time moves only when the test says so, so every timestamp is exact. */
class FakeClock implements Clock {
  private t = Date.parse('2030-01-01T00:00:00.000Z');
  now(): Date {
    return new Date(this.t);
  }
  advance(ms: number): void {
    this.t += ms;
  }
  iso(offsetMs = 0): string {
    return new Date(Date.parse('2030-01-01T00:00:00.000Z') + offsetMs).toISOString();
  }
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => {
    open = r;
  });
  return { promise, open };
}

/** Settles microtasks and one macrotask turn so the operation's async body can advance. */
const settle = () => tick();

test('stages are ordered, each closed when the next starts, with timestamps from the clock', async () => {
  const clock = new FakeClock();
  const reg = new OperationRegistry(clock);
  const g1 = gate();
  const g2 = gate();
  const started = reg.start('vm.create', 'op-a1b2c3', 'web', async (ctx) => {
    ctx.stage('resolve image');
    await g1.promise;
    ctx.stage('prepare disks', 'qcow2 overlay');
    await g2.promise;
    ctx.stage('ready');
    return { vm: 'web' };
  });
  assert.equal(started.id, 'op-a1b2c3');
  assert.equal(started.state, 'running');
  assert.equal(started.target, 'web');
  assert.equal(started.createdAt, clock.iso(0));
  assert.deepEqual(started.stages, [{ name: 'resolve image', startedAt: clock.iso(0) }]);

  clock.advance(1000);
  g1.open();
  await settle();
  const mid = reg.get('op-a1b2c3');
  assert.deepEqual(mid?.stages, [
    { name: 'resolve image', startedAt: clock.iso(0), endedAt: clock.iso(1000) },
    { name: 'prepare disks', startedAt: clock.iso(1000), detail: 'qcow2 overlay' },
  ]);
  assert.equal(mid?.endedAt, undefined);

  clock.advance(2500);
  g2.open();
  const done = await reg.wait('op-a1b2c3');
  assert.equal(done.state, 'succeeded');
  assert.deepEqual(done.result, { vm: 'web' });
  assert.deepEqual(
    done.stages.map((s) => [s.name, s.startedAt, s.endedAt]),
    [
      ['resolve image', clock.iso(0), clock.iso(1000)],
      ['prepare disks', clock.iso(1000), clock.iso(3500)],
      ['ready', clock.iso(3500), clock.iso(3500)],
    ],
  );
  assert.equal(done.endedAt, clock.iso(3500));
  assert.equal(done.error, undefined);
});

test('progress is recorded (total optional) and snapshots are copies', async () => {
  const reg = new OperationRegistry(new FakeClock());
  const g = gate();
  let ctx!: OpContext;
  reg.start('image.pull', 'op-000001', undefined, async (c) => {
    ctx = c;
    await g.promise;
  });
  ctx.progress(10, 100, 'MiB');
  assert.deepEqual(reg.get('op-000001')?.progress, { current: 10, total: 100, unit: 'MiB' });
  ctx.progress(7, undefined, 'files');
  const snap = reg.get('op-000001');
  assert.deepEqual(snap?.progress, { current: 7, unit: 'files' });
  assert.equal(snap?.target, undefined);
  // Mutating a snapshot must not reach the registry.
  snap?.stages.push({ name: 'forged', startedAt: 'x' });
  (snap as { state: string }).state = 'failed';
  assert.deepEqual(reg.get('op-000001')?.stages, []);
  assert.equal(reg.get('op-000001')?.state, 'running');
  g.open();
  assert.equal((await reg.wait('op-000001')).state, 'succeeded');
});

test('a failure becomes an error body with code, message, fix and the op id', async () => {
  const reg = new OperationRegistry(new FakeClock());
  reg.start('vm.start', 'op-fa11ed', 'web', async (ctx) => {
    ctx.stage('start VMM');
    throw new BangerError('vmm_failed', 'qemu exited with status 1', { fix: 'see vmm.log' });
  });
  const op = await reg.wait('op-fa11ed');
  assert.equal(op.state, 'failed');
  assert.deepEqual(op.error, { code: 'vmm_failed', message: 'qemu exited with status 1', fix: 'see vmm.log', opId: 'op-fa11ed' });
  assert.equal(op.result, undefined);
  assert.ok(op.stages[0]?.endedAt, 'the failing stage is closed');
  assert.ok(op.endedAt);

  // A plain Error is an internal error; the operation still records the op id.
  reg.start('vm.start', 'op-b00b00', undefined, async () => {
    throw new Error('boom');
  });
  const op2 = await reg.wait('op-b00b00');
  assert.equal(op2.state, 'failed');
  assert.equal(op2.error?.code, 'internal');
  assert.equal(op2.error?.message, 'boom');
  assert.equal(op2.error?.opId, 'op-b00b00');
});

test('cancel: the signal aborts, the state becomes cancelled, cancelling again is refused', async () => {
  const reg = new OperationRegistry(new FakeClock());
  let ctx!: OpContext;
  reg.start('vm.create', 'op-cace11', 'web', async (c) => {
    ctx = c;
    c.stage('wait for agent');
    await new Promise((_, reject) => c.signal.addEventListener('abort', () => reject(c.signal.reason)));
  });
  assert.equal(ctx.signal.aborted, false);
  assert.doesNotThrow(() => ctx.checkCancelled());
  assert.equal(reg.cancel('op-cace11'), true);
  assert.equal(ctx.signal.aborted, true);
  assert.throws(
    () => ctx.checkCancelled(),
    (e: unknown) => e instanceof BangerError && e.code === 'cancelled',
  );
  const op = await reg.wait('op-cace11');
  assert.equal(op.state, 'cancelled');
  assert.equal(op.error?.code, 'cancelled');
  assert.equal(reg.cancel('op-cace11'), false, 'a finished operation cannot be cancelled');
  assert.equal(reg.cancel('op-ffffff'), false, 'an unknown operation cannot be cancelled');
});

test('an operation that ignores the abort and returns is still recorded as cancelled', async () => {
  const reg = new OperationRegistry(new FakeClock());
  const g = gate();
  reg.start('x', 'op-123456', undefined, async () => {
    await g.promise;
    return 'finished anyway';
  });
  reg.cancel('op-123456');
  g.open();
  const op = await reg.wait('op-123456');
  assert.equal(op.state, 'cancelled');
});

test('subscribe: snapshot first, then live events in order, then done; unsubscribe stops delivery', async () => {
  const clock = new FakeClock();
  const reg = new OperationRegistry(clock);
  const g = gate();
  let ctx!: OpContext;
  reg.start('vm.create', 'op-5eb5eb', 'web', async (c) => {
    ctx = c;
    c.stage('resolve image');
    await g.promise;
    return 42;
  });
  const events: OperationEvent[] = [];
  const other: OperationEvent[] = [];
  const unsub = reg.subscribe('op-5eb5eb', (e) => events.push(e));
  const unsubOther = reg.subscribe('op-5eb5eb', (e) => other.push(e));
  assert.ok(unsub && unsubOther);
  assert.equal(events.length, 1);
  const first = events[0];
  assert.equal(first?.type, 'snapshot');
  assert.deepEqual(first?.type === 'snapshot' && first.operation.stages.map((s) => s.name), ['resolve image']);
  unsubOther();

  clock.advance(10);
  ctx.stage('prepare disks');
  ctx.progress(1, 2, 'disks');
  ctx.log('qemu-img: created');
  g.open();
  await reg.wait('op-5eb5eb');

  assert.deepEqual(
    events.map((e) => e.type),
    ['snapshot', 'stage', 'progress', 'log', 'done'],
  );
  const stage = events[1];
  assert.deepEqual(stage?.type === 'stage' && stage.stage, { name: 'prepare disks', startedAt: clock.iso(10) });
  const progress = events[2];
  assert.deepEqual(progress?.type === 'progress' && progress.progress, { current: 1, total: 2, unit: 'disks' });
  const log = events[3];
  assert.equal(log?.type === 'log' && log.line, 'qemu-img: created');
  const done = events[4];
  assert.equal(done?.type === 'done' && done.operation.state, 'succeeded');
  assert.equal(done?.type === 'done' && done.operation.result, 42);
  assert.deepEqual(
    other.map((e) => e.type),
    ['snapshot'],
    'an unsubscribed listener gets nothing more',
  );
  unsub();
});

test('subscribe to a finished operation: snapshot and done at once; unknown id: undefined', async () => {
  const reg = new OperationRegistry(new FakeClock());
  reg.start('x', 'op-d0d0d0', undefined, async () => 'r');
  await reg.wait('op-d0d0d0');
  const events: OperationEvent[] = [];
  assert.ok(reg.subscribe('op-d0d0d0', (e) => events.push(e)));
  assert.deepEqual(
    events.map((e) => e.type),
    ['snapshot', 'done'],
  );
  assert.equal(
    reg.subscribe('op-eeeeee', () => {}),
    undefined,
  );
  await assert.rejects(reg.wait('op-eeeeee'), (e: unknown) => e instanceof BangerError && e.code === 'not_found');
});

test('a reused id gets a numeric suffix instead of replacing the running operation', async () => {
  const reg = new OperationRegistry(new FakeClock());
  const g = gate();
  const a = reg.start('x', 'op-aaaaaa', undefined, () => g.promise);
  const b = reg.start('x', 'op-aaaaaa', undefined, () => g.promise);
  const c = reg.start('x', 'op-aaaaaa', undefined, () => g.promise);
  assert.deepEqual([a.id, b.id, c.id], ['op-aaaaaa', 'op-aaaaaa.2', 'op-aaaaaa.3']);
  g.open();
  await Promise.all([a, b, c].map((o) => reg.wait(o.id)));
});

test('finished operations are trimmed to keepFinished, oldest-finished first; running ones are never trimmed', async () => {
  const clock = new FakeClock();
  const reg = new OperationRegistry(clock, 3);
  const g = gate();
  reg.start('long', 'op-100000', undefined, () => g.promise);
  for (let i = 1; i <= 6; i++) {
    clock.advance(1000);
    const op = reg.start('quick', `op-00000${i}`, undefined, async () => i);
    await reg.wait(op.id);
  }
  assert.deepEqual(
    reg.list().map((o) => o.id),
    ['op-100000', 'op-000004', 'op-000005', 'op-000006'],
  );
  // The long operation was created first but finishes last: it is the newest finished one and
  // must survive the trim (`banger daemon ops` shows what just happened).
  clock.advance(1000);
  g.open();
  await reg.wait('op-100000');
  assert.deepEqual(
    reg.list().map((o) => o.id),
    ['op-100000', 'op-000005', 'op-000006'],
  );
  assert.equal(reg.get('op-100000')?.state, 'succeeded');
});

test('drain cancels running operations and waits for them, but not past its timeout', async (t) => {
  // Mocked timers: drain's timeout passes only when the test says so, so "waits" and "not past its
  // timeout" are checked by order of events, not by a stopwatch.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const reg = new OperationRegistry(new FakeClock());
  reg.start('a', 'op-a00000', undefined, (c) => new Promise((_, reject) => c.signal.addEventListener('abort', () => reject(c.signal.reason))));
  const stubborn = gate();
  reg.start('b', 'op-b00000', undefined, () => stubborn.promise);
  let drained = false;
  const draining = reg.drain(100).then(() => {
    drained = true;
  });
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(drained, false, 'drain waits while an operation still runs');
  t.mock.timers.tick(99);
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(drained, false, 'drain waits its whole timeout');
  t.mock.timers.tick(1);
  await draining;
  const a = reg.get('op-a00000');
  assert.equal(a?.state, 'cancelled');
  assert.match(a?.error?.message ?? '', /shutting down/);
  assert.equal(reg.get('op-b00000')?.state, 'running', 'an operation that ignores the abort is still running after the timeout');
  stubborn.open();
  assert.equal((await reg.wait('op-b00000')).state, 'cancelled');
});
