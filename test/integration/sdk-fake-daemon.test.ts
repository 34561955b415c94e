import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { ErrorBody } from '../../src/api/errors.js';
import { BangerError } from '../../src/api/errors.js';
import type { Proc } from '../../src/api/proc-schemas.js';
import type { Operation, OperationEvent, Snapshot, VmForkResult, Vm as VmInfo } from '../../src/api/schemas.js';
import { resolveLayout } from '../../src/config/layout.js';
import { Banger } from '../../src/sdk/index.js';

/**
 * The SDK against a FAKE bangerd: a small HTTP server on a private socket that answers the routes
 * the SDK calls with canned data and records every request. What is checked here is the SDK's own
 * logic: error mapping, operation progress as an async iterable, exec results, abort → kill,
 * disposal. The real daemon and guest are exercised by test/e2e/sdk.test.ts.
 */

interface Seen {
  method: string;
  path: string;
  body: unknown;
  opId: string;
}

const vmInfo = (name: string): VmInfo => ({
  id: `id-${name}`,
  name,
  imageId: 'img',
  imageName: 'img',
  kernelName: 'k',
  state: 'running',
  vcpus: 1,
  memoryMib: 256,
  diskSizeBytes: 1 << 30,
  vmm: 'qemu',
  accel: 'tcg',
  pid: 1,
  ip: '10.0.0.2',
  nat: false,
  tap: 'bg0',
  lastError: null,
  dir: '/x',
  createdAt: 'now',
  startedAt: 'now',
  touchedAt: 'now',
  workspace: null,
});

const snapshotInfo = (name: string): Snapshot => ({
  id: `snap-${name}`,
  name,
  purpose: 'user',
  sourceVm: 'dev',
  imageName: 'img',
  hasMemory: true,
  sizeBytes: 4096,
  manifest: {
    format: 1,
    vmm: 'qemu',
    vmmVersion: 'QEMU emulator version 8.2.2',
    deviceHash: 'd'.repeat(64),
    kernelId: 'k',
    kernelName: 'k',
    imageId: 'img',
    imageName: 'img',
    agentHash: 'a'.repeat(64),
    vcpus: 1,
    memoryMib: 256,
    diskSizeBytes: 1 << 30,
    memory: true,
    stateBytes: 1024,
    memoryBytes: 3072,
    sourceVm: 'dev',
    takenAt: 'running',
  },
  dependents: [],
  createdAt: 'now',
});

const op = (over: Partial<Operation>): Operation => ({ id: 'op-1', kind: 'vm.create', state: 'running', stages: [], createdAt: 'now', ...over });

const proc = (over: Partial<Proc>): Proc => ({
  id: 'p-1',
  name: null,
  argv: null,
  shell: 'x',
  pid: 9,
  pty: false,
  state: 'running',
  exitCode: null,
  signal: null,
  timedOut: false,
  code: null,
  startedMs: 0,
  endedMs: null,
  stdoutBytes: 0,
  stderrBytes: 0,
  truncated: false,
  stdin: 'null',
  stdinBytes: 0,
  ...over,
});

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

