/**
 * The guest agent's processes, files and data channels (docs/processes.md), driven through the
 * real agent binary on this host (no VM) by test/helpers/agent-harness.ts. Needs root: the agent
 * creates cgroups, and a guest agent always runs as root.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeFrame } from '../../src/guest/agent-frames.js';
import { AgentCallError, AgentHarness } from '../helpers/agent-harness.js';
import { Rng } from '../helpers/fuzz.js';

const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'needs root: the agent makes cgroups and switches users, as it does in a guest';

type Info = {
  id: string;
  pid: number | null;
  pty: boolean;
  state: string;
  exit_code: number | null;
  signal: number | null;
  timed_out: boolean;
  code: string | null;
  stdout_bytes: number;
  stderr_bytes: number;
  truncated: boolean;
  stdin: string;
  stdin_bytes: number;
};

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let h: AgentHarness;
let scratch: string;
let seq = 0;
const nextId = (prefix: string) => `${prefix}-${++seq}`;

before(async () => {
  if (!isRoot) return;
  h = await AgentHarness.start({ dataPorts: 2 });
  scratch = await mkdtemp(join(tmpdir(), 'banger-agent-files-'));
});

after(async () => {
  await h?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function run(params: Record<string, unknown>): Promise<{ info: Info; stdout: Buffer; stderr: Buffer }> {
  const id = nextId('run');
  await h.call('proc.start', { id, ...params });
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  assert.equal(s.result.ok, true);
  return { info: s.result.proc as Info, stdout: s.stdout, stderr: s.stderr };
}

/** Processes whose command line holds marker, found on the host through /proc. */
function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`).toString().includes(marker)) found.push(Number(pid));
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

test('exit codes 0 and 1; the info says how it ended', { skip }, async () => {
  const ok = await run({ argv: ['true'] });
  assert.equal(ok.info.state, 'exited');
  assert.equal(ok.info.exit_code, 0);
  assert.equal(ok.info.signal, null);
  assert.equal(ok.info.code, null);
  const bad = await run({ shell: 'echo nope >&2; exit 1' });
  assert.equal(bad.info.exit_code, 1);
  assert.equal(bad.stderr.toString(), 'nope\n');
});

test('a missing command is 127 command_not_found, already in the answer to proc.start', { skip }, async () => {
  const info = await h.call<Info>('proc.start', { id: nextId('missing'), argv: ['banger-no-such-command'] });
  assert.equal(info.state, 'exited');
  assert.equal(info.exit_code, 127);
  assert.equal(info.code, 'command_not_found');
  const denied = await h.call<Info>('proc.start', { id: nextId('denied'), argv: ['/etc/passwd'] });
  assert.equal(denied.exit_code, 126);
  assert.equal(denied.code, 'permission_denied');
});

test('a signal death reports the signal number', { skip }, async () => {
  const { info } = await run({ shell: 'kill -TERM $$' });
  assert.equal(info.signal, 15);
  assert.equal(info.exit_code, null);
});

test('argv travels as UTF-8, escapes and surrogate pairs included', { skip }, async () => {
  const word = 'é😀\t"q"\\';
  const { info, stdout } = await run({ argv: ['printf', '%s', word] });
  assert.equal(stdout.toString(), word);
  assert.deepEqual((info as Info & { argv: string[] }).argv, ['printf', '%s', word]);
});

test('cat with the default stdin (null) returns at once', { skip }, async () => {
  const { info, stdout } = await run({ argv: ['cat'] });
  assert.equal(info.exit_code, 0);
  assert.equal(info.stdin, 'null');
  assert.equal(stdout.length, 0);
});

test('a retried proc.start answers the same process; another spec for the id is refused', { skip }, async () => {
  const id = nextId('retry');
  const first = await h.call<Info>('proc.start', { id, argv: ['sleep', '30'] });
  const again = await h.call<Info>('proc.start', { id, argv: ['sleep', '30'] });
  assert.equal(again.pid, first.pid);
  await assert.rejects(h.call('proc.start', { id, argv: ['sleep', '31'] }), /already exists/);
  await assert.rejects(h.call('proc.start', { id: nextId('x'), argv: ['true'], bogus: 1 }), /unknown param bogus/);
  await assert.rejects(h.call('proc.forget', { id }), /running/);
  await h.call('proc.signal', { id, signal: 9 });
  const done = await h.waitExit(id);
  assert.equal(done.signal, 9);
  await h.call('proc.forget', { id });
  await assert.rejects(h.call('proc.show', { id }), /no such process/);
});

test('1 MiB through stdin comes back through cat byte for byte', { skip }, async () => {
  const id = nextId('stdin');
  await h.call('proc.start', { id, argv: ['cat'], stdin: 'pipe' });
  const input = randomBytes(1024 * 1024);
  for (let at = 0; at < input.length; at += 32 * 1024) {
    const chunk = input.subarray(at, at + 32 * 1024);
    const { offset } = await h.call<{ offset: number }>('proc.stdin', { id, offset: at, data: chunk.toString('base64') });
    assert.equal(offset, at + chunk.length);
  }
  await h.call('proc.eof', { id });
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  assert.equal(s.stdout.length, input.length);
  assert.equal(sha(s.stdout), sha(input));
  assert.equal((s.result.proc as Info).exit_code, 0);
});

test('8 MiB of random stdout arrive intact over a data channel', { skip }, async () => {
  const file = join(scratch, 'random-8m');
  const data = randomBytes(8 * 1024 * 1024);
  writeFileSync(file, data);
  const { info, stdout } = await run({ argv: ['cat', file] });
  assert.equal(info.stdout_bytes, data.length);
  assert.equal(sha(stdout), sha(data));
});

test('stdout and stderr never mix', { skip }, async () => {
  const { stdout, stderr } = await run({ shell: 'i=0; while [ $i -lt 2000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done' });
  const out = stdout.toString().trimEnd().split('\n');
  const err = stderr.toString().trimEnd().split('\n');
  assert.equal(out.length, 2000);
  assert.equal(err.length, 2000);
  assert.ok(out.every((l, i) => l === `out${i}`));
  assert.ok(err.every((l, i) => l === `err${i}`));
});

test('output past output_limit is dropped and flagged; the process is not blocked', { skip }, async () => {
  const { info, stdout } = await run({ shell: 'head -c 300000 /dev/zero', output_limit: 1000 });
  assert.equal(info.exit_code, 0);
  assert.equal(stdout.length, 1000);
  assert.equal(info.truncated, true);
});

test('a timeout kills the whole group, also a grandchild that called setsid', { skip }, async () => {
  const marker = `banger-marker-${randomBytes(6).toString('hex')}`;
  const id = nextId('timeout');
  await h.call('proc.start', { id, shell: `setsid sh -c "sleep 1000; : ${marker}" & sleep 1000; : ${marker}`, timeout_ms: 1500 });
  // both shells carry the marker while running (the test could not fail otherwise)
  for (let i = 0; processesWith(marker).length < 2; i++) {
    assert.ok(i < 100, 'the marked processes never showed up');
    await sleep(10);
  }
  const info = await h.waitExit(id);
  assert.equal(info.timed_out, true);
  assert.equal(info.signal, 9);
  assert.deepEqual(processesWith(marker), [], 'no process of the group is left');
});

test('without cgroups (--cgroup-root none) a timeout still kills the process group', { skip }, async () => {
  const plain = await AgentHarness.start({ dataPorts: 1, cgroups: false });
  try {
    assert.equal(plain.cgroupRoot, null);
    const marker = `banger-marker-${randomBytes(6).toString('hex')}`;
    await plain.call('proc.start', { id: 'nocg', shell: `sh -c "sleep 1000; : ${marker}" & sleep 1000; : ${marker}`, timeout_ms: 1000 });
    for (let i = 0; processesWith(marker).length < 2; i++) {
      assert.ok(i < 100, 'the marked processes never showed up');
      await sleep(10);
    }
    const info = await plain.waitExit('nocg');
    assert.equal(info.timed_out, true);
    for (let i = 0; processesWith(marker).length > 0; i++) {
      // killpg is asynchronous (no cgroup to wait for): the processes go within moments
      assert.ok(i < 200, `left: ${processesWith(marker)}`);
      await sleep(10);
    }
  } finally {
    await plain.close();
  }
});

test('PTY: a terminal, and stty size follows proc.resize', { skip }, async () => {
  const id = nextId('pty');
  await h.call('proc.start', { id, shell: 'tty; stty size; read x; stty size', stdin: 'pipe', pty: { rows: 24, cols: 80 } });
  let seen = '';
  for (let i = 0; !seen.includes('24 80'); i++) {
    assert.ok(i < 200, `no stty output: ${seen}`);
    const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: false });
    seen = s.stdout.toString();
    await sleep(20);
  }
  assert.match(seen, /^\/dev\/pts\/\d+\r?\n/);
  await h.call('proc.resize', { id, rows: 40, cols: 100 });
  await h.call('proc.stdin', { id, offset: 0, data: Buffer.from('go\n').toString('base64') });
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  assert.match(s.stdout.toString(), /40 100/);
  assert.equal(s.stderr.length, 0);
  assert.equal((s.result.proc as Info).pty, true);
});

test('output from offsets, with and without follow', { skip }, async () => {
  const id = nextId('offsets');
  await h.call('proc.start', { id, shell: 'printf abcdef; sleep 0.5; printf ghi; printf XY >&2' });
  const followed = await h.session({ op: 'output', id, stdout_from: 2, stderr_from: 1, follow: true });
  assert.equal(followed.stdout.toString(), 'cdefghi');
  assert.equal(followed.stderr.toString(), 'Y');
  const later = await h.session({ op: 'output', id, stdout_from: 6, stderr_from: 0, follow: false });
  assert.equal(later.stdout.toString(), 'ghi');
  assert.equal(later.stderr.toString(), 'XY');
});

test('user: looked up in /etc/passwd; uid, gid, HOME and USER follow; cwd falls back to /', { skip }, async () => {
  const entry = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f[0] === 'nobody');
  if (!entry) return assert.fail('this host has no user nobody in /etc/passwd');
  const { info, stdout } = await run({ shell: 'id -u; id -g; echo "$HOME $USER"; pwd', user: 'nobody' });
  assert.equal(info.exit_code, 0);
  const home = existsSync(entry[5] ?? '') ? entry[5] : '/';
  assert.equal(stdout.toString(), `${entry[2]}\n${entry[3]}\n${entry[5]} nobody\n${home}\n`);
  await assert.rejects(h.call('proc.start', { id: nextId('nouser'), argv: ['true'], user: 'banger-no-such-user' }), /unknown user/);
});

test('stdin is idempotent by offset; a gap is refused', { skip }, async () => {
  const id = nextId('idem');
  await h.call('proc.start', { id, argv: ['cat'], stdin: 'pipe' });
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  assert.deepEqual(await h.call('proc.stdin', { id, offset: 0, data: b64('hello') }), { offset: 5 });
  assert.deepEqual(await h.call('proc.stdin', { id, offset: 0, data: b64('hello') }), { offset: 5 });
  assert.deepEqual(await h.call('proc.stdin', { id, offset: 3, data: b64('lo world') }), { offset: 11 });
  await assert.rejects(h.call('proc.stdin', { id, offset: 20, data: b64('x') }), /stdin gap: have 11/);
  assert.deepEqual(await h.call('proc.eof', { id }), { offset: 11 });
  assert.deepEqual(await h.call('proc.eof', { id }), { offset: 11 });
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  assert.equal(s.stdout.toString(), 'hello world');
  assert.equal((s.result.proc as Info).stdin, 'closed');
});

test('attach: stdin through the output session, E closes it', { skip }, async () => {
  const id = nextId('attach');
  await h.call('proc.start', { id, argv: ['cat'], stdin: 'pipe' });
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true, stdin: true }, { stdin: Buffer.from('attached\n') });
  assert.equal(s.stdout.toString(), 'attached\n');
  assert.equal((s.result.proc as Info).exit_code, 0);
});

test('C ends an output session; the process keeps running', { skip }, async () => {
  const id = nextId('cancel');
  await h.call('proc.start', { id, shell: 'while :; do echo tick; sleep 0.05; done' });
  const s = await h.session(
    { op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true },
    {
      onData: (_stream, _data, ctl) => {
        if (ctl.received.stdout >= 10) ctl.cancel();
      },
    },
  );
  assert.equal(s.result.ok, true);
  assert.equal((s.result.proc as Info).state, 'running');
  await h.call('proc.signal', { id, signal: 9 });
  await h.waitExit(id);
});

test('a process keeps running and writing across an agent restart', { skip }, async () => {
  const id = nextId('survive');
  const started = await h.call<Info>('proc.start', { id, shell: 'while :; do echo line; sleep 0.02; done' });
  await h.restartAgent();
  const first = await h.call<Info>('proc.show', { id });
  assert.equal(first.state, 'running');
  assert.equal(first.pid, started.pid);
  for (let i = 0; ; i++) {
    const now = await h.call<Info>('proc.show', { id });
    if (now.stdout_bytes > first.stdout_bytes) break;
    assert.ok(i < 200, 'the output stopped growing');
    await sleep(20);
  }
  const listed = await h.call<{ procs: Info[] }>('proc.list');
  assert.ok(listed.procs.some((p) => p.id === id && p.state === 'running'));
  await h.call('proc.signal', { id, signal: 9 });
  assert.equal((await h.waitExit(id)).signal, 9);
});

test('a restarted agent announces each reopened data port with R unavailable', { skip }, async () => {
  const port = h.ports[0]!;
  port.idleFrames.length = 0;
  await h.restartAgent();
  await port.connected(10_000);
  for (let i = 0; port.idleFrames.length === 0; i++) {
    assert.ok(i < 500, 'no announcement');
    await sleep(10);
  }
  const frame = port.idleFrames[0]!;
  assert.equal(frame.type, 'R');
  assert.deepEqual(JSON.parse(frame.payload.toString()), { ok: false, code: 'unavailable', error: 'agent restarted' });
});

test('an exit while the agent was down is reported afterwards', { skip }, async () => {
  const id = nextId('down');
  await h.call('proc.start', { id, shell: 'sleep 0.3; exit 7' });
  await h.stopAgent();
  for (let i = 0; !existsSync(join(h.procsDir, id, 'status')); i++) {
    assert.ok(i < 500, 'the process never ended');
    await sleep(20);
  }
  await h.restartAgent();
  const info = await h.call<Info>('proc.show', { id });
  assert.equal(info.state, 'exited');
  assert.equal(info.exit_code, 7);
});

test('write then read a file: content, mode, mkdirs', { skip }, async () => {
  const target = join(scratch, 'w', 'deep', 'file.bin');
  const content = randomBytes(700 * 1024);
  const w = await h.session({ op: 'write', path: target, mode: 0o640, mkdirs: true }, { stdin: content });
  assert.deepEqual(w.result, { ok: true, size: content.length });
  assert.equal(statSync(target).mode & 0o7777, 0o640);
  assert.equal(sha(readFileSync(target)), sha(content));
  const r = await h.session({ op: 'read', path: target });
  assert.deepEqual(r.result, { ok: true, size: content.length, mode: 0o640 });
  assert.equal(sha(r.data), sha(content));
  assert.deepEqual(
    readdirSync(join(scratch, 'w', 'deep')).filter((n) => n.includes('banger-')),
    [],
  );
});

test('read refuses a symlink and never reads through it', { skip }, async () => {
  const canary = join(scratch, 'canary-secret');
  writeFileSync(canary, 'CANARY-CONTENT');
  const link = join(scratch, 'link-to-canary');
  symlinkSync(canary, link);
  const r = await h.session({ op: 'read', path: link });
  assert.equal(r.result.ok, false);
  assert.equal(r.result.code, 'symlink');
  assert.equal(r.data.length, 0);
  assert.ok(!r.data.toString().includes('CANARY'));
  const dir = await h.session({ op: 'read', path: scratch });
  assert.equal(dir.result.code, 'not_a_file');
});

test('a cancelled or abandoned write leaves no temp file and the target untouched', { skip }, async () => {
  const dir = join(scratch, 'cancel');
  mkdirSync(dir);
  const target = join(dir, 'target');
  writeFileSync(target, 'original');
  const cancelled = await h.session(
    { op: 'write', path: target, mode: 0o644 },
    {
      onAccepted: (ctl) => {
        ctl.send(encodeFrame('D', randomBytes(1000)));
        ctl.cancel();
      },
    },
  );
  assert.equal(cancelled.result.code, 'cancelled');
  assert.deepEqual(readdirSync(dir), ['target']);
  assert.equal(readFileSync(target, 'utf8'), 'original');
  // a new S mid-write abandons the write: the second session runs, the first leaves nothing
  const second = await h.session(
    { op: 'read', path: target },
    { before: Buffer.concat([encodeFrame('S', JSON.stringify({ nonce: 'old', op: 'write', path: target })), encodeFrame('D', randomBytes(100))]) },
  );
  assert.equal(second.data.toString(), 'original');
  assert.deepEqual(readdirSync(dir), ['target']);
});

test('a host that disconnects mid-write leaves no temp file; the port serves again', { skip }, async () => {
  const dir = join(scratch, 'disconnect');
  mkdirSync(dir);
  const socket = await h.portSocket(1);
  socket.write(encodeFrame('S', JSON.stringify({ nonce: 'n1', op: 'write', path: join(dir, 'f'), mode: 0o600 })));
  socket.write(encodeFrame('D', randomBytes(5000)));
  for (let i = 0; readdirSync(dir).length === 0; i++) {
    assert.ok(i < 500, 'the write never started');
    await sleep(10);
  }
  assert.match(readdirSync(dir)[0] ?? '', /^\.f\.banger-/);
  socket.destroy();
  for (let i = 0; readdirSync(dir).length > 0; i++) {
    assert.ok(i < 500, `the temp file stayed: ${readdirSync(dir)}`);
    await sleep(10);
  }
  const again = await h.session({ op: 'read', path: '/proc/self/status' }, { port: 1 });
  assert.equal(again.result.ok, true);
});

test('tar-out and tar-in round trip with modes', { skip }, async () => {
  const src = join(scratch, 'tree');
  mkdirSync(join(src, 'sub'), { recursive: true });
  writeFileSync(join(src, 'a.txt'), 'alpha');
  writeFileSync(join(src, 'sub', 'run.sh'), '#!/bin/sh\n', { mode: 0o755 });
  writeFileSync(join(src, 'sub', 'private'), 'p', { mode: 0o600 });
  const out = await h.session({ op: 'tar-out', path: src });
  assert.equal(out.result.ok, true, JSON.stringify(out.result));
  const unpacked = join(scratch, 'unpacked');
  mkdirSync(unpacked);
  execFileSync('tar', ['-x', '-f', '-', '-C', unpacked], { input: out.data });
  assert.equal(readFileSync(join(unpacked, 'tree', 'a.txt'), 'utf8'), 'alpha');
  assert.equal(statSync(join(unpacked, 'tree', 'sub', 'run.sh')).mode & 0o777, 0o755);

  const into = join(scratch, 'tar-in', 'dest');
  const res = await h.session({ op: 'tar-in', path: into }, { stdin: out.data });
  assert.equal(res.result.ok, true, JSON.stringify(res.result));
  assert.equal(res.result.exit_code, 0);
  assert.equal(readFileSync(join(into, 'tree', 'a.txt'), 'utf8'), 'alpha');
  assert.equal(statSync(join(into, 'tree', 'sub', 'private')).mode & 0o777, 0o600);
  assert.equal(statSync(join(into, 'tree', 'sub', 'run.sh')).mode & 0o777, 0o755);

  const broken = await h.session({ op: 'tar-in', path: into }, { stdin: Buffer.from('this is not a tar archive at all'.repeat(40)) });
  assert.equal(broken.result.ok, false);
  assert.notEqual(broken.result.exit_code, 0);
  assert.ok(String(broken.result.stderr).length > 0);
});

test('pipe-in streams the session into a command in cwd; its failure answers exit code and stderr; bad requests are refused', { skip }, async () => {
  const dir = join(scratch, 'pipe-in');
  mkdirSync(dir);
  const data = Buffer.alloc(3 * 1024 * 1024 + 7, 'z');
  const res = await h.session({ op: 'pipe-in', argv: ['sh', '-c', 'cat >got; pwd >where'], cwd: dir }, { stdin: data });
  assert.equal(res.result.ok, true, JSON.stringify(res.result));
  assert.equal(res.result.exit_code, 0);
  assert.ok(readFileSync(join(dir, 'got')).equals(data), 'every byte reached the command, in order');
  assert.equal(readFileSync(join(dir, 'where'), 'utf8').trim(), dir);

  const failed = await h.session({ op: 'pipe-in', argv: ['sh', '-c', 'head -c 10 >/dev/null; echo nope >&2; exit 3'], cwd: dir }, { stdin: data });
  assert.equal(failed.result.ok, false);
  assert.equal(failed.result.exit_code, 3);
  assert.equal(failed.result.code, 'command_failed');
  assert.equal(String(failed.result.stderr).trim(), 'nope');

  const missing = await h.session({ op: 'pipe-in', argv: ['banger-no-such-command'], cwd: dir }, { stdin: Buffer.from('x') });
  assert.equal(missing.result.exit_code, 127);
  assert.match(String(missing.result.stderr), /cannot run banger-no-such-command/);
  const noDir = await h.session({ op: 'pipe-in', argv: ['true'], cwd: join(dir, 'absent') }, { stdin: Buffer.from('') });
  assert.equal(noDir.result.exit_code, 127);
  assert.match(String(noDir.result.stderr), /cannot enter/);

  for (const bad of [
    { argv: [], cwd: dir },
    { argv: 'true', cwd: dir },
    { argv: ['true'], cwd: 'relative' },
    { argv: Array(65).fill('true'), cwd: dir },
  ]) {
    const r = await h.session({ op: 'pipe-in', ...bad }, { stdin: Buffer.from('') });
    assert.equal(r.result.ok, false, JSON.stringify(bad));
    assert.equal(r.result.code, 'invalid', JSON.stringify(r.result));
  }
});

test('fs.stat, fs.list, fs.mkdir, fs.move, fs.remove; remove never follows a symlink', { skip }, async () => {
  const base = join(scratch, 'fs');
  await h.call('fs.mkdir', { path: join(base, 'a', 'b'), parents: true, mode: 0o750 });
  assert.equal(statSync(join(base, 'a', 'b')).mode & 0o777, 0o750);
  await assert.rejects(h.call('fs.mkdir', { path: join(base, 'a') }), /^Error: EEXIST|EEXIST/);
  writeFileSync(join(base, 'a', 'f1'), 'one');
  writeFileSync(join(base, 'a', 'f2'), 'two');
  const listed = await h.call<{ entries: Array<{ name: string; type: string }>; truncated: boolean }>('fs.list', { path: join(base, 'a') });
  assert.deepEqual(listed.entries.map((e) => `${e.name}:${e.type}`).sort(), ['b:dir', 'f1:file', 'f2:file']);
  assert.equal(listed.truncated, false);
  await assert.rejects(h.call('fs.move', { from: join(base, 'a', 'f1'), to: join(base, 'a', 'f2') }), /EEXIST/);
  await h.call('fs.move', { from: join(base, 'a', 'f1'), to: join(base, 'a', 'f2'), overwrite: true });
  assert.equal(readFileSync(join(base, 'a', 'f2'), 'utf8'), 'one');
  await assert.rejects(h.call('fs.stat', { path: join(base, 'nope') }), /^.*ENOENT/);
  await assert.rejects(h.call('fs.stat', { path: 'relative' }), /absolute/);

  const outside = join(scratch, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'keep'), 'keep me');
  symlinkSync(outside, join(base, 'a', 'b', 'escape'));
  const st = await h.call<{ type: string; link_target: string }>('fs.stat', { path: join(base, 'a', 'b', 'escape') });
  assert.equal(st.type, 'symlink');
  assert.equal(st.link_target, outside);
  await h.call('fs.remove', { path: join(base, 'a'), recursive: true });
  assert.equal(existsSync(join(base, 'a')), false);
  assert.equal(readFileSync(join(outside, 'keep'), 'utf8'), 'keep me', 'the symlink target survived');
  symlinkSync(outside, join(base, 'lnk'));
  await h.call('fs.remove', { path: join(base, 'lnk') });
  assert.ok(lstatSync(outside).isDirectory());
});

test('garbage before S on a data port is skipped', { skip }, async () => {
  const junk = Buffer.concat([randomBytes(5000).map((b) => (b === 0xba ? 0 : b)), Buffer.from([0xba, 0x6e, 0x5a, 9, 1, 2]), Buffer.from([0xba])]);
  const r = await h.session({ op: 'read', path: '/proc/self/status' }, { before: junk });
  assert.equal(r.result.ok, true);
  assert.match(r.data.toString(), /^Name:/);
});

test('hostile frames on a data port: the worker survives and serves the next session', { skip }, async () => {
  const seed = Number(process.env.BANGER_FUZZ_SEED ?? Date.now() % 1_000_000);
  const rng = new Rng(seed);
  const socket = await h.portSocket(0);
  const hostile = [
    encodeFrame('S', 'not json'),
    encodeFrame('S', '{"nonce":"x"}'),
    encodeFrame('S', `{"nonce":"y","op":"read","path":${'['.repeat(50)}${']'.repeat(50)}}`),
    encodeFrame('S', JSON.stringify({ nonce: 'z', op: 'output', id: '../../etc' })),
    encodeFrame('S', JSON.stringify({ nonce: 'w', op: 'write', path: '/' })),
    encodeFrame('D', randomBytes(100)),
    encodeFrame('E'),
    encodeFrame('C'),
    // a header that claims more than the 256 KiB limit: skipped, never allocated
    Buffer.from([0xba, 0x6e, 0x44, 0, 0xff, 0xff, 0xff, 0x7f]),
  ];
  for (let i = 0; i < 200; i++) {
    const f = rng.pick(hostile);
    socket.write(rng.bool(0.3) ? f.subarray(0, rng.int(f.length + 1)) : f);
    if (rng.bool(0.2)) socket.write(randomBytes(rng.int(300)));
  }
  // a frame cut short waits for its payload: one maximal payload of zeros completes it (zeros outside a frame are skipped)
  socket.write(Buffer.alloc(8 + 256 * 1024));
  const r = await h.session({ op: 'read', path: '/proc/self/status' }, { port: 0, timeoutMs: 10_000 });
  assert.equal(r.result.ok, true, `seed ${seed}`);
  assert.equal((await h.call<{ ready: boolean }>('health')).ready, true);
});

test('the control channel never waits for bulk data: health during an 8 MiB output session', { skip }, async (t) => {
  const rtt = async () => {
    const t0 = process.hrtime.bigint();
    await h.call('health');
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const idle: number[] = [];
  for (let i = 0; i < 20; i++) idle.push(await rtt());
  const file = join(scratch, 'random-8m-b');
  writeFileSync(file, randomBytes(8 * 1024 * 1024));
  const id = nextId('busy');
  await h.call('proc.start', { id, argv: ['cat', file] });
  await h.waitExit(id);
  let done = false;
  const busy: number[] = [];
  const session = h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true }).finally(() => {
    done = true;
  });
  while (!done) busy.push(await rtt());
  const s = await session;
  assert.equal(s.stdout.length, 8 * 1024 * 1024);
  assert.ok(busy.length >= 1);
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]?.toFixed(2);
  t.diagnostic(
    `health round trip idle: median ${median(idle)} ms over ${idle.length}; during the 8 MiB stream: median ${median(busy)} ms, max ${Math.max(...busy).toFixed(2)} ms over ${busy.length}`,
  );
});

test('a supervisor killed from inside the guest leaves its process lost, and a follow ends', { skip }, async () => {
  const id = nextId('lost');
  await h.call('proc.start', { id, argv: ['sleep', '1000'] });
  const [sup, child] = readFileSync(join(h.procsDir, id, 'sup'), 'utf8')
    .split(' ')
    .map(Number);
  assert.equal(readFileSync(`/proc/${sup}/comm`, 'utf8').trim(), 'banger-sup');
  process.kill(sup as number, 'SIGKILL');
  for (let i = 0; existsSync(`/proc/${sup}/comm`) && readFileSync(`/proc/${sup}/stat`, 'utf8').split(' ')[2] !== 'Z'; i++) {
    assert.ok(i < 500, 'the supervisor did not die');
    await sleep(10);
  }
  const s = await h.session({ op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  assert.equal((s.result.proc as Info).state, 'lost');
  process.kill(child as number, 'SIGKILL');
});

test('at most 256 process directories; forget makes room', { skip }, async () => {
  const many = await AgentHarness.start({ dataPorts: 1, cgroups: false });
  try {
    for (let i = 0; i < 256; i++) await many.call('proc.start', { id: `p${i}`, argv: ['true'] });
    await assert.rejects(many.call('proc.start', { id: 'p256', argv: ['true'] }), /too many processes \(max 256\)/);
    await many.waitExit('p0');
    await many.call('proc.forget', { id: 'p0' });
    await many.call('proc.start', { id: 'p256', argv: ['true'] });
    const { procs, truncated } = await many.call<{ procs: Info[]; truncated?: boolean }>('proc.list');
    assert.ok(procs.length > 0 && procs.length <= 256);
    if (procs.length < 256) assert.equal(truncated, true, 'a shortened list says so');
  } finally {
    await many.close();
  }
});

test('process directories of an earlier boot are wiped when the agent starts', { skip }, async () => {
  const stale = join(h.procsDir, 'from-another-boot');
  mkdirSync(stale);
  writeFileSync(join(stale, 'spec'), '{}');
  writeFileSync(join(h.procsDir, 'boot_id'), 'not-this-boot\n');
  await h.restartAgent();
  assert.equal(existsSync(stale), false);
  assert.equal(readFileSync(join(h.procsDir, 'boot_id'), 'utf8').trim(), readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
});

test('the agent stays up after hostile control requests', { skip }, async () => {
  const hostile: Array<[string, unknown]> = [
    ['proc.start', { id: '../escape', argv: ['true'] }],
    ['proc.start', { id: 'Upper', argv: ['true'] }],
    ['proc.start', { id: nextId('both'), argv: ['true'], shell: 'true' }],
    ['proc.start', { id: nextId('empty'), argv: [] }],
    ['proc.start', { id: nextId('nul'), argv: ['a\u0000b'] }],
    ['proc.start', { id: nextId('user'), argv: ['true'], user: 'no-such-user-here' }],
    ['proc.stdin', { id: 'nope', offset: 0, data: '!!!' }],
    ['proc.signal', { id: 'nope', signal: 99 }],
    ['fs.remove', { path: '/' }],
  ];
  // the bounded params parser: 4096 entries per array, 8 levels of params
  await assert.rejects(h.call('proc.start', { id: nextId('wide'), argv: Array(4097).fill('a') }), /too many entries/);
  let deep: unknown = 1;
  for (let i = 0; i < 9; i++) deep = [deep];
  await assert.rejects(h.call('proc.start', { id: nextId('deep'), argv: ['true'], env: deep }), /nested too deep/);
  for (const [method, params] of hostile) {
    await assert.rejects(h.call(method, params), AgentCallError, `${method} ${JSON.stringify(params)}`);
  }
  assert.equal((await h.call<{ ready: boolean }>('health')).ready, true);
});
