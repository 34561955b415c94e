import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import type { Proc, ProcResult } from '../../src/api/proc-schemas.js';
import { commandSpec, ExecResult, envList } from '../../src/sdk/process.js';
import { abortable, asyncDispose, EventLog, EventQueue } from '../../src/sdk/util.js';

const proc = (over: Partial<Proc> = {}): Proc => ({
  id: 'p-0123456789',
  name: null,
  argv: null,
  shell: 'make -s test',
  pid: 7,
  pty: false,
  state: 'exited',
  exitCode: 0,
  signal: null,
  timedOut: false,
  code: null,
  startedMs: 0,
  endedMs: 10,
  stdoutBytes: 0,
  stderrBytes: 0,
  truncated: false,
  stdin: 'null',
  stdinBytes: 0,
  ...over,
});
const result = (over: Partial<ProcResult> = {}): ProcResult => ({
  exitCode: 0,
  signal: null,
  timedOut: false,
  durationMs: 1500,
  stdout: 'out\n',
  stderr: '',
  truncated: false,
  code: null,
  ...over,
});

test('an exit status 0 is ok and check() returns the result itself', () => {
  const r = new ExecResult(result(), proc());
  assert.equal(r.ok, true);
  assert.equal(r.check(), r);
  assert.equal(r.stdout, 'out\n');
});

test('check() turns each kind of failure into a process_failed BangerError naming it; the result itself never throws', () => {
  const cases: Array<[Partial<ProcResult>, RegExp]> = [
    [{ exitCode: 2, stderr: 'warming up\nmake: *** [test] Error 2\n' }, /"make -s test" exited with status 2: make: \*\*\* \[test\] Error 2$/],
    [{ exitCode: null, signal: 'KILL' }, /killed by SIGKILL/],
    [{ exitCode: null, signal: 'KILL', timedOut: true, durationMs: 2000 }, /timed out after 2s/],
    [{ exitCode: 127, code: 'command_not_found' }, /was not found/],
  ];
  for (const [over, message] of cases) {
    const r = new ExecResult(result(over), proc());
    assert.equal(r.ok, false, JSON.stringify(over));
    assert.equal(r.exitCode, over.exitCode);
    assert.throws(
      () => r.check(),
      (e: unknown) => e instanceof BangerError && e.code === 'process_failed' && message.test(e.message) && typeof e.fix === 'string',
      JSON.stringify(over),
    );
  }
});

test('a command is a shell string or a non-empty argv; env takes an object or K=V strings', () => {
  assert.deepEqual(commandSpec('echo hi'), { shell: 'echo hi' });
  assert.deepEqual(commandSpec(['echo', 'hi']), { argv: ['echo', 'hi'] });
  assert.throws(
    () => commandSpec([]),
    (e: unknown) => e instanceof BangerError && e.code === 'bad_request',
  );
  assert.deepEqual(envList({ A: '1', B: 'x=y' }), ['A=1', 'B=x=y']);
  assert.deepEqual(envList(['A=1']), ['A=1']);
  assert.equal(envList(undefined), undefined);
});

test('operation events: every iterator sees every event from the first, late ones too, and ends with the log', async () => {
  const log = new EventLog<number>();
  const early: number[] = [];
  const reading = (async () => {
    for await (const n of log) early.push(n);
  })();
  log.push(1);
  log.push(2);
  await new Promise((r) => setImmediate(r));
  log.push(3);
  log.end();
  log.push(4); // after the end: dropped
  await reading;
  const late: number[] = [];
  for await (const n of log) late.push(n);
  assert.deepEqual(early, [1, 2, 3]);
  assert.deepEqual(late, [1, 2, 3]);
});

test('abortable rejects with a cancelled BangerError carrying the reason, at once', async () => {
  const ac = new AbortController();
  const never = new Promise<never>(() => {});
  const p = abortable(never, ac.signal, 'the call');
  ac.abort(new Error('user gave up'));
  await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'cancelled' && (e.cause as Error).message === 'user gave up');
  await assert.rejects(abortable(Promise.resolve(1), ac.signal), (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
  assert.equal(await abortable(Promise.resolve(1), new AbortController().signal), 1);
});

test('the dispose symbol is the runtime’s Symbol.asyncDispose, or the registry symbol Node uses for it', () => {
  const native = (Symbol as { asyncDispose?: symbol }).asyncDispose;
  assert.equal(asyncDispose, native ?? Symbol.for('nodejs.asyncDispose'));
});

test('an event queue whose consumer falls behind fails with payload_too_large and stops its producer (memory stays bounded)', async () => {
  let stopped = 0;
  const q = new EventQueue<number>(3, () => stopped++);
  for (let i = 0; i < 10; i++) q.push(i);
  assert.equal(stopped, 1);
  const got: number[] = [];
  await assert.rejects(
    (async () => {
      for await (const n of q.drain()) got.push(n);
    })(),
    (e: unknown) => e instanceof BangerError && e.code === 'payload_too_large',
  );
  assert.deepEqual(got, [0, 1, 2]);
});
