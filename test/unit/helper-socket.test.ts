import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import type { PeerCred } from '../../src/helper/peercred.js';
import { HelperServer } from '../../src/helper/server.js';
import { HelperOps } from '../../src/host/helper-client.js';
import { RecordingOps } from '../helpers/fake-host-net-ops.js';
import { waitFor } from '../integration/harness.js';

/*
 * The helper's socket handling without root's host changes: HelperOps against fake helpers (plain
 * servers answering fixed bytes), and HelperServer with a recording fake of HostNetOps and a fake
 * peer-credential reader. The helper socket's directory must be root-owned, so this needs root.
 * test/integration/root-helper.test.ts runs the real helper, as root, on real links.
 */

const skip = process.getuid?.() !== 0 ? 'requires root: the helper socket directory must be root-owned' : false;
const base = mkdtempSync(join(tmpdir(), 'banger-helper-unit-'));
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
  rmSync(base, { recursive: true, force: true });
});

let n = 0;
function freshDir(mode = 0o755): string {
  const d = join(base, `d${n++}`);
  mkdirSync(d);
  chmodSync(d, mode);
  return d;
}

const isCode = (code: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, String(e));
  assert.equal(e.code, code, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

/** A fake helper: records what each connection sent until EOF, then answers `answer` (or nothing, or never). */
async function fakeHelper(path: string, answer: string | Buffer | 'close' | 'hang'): Promise<{ received: string[] }> {
  const received: string[] = [];
  const server = createServer({ allowHalfOpen: true }, (sock) => {
    let text = '';
    sock.on('error', () => {});
    sock.on('data', (c) => {
      text += c.toString();
    });
    sock.on('end', () => {
      received.push(text);
      if (answer === 'close') sock.destroy();
      else if (answer !== 'hang') sock.end(answer);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(path, r));
  return { received };
}

test('HelperOps: no socket → unavailable, with the fix naming bangerd-root', { skip }, async () => {
  const h = new HelperOps({ socketPath: join(freshDir(), 'helper.sock'), restartGraceMs: 0 });
  await assert.rejects(h.listTaps('banger0'), (e) => isCode('unavailable', /not running/)(e) && /bangerd-root/.test((e as BangerError).fix ?? ''));
  assert.equal(HelperOps.available(join(freshDir(), 'helper.sock')), false);
});

/** What a helper killed with SIGKILL leaves: a socket file nobody listens on. */
function staleSocket(path: string): void {
  execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
}

test('HelperOps: a socket nobody listens on (stale) → unavailable', { skip }, async () => {
  const path = join(freshDir(), 'helper.sock');
  staleSocket(path);
  await assert.rejects(new HelperOps({ socketPath: path, restartGraceMs: 0 }).pinning(), isCode('unavailable', /ECONNREFUSED/));
});

test('HelperOps waits out a helper restart: a request made while nothing listens is sent once the helper is back', { skip }, async () => {
  const path = join(freshDir(), 'helper.sock');
  staleSocket(path);
  const pending = new HelperOps({ socketPath: path, restartGraceMs: 30_000 }).pinning();
  // The helper comes back (its supervisor restarted it): the stale socket is replaced by a listening one.
  await new Promise((r) => setTimeout(r, 300));
  rmSync(path);
  const fake = await fakeHelper(path, '{"ok":true,"result":"nft"}\n');
  assert.equal(await pending, 'nft');
  assert.deepEqual(fake.received, ['{"op":"pinning","args":{}}\n'], 'sent exactly once');
});

test('HelperOps refuses socket paths it cannot trust, without connecting', { skip }, async () => {
  // A world-writable directory: anyone could have put the socket there.
  const open = freshDir(0o777);
  const fake1 = await fakeHelper(join(open, 'helper.sock'), '{"ok":true,"result":"nft"}\n');
  await assert.rejects(new HelperOps({ socketPath: join(open, 'helper.sock') }).pinning(), isCode('precondition_failed', /writable by root only/));
  assert.equal(HelperOps.available(join(open, 'helper.sock')), false);
  // A directory owned by another user.
  const theirs = freshDir();
  const fake2 = await fakeHelper(join(theirs, 'helper.sock'), '{"ok":true,"result":"nft"}\n');
  chownSync(theirs, 65534, 65534);
  await assert.rejects(new HelperOps({ socketPath: join(theirs, 'helper.sock') }).pinning(), isCode('precondition_failed', /owner uid 65534/));
  // A symlink in place of the directory.
  const real = freshDir();
  const fake3 = await fakeHelper(join(real, 'helper.sock'), '{"ok":true,"result":"nft"}\n');
  const link = join(base, `link${n++}`);
  symlinkSync(real, link);
  await assert.rejects(new HelperOps({ socketPath: join(link, 'helper.sock') }).pinning(), isCode('precondition_failed', /symlink/));
  // A socket owned by another user (not the helper's socket for us).
  const dir = freshDir();
  const fake4 = await fakeHelper(join(dir, 'helper.sock'), '{"ok":true,"result":"nft"}\n');
  chownSync(join(dir, 'helper.sock'), 65534, 65534);
  await assert.rejects(new HelperOps({ socketPath: join(dir, 'helper.sock') }).pinning(), isCode('precondition_failed', /owned by uid 65534/));
  // A regular file.
  const file = join(freshDir(), 'helper.sock');
  writeFileSync(file, '');
  await assert.rejects(new HelperOps({ socketPath: file }).pinning(), isCode('precondition_failed', /not a socket/));
  for (const f of [fake1, fake2, fake3, fake4]) assert.deepEqual(f.received, [], 'no untrusted socket was spoken to');
  // The same socket in a trusted directory is used.
  const ok = freshDir();
  const fake5 = await fakeHelper(join(ok, 'helper.sock'), '{"ok":true,"result":"nft"}\n');
  assert.equal(await new HelperOps({ socketPath: join(ok, 'helper.sock') }).pinning(), 'nft');
  assert.deepEqual(fake5.received, ['{"op":"pinning","args":{}}\n'], 'one request line, then EOF');
});

test("HelperOps maps the helper's answers: errors to BangerError, wrong shapes and oversized answers refused", { skip }, async () => {
  const at = async (answer: string | Buffer | 'close' | 'hang', timeoutMs?: number) => {
    const path = join(freshDir(), 'helper.sock');
    const fake = await fakeHelper(path, answer);
    return { h: new HelperOps({ socketPath: path, ...(timeoutMs ? { timeoutMs } : {}) }), fake };
  };
  let { h, fake } = await at('{"ok":false,"error":{"code":"conflict","message":"refusing bangerx","fix":"pick another"}}\n');
  await assert.rejects(h.ensureBridge('bangerx', '10.1.0.1/24'), (e) => isCode('conflict', /refusing bangerx/)(e) && (e as BangerError).fix === 'pick another');
  assert.deepEqual(JSON.parse(fake.received[0] as string), { op: 'ensureBridge', args: { name: 'bangerx', addressCidr: '10.1.0.1/24' } });
  ({ h } = await at('{"ok":false,"error":{"code":"no_such_code","message":"x"}}\n'));
  await assert.rejects(h.deleteBridge('banger0'), isCode('internal', /^x$/));
  ({ h } = await at('not json\n'));
  await assert.rejects(h.deleteBridge('banger0'), isCode('internal', /not JSON/));
  ({ h } = await at('{"ok":true,"result":[1,2]}\n'));
  await assert.rejects(h.listTaps('banger0'), isCode('internal', /wrong type/));
  ({ h } = await at('{"ok":true,"result":"yes"}\n'));
  await assert.rejects(h.routeVmDomain('banger0', '10.1.0.1'), isCode('internal', /wrong type/));
  ({ h } = await at('close'));
  await assert.rejects(h.listTaps('banger0'), isCode('unavailable', /without answering/));
  ({ h } = await at(Buffer.alloc(5 * 1024 * 1024, 0x20)));
  await assert.rejects(h.listTaps('banger0'), isCode('internal', /exceeds/));
  ({ h } = await at('hang', 300));
  await assert.rejects(h.listTaps('banger0'), isCode('timeout'));
  ({ h, fake } = await at('{"ok":true,"result":{"mode":"root","detail":"running as root","firewall":"nft","pinning":"nft"}}\n'));
  assert.deepEqual({ ...(await h.doctorInfo()), detail: '' }, { mode: 'helper', detail: '', firewall: 'nft', pinning: 'nft' });
});

/** A fake of banger-peercred: the peer is whoever the test says. */
const fakePeer = (cred: PeerCred | Error) => async () => {
  if (cred instanceof Error) throw cred;
  return cred;
};

/** Sends raw bytes, ends, returns what came back ('' when the helper closed without answering). */
function rawRequest(path: string, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(path);
    let out = '';
    s.on('connect', () => s.end(bytes));
    s.on('data', (c) => {
      out += c.toString();
    });
    s.on('error', () => resolve(out));
    s.on('close', () => resolve(out));
  });
}

async function helperWith(peer: PeerCred | Error | (() => Promise<PeerCred>), ownerUid = process.getuid?.() as number, receiveMs?: number) {
  const dir = join(freshDir(), 'run');
  const ops = new RecordingOps();
  const logs: string[] = [];
  const peerCred = typeof peer === 'function' ? peer : fakePeer(peer);
  const server = new HelperServer({
    socketPath: join(dir, 'helper.sock'),
    ownerUid,
    ops,
    scope: {},
    peerCred,
    log: (l) => logs.push(l),
    ...(receiveMs ? { receiveMs } : {}),
  });
  await server.listen();
  return { server, ops, logs, path: join(dir, 'helper.sock'), dir };
}

test('HelperServer: a peer that is not the owner, or whose credentials cannot be read, is closed on, nothing executed', { skip }, async () => {
  const me = process.getuid?.() as number;
  const other = await helperWith({ pid: 42, uid: 65533, gid: 65533 });
  assert.equal(await rawRequest(other.path, '{"op":"listTaps","args":{"bridge":"banger0"}}\n'), '');
  assert.deepEqual(other.ops.calls, []);
  assert.match(other.logs.join('\n'), /refused peer uid=65533 pid=42: only uid/);
  const unreadable = await helperWith(new Error('banger-peercred failed'));
  assert.equal(await rawRequest(unreadable.path, '{"op":"listTaps","args":{"bridge":"banger0"}}\n'), '');
  assert.deepEqual(unreadable.ops.calls, []);
  const owner = await helperWith({ pid: 7, uid: me, gid: 0 });
  assert.deepEqual(JSON.parse(await rawRequest(owner.path, '{"op":"listTaps","args":{"bridge":"banger0"}}\n')), { ok: true, result: ['bg0.0'] });
  assert.deepEqual(owner.ops.calls, [['listTaps', 'banger0']]);
  assert.match(owner.logs.at(-1) ?? '', /^op=listTaps peer uid=\d+ pid=7 ok$/);
  for (const h of [other, unreadable, owner]) await h.server.close();
});

test('HelperServer: the log line of a refused request carries no control characters from the caller', { skip }, async () => {
  const h = await helperWith({ pid: 7, uid: process.getuid?.() as number, gid: 0 });
  const res = JSON.parse(await rawRequest(h.path, `${JSON.stringify({ op: 'x\n\u001b[2Jfake ok', args: {} })}\n`));
  assert.equal(res.ok, false);
  assert.equal(res.error.code, 'bad_request');
  const last = h.logs.at(-1) ?? '';
  assert.doesNotMatch(last, /[\u0000-\u001f]/);
  assert.deepEqual(h.ops.calls, []);
  await h.server.close();
});

test('HelperServer.listen: socket dir created root 0755, socket 0600 for the owner; a live helper is refused, a stale socket replaced, an open dir refused', {
  skip,
}, async () => {
  const h = await helperWith({ pid: 1, uid: 65534, gid: 65534 }, 65534);
  const d = statSync(h.dir);
  assert.equal(d.uid, 0);
  assert.equal(d.mode & 0o7777, 0o755);
  const s = statSync(h.path);
  assert.ok(s.isSocket());
  assert.equal(s.uid, 65534);
  assert.equal(s.mode & 0o777, 0o600);
  const second = new HelperServer({
    socketPath: h.path,
    ownerUid: 65534,
    ops: new RecordingOps(),
    scope: {},
    peerCred: fakePeer(new Error('x')),
    log: () => {},
  });
  await assert.rejects(second.listen(), isCode('conflict', /already listening/));
  await h.server.close();
  assert.throws(() => statSync(h.path), /ENOENT/, 'close removes its socket');
  // A socket a killed helper left behind is replaced.
  staleSocket(h.path);
  const again = new HelperServer({
    socketPath: h.path,
    ownerUid: 65534,
    ops: new RecordingOps(),
    scope: {},
    peerCred: fakePeer(new Error('x')),
    log: () => {},
  });
  await again.listen();
  assert.equal(statSync(h.path).uid, 65534);
  await again.close();
  // A directory others can write to is refused, and nothing is created in it.
  const open = join(freshDir(0o777), 'run');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const bad = new HelperServer({
    socketPath: join(open, 'h.sock'),
    ownerUid: 65534,
    ops: new RecordingOps(),
    scope: {},
    peerCred: fakePeer(new Error('x')),
    log: () => {},
  });
  await assert.rejects(bad.listen(), isCode('precondition_failed'));
  assert.throws(() => statSync(join(open, 'h.sock')), /ENOENT/);
});

test('HelperServer: a request not complete within the receive deadline is dropped, nothing executed', { skip }, async () => {
  const me = process.getuid?.() as number;
  // The peer sends a valid request but never shuts down its write side.
  const h = await helperWith({ pid: 7, uid: me, gid: 0 }, me, 200);
  const answer = await new Promise<string>((resolve) => {
    const s = connect(h.path);
    let out = '';
    s.on('connect', () => s.write('{"op":"listTaps","args":{"bridge":"banger0"}}\n'));
    s.on('data', (c) => {
      out += c.toString();
    });
    s.on('error', () => resolve(out));
    s.on('close', () => resolve(out));
  });
  assert.equal(answer, '');
  assert.deepEqual(h.ops.calls, []);
  assert.match(h.logs.join('\n'), /no complete request in time/);
  // Identifying the peer outlasts the deadline: the connection is gone when it answers, and nothing runs.
  let release: (c: PeerCred) => void = () => {};
  const slow = await helperWith(() => new Promise<PeerCred>((r) => (release = r)), me, 200);
  assert.equal(await rawRequest(slow.path, '{"op":"listTaps","args":{"bridge":"banger0"}}\n'), '');
  release({ pid: 7, uid: me, gid: 0 });
  await waitFor('the late-identified connection to be dropped', () => slow.server.inFlight === 0);
  assert.deepEqual(slow.ops.calls, []);
  await slow.server.close();
  await h.server.close();
});
