import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { PROC_ID, ProcStartRequestSchema, ProcStdinRequestSchema } from '../../src/api/proc-schemas.js';
import { assembleResult, BoundedBuffer, checkProcRef, findProc, newProcId, parseSignal, signalName, toApiProc } from '../../src/daemon/services/proc-logic.js';
import type { GuestProc } from '../../src/guest/guest-channel.js';

const proc = (over: Partial<GuestProc> = {}): GuestProc => ({
  id: 'p-1',
  name: null,
  argv: ['true'],
  shell: null,
  pid: 10,
  pty: false,
  state: 'exited',
  exitCode: 0,
  signal: null,
  timedOut: false,
  code: null,
  startedMs: 1_000,
  endedMs: 1_250,
  stdoutBytes: 0,
  stderrBytes: 0,
  truncated: false,
  stdin: 'null',
  stdinBytes: 0,
  ...over,
});

const isBad = (e: unknown) => e instanceof BangerError && e.code === 'bad_request';

test('signals: names with or without SIG, any case, and numbers; unknown ones are refused', () => {
  assert.equal(parseSignal('TERM'), 15);
  assert.equal(parseSignal('sigkill'), 9);
  assert.equal(parseSignal('SIGINT'), 2);
  assert.equal(parseSignal('hup'), 1);
  assert.equal(parseSignal(10), 10);
  assert.equal(parseSignal('34'), 34);
  assert.equal(parseSignal(64), 64);
  for (const bad of ['', 'TERMINATE', 'SIG', '0', '65', 0, 65, -1, 'KILL9']) assert.throws(() => parseSignal(bad as string), isBad, String(bad));
  assert.equal(signalName(9), 'KILL');
  assert.equal(signalName(15), 'TERM');
  assert.equal(signalName(28), 'WINCH');
  assert.equal(signalName(40), '40');
  // Every name maps back to itself.
  for (let n = 1; n <= 31; n++) assert.equal(parseSignal(signalName(n)), n);
});

test('process ids are fresh and valid agent ids; references are ids or names, nothing else', () => {
  const ids = new Set(Array.from({ length: 200 }, newProcId));
  assert.equal(ids.size, 200);
  for (const id of ids) assert.match(id, PROC_ID);
  for (const ok of ['p-0123456789', 'build', 'my_session.1', 'A-b']) assert.equal(checkProcRef(ok), ok);
  for (const bad of ['', '../x', 'a/b', '-x', '.x', 'a b', 'x'.repeat(65), 'é']) assert.throws(() => checkProcRef(bad), isBad, bad);
});

test('findProc: the id first, else the most recently started process of that name', () => {
  const procs = [
    proc({ id: 'p-a', name: 'web', startedMs: 1 }),
    proc({ id: 'p-b', name: 'web', startedMs: 5 }),
    proc({ id: 'p-c', name: 'p-a', startedMs: 9 }),
  ];
  assert.equal(findProc(procs, 'p-a')?.id, 'p-a', 'an id wins over a name that looks like it');
  assert.equal(findProc(procs, 'web')?.id, 'p-b');
  assert.equal(findProc(procs, 'nope'), undefined);
});

test('BoundedBuffer keeps at most max bytes and says when it cut', () => {
  const b = new BoundedBuffer(5);
  b.push(Buffer.from('abc'));
  assert.equal(b.cut, false);
  b.push(Buffer.from('defg'));
  b.push(Buffer.from('h'));
  assert.equal(b.toBuffer().toString(), 'abcde');
  assert.equal(b.cut, true);
  const zero = new BoundedBuffer(0);
  zero.push(Buffer.from('x'));
  assert.equal(zero.bytes, 0);
  assert.equal(zero.cut, true);
});

test('assembleResult: exit, signal by name, duration from the guest clock, truncated from the guest or the buffer', () => {
  const out = new BoundedBuffer(100);
  out.push(Buffer.from('hello\n'));
  const err = new BoundedBuffer(100);
  err.push(Buffer.from('warn\n'));
  assert.deepEqual(assembleResult(proc({ exitCode: 3 }), out, err), {
    exitCode: 3,
    signal: null,
    timedOut: false,
    durationMs: 250,
    stdout: 'hello\n',
    stderr: 'warn\n',
    truncated: false,
    code: null,
  });
  const killed = assembleResult(proc({ exitCode: null, signal: 9, timedOut: true }), new BoundedBuffer(1), new BoundedBuffer(1));
  assert.equal(killed.signal, 'KILL');
  assert.equal(killed.timedOut, true);
  assert.equal(assembleResult(proc({ truncated: true }), new BoundedBuffer(1), new BoundedBuffer(1)).truncated, true);
  const small = new BoundedBuffer(2);
  small.push(Buffer.from('abc'));
  assert.equal(assembleResult(proc(), small, new BoundedBuffer(1)).truncated, true);
  assert.equal(assembleResult(proc({ exitCode: 127, code: 'command_not_found' }), new BoundedBuffer(1), new BoundedBuffer(1)).code, 'command_not_found');
  assert.equal(toApiProc(proc({ signal: 15 })).signal, 'TERM');
});

test('request schemas: exactly one of argv and shell; env entries are K=V; stdin data is base64 and bounded', () => {
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'] }).success, true);
  assert.equal(ProcStartRequestSchema.parse({ shell: 'ls' }).mode, 'detach');
  assert.equal(ProcStartRequestSchema.safeParse({}).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], shell: 'ls' }).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: [] }).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], env: ['A=1', 'B_2='] }).success, true);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], env: ['=1'] }).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], name: '../x' }).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], user: 'root;rm' }).success, false);
  assert.equal(ProcStartRequestSchema.safeParse({ argv: ['ls'], surprise: 1 }).success, false);
  assert.equal(ProcStdinRequestSchema.safeParse({ offset: 0, data: 'aGk=' }).success, true);
  assert.equal(ProcStdinRequestSchema.safeParse({ offset: 0, data: 'not base64!' }).success, false);
  assert.equal(ProcStdinRequestSchema.safeParse({ offset: -1, data: '' }).success, false);
  assert.equal(ProcStdinRequestSchema.safeParse({ offset: 0, data: 'A'.repeat(800_000) }).success, false);
});