describe('SDK against a fake daemon', () => {
  let dir: string;
  let server: Server;
  let banger: Banger;
  const seen: Seen[] = [];
  /** The fake's state: the create's outcome, and the one guest process exec starts. */
  let createOutcome: 'ok' | 'fail' | 'hang' = 'ok';
  let cancelled = false;
  /** Ends a hanging operation's stream without a cancel (a follower that stopped following). */
  let released = false;
  let createdName = 'made';
  /** What stdin writes the fake received. */
  const stdinWrites: Array<{ offset: number; bytes: number; eof: boolean }> = [];
  /** Wait requests whose connection the client closed before the fake answered. */
  let waitsDropped = 0;
  let running: Proc | undefined;
  /** What the next succeeding operation gives (default: the created VM) and what a failing one says. */
  let opResult: unknown;
  let opError: ErrorBody | undefined;

  const send = (res: ServerResponse, status: number, body: unknown, opId: string) => {
    res.writeHead(status, { 'content-type': 'application/json', 'x-banger-op': opId });
    res.end(JSON.stringify(body));
  };

  before(async () => {
    dir = await mkdtemp('/tmp/bg-sdk-fake-');
    const layout = resolveLayout({ BANGER_HOME: join(dir, 'home') });
    await mkdir(layout.runtimeDir, { recursive: true });
    await chmod(layout.runtimeDir, 0o700);
    server = createServer(async (req, res) => {
      const body = await readBody(req);
      const opId = String(req.headers['x-banger-op'] ?? '');
      const path = req.url ?? '';
      seen.push({ method: req.method ?? '', path, body, opId });
      const m = `${req.method} ${path.split('?')[0]}`;
      if (m === 'GET /v1/daemon') return send(res, 200, { pid: 1, version: 'fake' }, opId);
      if (m === 'GET /v1/vms/nope')
        return send(res, 404, { error: { code: 'not_found', message: 'vm "nope" not found', fix: 'list them with `banger vm list`' } }, opId);
      if (m === 'POST /v1/vms') {
        createdName = (body as { name?: string }).name ?? 'made';
        return send(res, 202, { operation: op({}) }, opId);
      }
      // Warm start: every long one is an operation (op-1, followed below); the short ones answer at once.
      const started = /^POST \/v1\/(?:vms\/[^/]+\/(pause|resume|snapshots|fork)|images\/[^/]+\/warm)$/.exec(m);
      if (started) return send(res, 202, { operation: op({ kind: started[1] ? `vm.${started[1]}` : 'image.warm' }) }, opId);
      if (m === 'GET /v1/snapshots') return send(res, 200, { snapshots: [snapshotInfo('s1'), snapshotInfo('s2')] }, opId);
      if (m === 'GET /v1/snapshots/s1') return send(res, 200, snapshotInfo('s1'), opId);
      if (m === 'DELETE /v1/snapshots/s1') {
        if (path.endsWith('?force=true')) return send(res, 200, { deleted: 's1' }, opId);
        const error: ErrorBody = { code: 'conflict', message: 'snapshot s1 has VMs layered on its disks: c1', fix: 'delete them first, or --force' };
        return send(res, 409, { error }, opId);
      }
      if (m === 'GET /v1/operations/op-1') return send(res, 200, op({}), opId);
      if (m === 'POST /v1/operations/op-1/cancel') {
        cancelled = true;
        return send(res, 200, { cancelled: true }, opId);
      }
      if (m === 'GET /v1/operations/op-1/events') {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const ev = (e: OperationEvent) => res.write(`data: ${JSON.stringify(e)}\n\n`);
        ev({ type: 'snapshot', operation: op({}) });
        ev({ type: 'stage', stage: { name: 'prepare disks', startedAt: 'now' } });
        ev({ type: 'progress', progress: { current: 50, total: 100, unit: '%' } });
        const end = (final: Operation) => {
          ev({ type: 'done', operation: final });
          res.end();
        };
        if (createOutcome === 'ok') return end(op({ state: 'succeeded', result: opResult ?? vmInfo(createdName) }));
        if (createOutcome === 'fail')
          return end(op({ state: 'failed', error: opError ?? { code: 'vmm_failed', message: 'qemu exited', fix: 'see the VM log' } }));
        const timer = setInterval(() => {
          if (cancelled || released) {
            clearInterval(timer);
            // A cancel that came after the work was done: the operation ends cancelled WITH its result.
            end(op({ state: 'cancelled', ...(cancelled && opResult !== undefined ? { result: opResult } : {}) }));
          }
        }, 10);
        return;
      }
      if (m === 'GET /v1/vms/dev/ports') return send(res, 200, { ports: [{ proto: 'tcp', address: '0.0.0.0', port: 22, pid: 1, command: 'sshd' }] }, opId);
      if (m === 'POST /v1/vms/actions') return send(res, 200, { results: [{ ref: (body as { refs: string[] }).refs[0], ok: true }] }, opId);
      const procs = /^(GET|POST|DELETE) \/v1\/vms\/dev\/procs(?:\/([^/]+)(?:\/(\w+))?)?$/.exec(m);
      if (procs) {
        const [, method, id, action] = procs;
        if (method === 'DELETE' && id) return send(res, 200, {}, opId);
        if (method === 'POST' && !id) {
          const b = body as { shell: string };
          running = proc({ id: 'p-1', shell: b.shell });
          return send(res, 201, running, opId);
        }
        if (!running || id !== running.id) return send(res, 404, { error: { code: 'not_found', message: 'no such process' } }, opId);
        if (method === 'GET' && !action) return send(res, 200, running, opId);
        if (action === 'stdin') {
          const b = body as { offset: number; data: string; eof?: boolean };
          const bytes = Buffer.from(b.data, 'base64').length;
          stdinWrites.push({ offset: b.offset, bytes, eof: !!b.eof });
          running = { ...running, stdinBytes: b.offset + bytes };
          return send(res, 200, { offset: b.offset + bytes }, opId);
        }
        if (action === 'output') {
          // Canned output by command: "logger" says where it listens, "quiet" says nothing useful; both
          // then exit. "mute" prints nothing and never exits: its stream stays open until the client leaves.
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          const ev = (e: unknown) => res.write(`data: ${JSON.stringify(e)}\n\n`);
          const b64 = (t: string) => Buffer.from(t).toString('base64');
          if (running.shell === 'mute') return;
          ev({ type: 'stdout', offset: 0, data: b64('starting\n') });
          if (running.shell === 'logger') {
            ev({ type: 'stderr', offset: 0, data: b64('listening on 80') });
            ev({ type: 'stderr', offset: 15, data: b64('80\n') });
          }
          ev({ type: 'exit', proc: { ...running, state: 'exited', exitCode: 0 } });
          return void res.end();
        }
        if (action === 'signal') {
          running = { ...running, state: 'exited', signal: String((body as { signal: string }).signal), endedMs: 1 };
          return send(res, 200, running, opId);
        }
        if (action === 'wait') {
          const r = running;
          if (r.shell === 'fast')
            return send(
              res,
              200,
              {
                proc: { ...r, state: 'exited', exitCode: 3 },
                result: { exitCode: 3, signal: null, timedOut: false, durationMs: 5, stdout: 'to out\n', stderr: 'to err\n', truncated: false, code: null },
              },
              opId,
            );
          // "slow": the wait answers (result null) when its slice ends or the process is signalled.
          const slice = (body as { timeoutMs?: number }).timeoutMs ?? 0;
          const started = Date.now();
          let answered = false;
          res.on('close', () => {
            if (answered) return;
            waitsDropped++;
            clearInterval(poll);
          });
          const poll = setInterval(() => {
            // The next test may have reset the fake already: this wait then answers what it saw last.
            const now = running?.id === r.id ? running : { ...r, state: 'exited' as const, signal: 'KILL' };
            if (now.state !== 'running') {
              clearInterval(poll);
              answered = true;
              const result = { exitCode: null, signal: now.signal, timedOut: false, durationMs: 1, stdout: '', stderr: '', truncated: false, code: null };
              send(res, 200, { proc: now, result }, opId);
            } else if (Date.now() - started >= slice) {
              clearInterval(poll);
              answered = true;
              send(res, 200, { proc: now, result: null }, opId);
            }
          }, 10);
          return;
        }
      }
      send(res, 404, { error: { code: 'not_found', message: `fake: no route ${m}` } }, opId);
    });
    await new Promise<void>((r) => server.listen(layout.socketPath, r));
    banger = await Banger.connect({ home: join(dir, 'home'), autostart: false });
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    seen.length = 0;
    createOutcome = 'ok';
    cancelled = false;
    released = false;
    running = undefined;
    waitsDropped = 0;
    stdinWrites.length = 0;
    opResult = undefined;
    opError = undefined;
  });

  test("a daemon error becomes a BangerError with the daemon's code, message, fix and the request's op id", async () => {
    const e = await banger.vms.get('nope').then(
      () => assert.fail('resolved'),
      (x: unknown) => x,
    );
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'not_found');
    assert.match(e.message, /vm "nope" not found/);
    assert.equal(e.fix, 'list them with `banger vm list`');
    const request = seen.find((s) => s.path === '/v1/vms/nope');
    assert.ok(request?.opId.startsWith('op-'));
    assert.equal(e.opId, request?.opId);
  });

  test('create: progress events arrive as an async iterable, in order; awaiting gives the VM handle', async () => {
    const creating = banger.vms.create({ name: 'made', image: 'img' });
    const types: string[] = [];
    for await (const ev of creating.events) types.push(ev.type === 'stage' ? `stage:${ev.stage.name}` : ev.type);
    const vm = await creating;
    assert.deepEqual(types, ['snapshot', 'stage:prepare disks', 'progress', 'done']);
    assert.equal(vm.name, 'made');
    assert.equal(creating.id, 'op-1');
    assert.deepEqual(seen.find((s) => s.path === '/v1/vms')?.body, { name: 'made', image: 'img' }, 'SDK-only options are not sent');
  });

  test("a failed create rejects with the operation's error (code and fix) and its op id", async () => {
    createOutcome = 'fail';
    await assert.rejects(
      banger.vms.create({ image: 'img' }),
      (e: unknown) => e instanceof BangerError && e.code === 'vmm_failed' && e.fix === 'see the VM log' && e.opId === 'op-1',
    );
  });

  test('aborting a create cancels the operation in the daemon and rejects with cancelled', async () => {
    createOutcome = 'hang';
    const ac = new AbortController();
    const creating = banger.vms.create({ image: 'img', signal: ac.signal });
    for await (const ev of creating.events) if (ev.type === 'progress') ac.abort();
    await assert.rejects(creating, (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
    assert.equal(cancelled, true, 'POST /v1/operations/op-1/cancel was sent');
  });

  test('exec: a non-zero exit is a result with separate streams, and check() throws process_failed', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const r = await made.exec('fast');
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, 'to out\n');
    assert.equal(r.stderr, 'to err\n');
    assert.throws(
      () => r.check(),
      (e: unknown) => e instanceof BangerError && e.code === 'process_failed' && /status 3: to err/.test(e.message),
    );
  });

  test('an unnamed exec forgets its process after the result (the guest holds 256); a named one is kept', async () => {
    const vm = await banger.vms.create({ name: 'dev' });
    await vm.exec('fast');
    assert.ok(
      seen.some((r) => r.method === 'DELETE' && r.path.startsWith('/v1/vms/dev/procs/p-1')),
      'DELETE of the finished process',
    );
    seen.length = 0;
    await vm.exec('fast', { name: 'keep-me' });
    assert.equal(seen.filter((r) => r.method === 'DELETE').length, 0);
    await assert.rejects(vm.exec('fast', { maxBuffer: 64 * 1024 * 1024 }), (e: unknown) => e instanceof BangerError && e.code === 'bad_request');
  });

  test("aborting operations.follow stops following and never cancels another program's operation", async () => {
    createOutcome = 'hang';
    const controller = new AbortController();
    const following = banger.operations.follow('op-1', { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(following, (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
    assert.equal(cancelled, false, 'no POST /v1/operations/op-1/cancel');
    assert.equal(seen.filter((r) => r.path.endsWith('/cancel')).length, 0);
    released = true;
    await new Promise((r) => setTimeout(r, 100)); // the fake's stream ends before the next test resets it
  });

  test('aborting an exec kills its process group (SIGKILL sent to the process) and rejects with cancelled', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const ac = new AbortController();
    const execution = made.exec('slow', { signal: ac.signal });
    while (!seen.some((s) => s.path.endsWith('/wait'))) await new Promise((r) => setTimeout(r, 5));
    ac.abort();
    await assert.rejects(execution, (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
    const signals = seen.filter((s) => s.path === '/v1/vms/dev/procs/p-1/signal');
    assert.deepEqual(
      signals.map((s) => s.body),
      [{ signal: 'KILL' }],
    );
    assert.equal(running?.state, 'exited');
  });

  test('aborting a wait stops waiting at once (the request is closed, not left parked in the daemon) and leaves the process running', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const p = await made.spawn('slow');
    const ac = new AbortController();
    const waiting = p.wait({ signal: ac.signal });
    while (!seen.some((s) => s.path.endsWith('/wait'))) await new Promise((r) => setTimeout(r, 5));
    ac.abort();
    await assert.rejects(waiting, (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
    for (let i = 0; i < 100 && waitsDropped === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(waitsDropped, 1, 'the daemon saw the wait request closed before its 30 s slice ended');
    assert.equal(seen.filter((s) => s.path.endsWith('/signal')).length, 0, 'no signal: the process keeps running');
    assert.equal(running?.state, 'running');
  });

  test('waitForLog: a line split across chunks is matched whole (never a half line); an end without a match is process_failed; silence is a timeout', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const logger = await made.spawn('logger');
    const m = await logger.waitForLog(/listening on (\d+)/);
    assert.equal(m[1], '8080');
    await assert.rejects((await made.spawn('quiet')).waitForLog(/listening/), (e: unknown) => e instanceof BangerError && e.code === 'process_failed');
    await assert.rejects(
      (await made.spawn('mute')).waitForLog(/listening/, { timeoutMs: 200 }),
      (e: unknown) => e instanceof BangerError && e.code === 'timeout',
    );
    const outside = new AbortController();
    const waiting = (await made.spawn('mute')).waitForLog(/x/, { timeoutMs: 60_000, signal: outside.signal });
    outside.abort();
    await assert.rejects(waiting, (e: unknown) => e instanceof BangerError && e.code === 'cancelled', "the caller's abort is cancelled, not timeout");
  });

  test('waitForPort: a port that never listens while the process ended is process_failed; one that listens resolves', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const p = await made.spawn('slow');
    assert.equal((await p.waitForPort(22)).command, 'sshd');
    running = { ...(running as Proc), state: 'exited', exitCode: 1 };
    await assert.rejects(p.waitForPort(8080), (e: unknown) => e instanceof BangerError && e.code === 'process_failed' && /before port 8080/.test(e.message));
  });

  test('stdin: writes go in order at consecutive offsets, large ones in chunks the daemon accepts, then EOF', async () => {
    const made = await banger.vms.create({ name: 'dev' });
    const p = await made.spawn('slow', { stdin: true });
    const big = Buffer.alloc(1200 * 1024, 1);
    await Promise.all([p.write('abc'), p.write(big), p.end()]);
    assert.deepEqual(stdinWrites, [
      { offset: 0, bytes: 3, eof: false },
      { offset: 3, bytes: 512 * 1024, eof: false },
      { offset: 3 + 512 * 1024, bytes: 512 * 1024, eof: false },
      { offset: 3 + 1024 * 1024, bytes: 176 * 1024, eof: false },
      { offset: 3 + 1200 * 1024, bytes: 0, eof: true },
    ]);
  });

  test('disposal: dispose() deletes a created VM once; a handle from get() disposes nothing', async () => {
    const made = await banger.vms.create({ name: 'made' });
    await made.dispose();
    await made.dispose();
    const deletes = seen.filter((s) => s.path === '/v1/vms/actions');
    assert.deepEqual(
      deletes.map((s) => s.body),
      [{ action: 'delete', refs: ['id-made'], force: true }],
    );
  });

  test('await using deletes the VM when the block ends (where the runtime has Symbol.asyncDispose)', async (t) => {
    if (!(Symbol as { asyncDispose?: symbol }).asyncDispose) return t.skip('this Node has no Symbol.asyncDispose (dispose() is tested above)');
    {
      await using vm = await banger.vms.create({ name: 'made', dispose: 'stop' });
      assert.equal(vm.name, 'made');
      assert.equal(seen.filter((s) => s.path === '/v1/vms/actions').length, 0);
    }
    assert.deepEqual(
      seen.filter((s) => s.path === '/v1/vms/actions').map((s) => s.body),
      [{ action: 'stop', refs: ['id-made'], force: false }],
    );
  });

  describe('warm start: pause/resume, snapshots, fork, the warm pool', () => {
    const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;
    const posted = (path: string) => seen.filter((s) => s.method === 'POST' && s.path === path).map((s) => s.body);

    test('pause({toDisk}) and resume() are operations on the VM by id; the handle takes the state the daemon gives', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      opResult = { ...vmInfo('dev'), state: 'suspended', pid: null };
      const pausing = vm.pause({ toDisk: true });
      const types: string[] = [];
      for await (const ev of pausing.events) types.push(ev.type);
      await pausing;
      assert.deepEqual(types, ['snapshot', 'stage', 'progress', 'done']);
      assert.equal(vm.info.state, 'suspended');
      opResult = vmInfo('dev');
      await vm.resume();
      assert.equal(vm.info.state, 'running');
      await vm.pause();
      assert.deepEqual(posted('/v1/vms/id-dev/pause'), [{ toDisk: true }, { toDisk: false }]);
      assert.deepEqual(posted('/v1/vms/id-dev/resume'), [{}]);
    });

    test('snapshot() sends only the options given (no signal) and gives the snapshot; failures and aborts are mapped', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      opResult = snapshotInfo('s1');
      const snap = await vm.snapshot({ name: 's1', memory: false, signal: new AbortController().signal });
      assert.equal(snap.name, 's1');
      assert.equal(snap.manifest.takenAt, 'running');
      await vm.snapshot();
      assert.deepEqual(posted('/v1/vms/id-dev/snapshots'), [{ name: 's1', memory: false }, {}]);

      createOutcome = 'fail';
      opError = { code: 'conflict', message: 'a snapshot named "s1" already exists', fix: 'pick another --name' };
      await assert.rejects(vm.snapshot({ name: 's1' }), (e: unknown) => isCode('conflict')(e) && (e as BangerError).opId === 'op-1');

      createOutcome = 'hang';
      const ac = new AbortController();
      const taking = vm.snapshot({ signal: ac.signal });
      for await (const ev of taking.events) if (ev.type === 'progress') ac.abort();
      await assert.rejects(taking, isCode('cancelled'));
      assert.equal(cancelled, true, 'the snapshot operation was cancelled in the daemon');
    });

    test('fork(): a handle per clone made (disposing deletes it), a BangerError per clone that failed; the request carries count and names', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      const result: VmForkResult = {
        snapshot: 'fork-1',
        results: [
          { name: 'c1', ok: true, vm: vmInfo('c1') },
          { name: 'c2', ok: false, error: { code: 'guest_command_failed', message: 'identity.set failed at net', fix: 'see the VM log' } },
          { name: 'c3', ok: true, vm: vmInfo('c3') },
        ],
      };
      opResult = result;
      const fork = await vm.fork({ names: ['c1', 'c2', 'c3'] });
      assert.deepEqual(posted('/v1/vms/id-dev/fork'), [{ count: 3, names: ['c1', 'c2', 'c3'] }], 'names alone give the count');
      assert.equal(fork.snapshot, 'fork-1');
      assert.deepEqual(
        fork.vms.map((v) => [v.name, v.disposeAction]),
        [
          ['c1', 'delete'],
          ['c3', 'delete'],
        ],
      );
      assert.equal(fork.failed.length, 1);
      const failed = fork.failed[0];
      assert.equal(failed?.name, 'c2');
      assert.ok(failed?.error instanceof BangerError && failed.error.code === 'guest_command_failed' && failed.error.fix === 'see the VM log');
      seen.length = 0;
      await fork.dispose();
      await fork.dispose();
      assert.deepEqual(posted('/v1/vms/actions'), [
        { action: 'delete', refs: ['id-c1'], force: true },
        { action: 'delete', refs: ['id-c3'], force: true },
      ]);

      seen.length = 0;
      const kept = await vm.fork({ dispose: 'none' });
      assert.deepEqual(posted('/v1/vms/id-dev/fork'), [{}], 'no count: the daemon default (1)');
      await kept.dispose();
      assert.deepEqual(posted('/v1/vms/actions'), [], "dispose: 'none' leaves the clones");
    });

    test('aborting a fork cancels it and deletes the clones the daemon had made by then (nobody holds a handle on them)', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      createOutcome = 'hang';
      opResult = {
        snapshot: 'fork-1',
        results: [
          { name: 'c1', ok: true, vm: vmInfo('c1') },
          { name: 'c2', ok: false, error: { code: 'cancelled', message: 'operation op-1 was cancelled' } },
        ],
      } satisfies VmForkResult;
      const ac = new AbortController();
      const forking = vm.fork({ count: 2, signal: ac.signal, dispose: 'none' });
      for await (const ev of forking.events) if (ev.type === 'progress') ac.abort();
      await assert.rejects(forking, isCode('cancelled'));
      assert.equal(cancelled, true);
      assert.deepEqual(posted('/v1/vms/actions'), [{ action: 'delete', refs: ['id-c1'], force: true }]);
    });

    test('aborting a snapshot that the daemon finished anyway deletes it; aborting a create that finished deletes the VM', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      createOutcome = 'hang';
      opResult = snapshotInfo('s1');
      const ac = new AbortController();
      const taking = vm.snapshot({ signal: ac.signal });
      for await (const ev of taking.events) if (ev.type === 'progress') ac.abort();
      await assert.rejects(taking, isCode('cancelled'));
      assert.deepEqual(
        seen.filter((s) => s.method === 'DELETE' && s.path.startsWith('/v1/snapshots/')).map((s) => s.path),
        ['/v1/snapshots/snap-s1?force=true'],
      );

      cancelled = false;
      seen.length = 0;
      opResult = vmInfo('late');
      const ac2 = new AbortController();
      const creating = banger.vms.create({ name: 'late', signal: ac2.signal });
      for await (const ev of creating.events) if (ev.type === 'progress') ac2.abort();
      await assert.rejects(creating, isCode('cancelled'));
      assert.deepEqual(posted('/v1/vms/actions'), [{ action: 'delete', refs: ['id-late'], force: true }]);
    });

    test('fork(): a clone name the daemon gives that is not a DNS label is refused (it would end up in ssh argv and paths)', async () => {
      const vm = await banger.vms.create({ name: 'dev' });
      opResult = { snapshot: 'fork-1', results: [{ name: 'x', ok: true, vm: vmInfo('-oProxyCommand=touch /tmp/x') }] } satisfies VmForkResult;
      await assert.rejects(vm.fork(), isCode('rejected_content'));
    });

    test('snapshots.list/get/delete: paths, force, and a refused delete keeps its code and fix', async () => {
      assert.deepEqual(
        (await banger.snapshots.list()).map((x) => x.name),
        ['s1', 's2'],
      );
      assert.equal((await banger.snapshots.get('s1')).manifest.vmm, 'qemu');
      await assert.rejects(banger.snapshots.get('nope'), isCode('not_found'));
      await assert.rejects(
        banger.snapshots.delete('s1'),
        (e: unknown) => isCode('conflict')(e) && /c1/.test((e as BangerError).message) && (e as BangerError).fix === 'delete them first, or --force',
      );
      await banger.snapshots.delete('s1', { force: true });
      assert.deepEqual(
        seen.filter((s) => s.method === 'DELETE').map((s) => s.path),
        ['/v1/snapshots/s1?force=false', '/v1/snapshots/s1?force=true'],
      );
    });

    test('images.warm(ref, size) is an operation giving the warm snapshot; the size goes in the body, the signal does not', async () => {
      opResult = { ...snapshotInfo('warm-img'), purpose: 'warm' };
      const warming = banger.images.warm('debian bookworm', { vcpus: 2, memoryMib: 512, diskSizeBytes: 2 << 30, signal: new AbortController().signal });
      const snap = await warming;
      assert.equal(snap.purpose, 'warm');
      assert.equal(warming.operation?.state, 'succeeded');
      assert.deepEqual(posted('/v1/images/debian%20bookworm/warm'), [{ vcpus: 2, memoryMib: 512, diskSizeBytes: 2 << 30 }]);
    });

    test('vms.create({fromSnapshot}) that the daemon refuses is snapshot_incompatible with details.field; cold reaches the request', async () => {
      createOutcome = 'fail';
      opError = {
        code: 'snapshot_incompatible',
        message: 'snapshot s1 cannot be restored here: the agent differs',
        fix: 'take a new snapshot with this banger, VMM and kernel (or create from the image)',
        details: { field: 'agentHash', snapshot: 'a'.repeat(64), here: 'b'.repeat(64) },
      };
      const e = await banger.vms.create({ name: 'back', fromSnapshot: 's1' }).then(
        () => assert.fail('resolved'),
        (x: unknown) => x,
      );
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, 'snapshot_incompatible');
      assert.equal(e.status, 409);
      assert.equal((e.details as { field?: string }).field, 'agentHash');
      assert.equal(e.opId, 'op-1');
      createOutcome = 'ok';
      await banger.vms.create({ name: 'cold-one', image: 'img', cold: true });
      assert.deepEqual(posted('/v1/vms'), [
        { name: 'back', fromSnapshot: 's1' },
        { name: 'cold-one', image: 'img', cold: true },
      ]);
    });
  });
});
