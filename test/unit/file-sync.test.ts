import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { FileSyncService, hostGitIdentity } from '../../src/daemon/services/file-sync.js';
import { mergeGitIdentity } from '../../src/daemon/services/git-identity.js';
import type { AgentClient } from '../../src/guest/agent-client.js';
import { AgentDataPool } from '../../src/guest/agent-data.js';
import { encodeFrame, FrameDecoder } from '../../src/guest/agent-frames.js';
import { AgentGuestChannel } from '../../src/guest/guest-channel-agent.js';
import type { OpContext } from '../../src/util/op-context.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { FakeRunner } from '../helpers/fake-runner.js';

let dir: string;
let host: string;
let guest: string;
let socketServer: Server;
const log = pino({ level: 'silent' });
const noIdentity = async () => ({});

function recordingCtx(): OpContext & { lines: string[]; stages: string[] } {
  const lines: string[] = [];
  const stages: string[] = [];
  return {
    id: 'op-test',
    signal: new AbortController().signal,
    stage: (n: string, d?: string) => void stages.push(d ? `${n}: ${d}` : n),
    progress: () => {},
    log: (l: string) => void lines.push(l),
    setTarget: () => {},
    checkCancelled: () => {},
    lines,
    stages,
  };
}

before(async () => {
  dir = await mkdtemp('/tmp/bg-fsync-');
  host = join(dir, 'host');
  guest = join(dir, 'guest');
  await mkdir(join(host, 'agent/sub'), { recursive: true });
  await mkdir(guest);
  await writeFile(join(host, 'token'), 'secret-token');
  await chmod(join(host, 'token'), 0o640);
  await writeFile(join(host, 'agent/auth.json'), '{"k":1}');
  await chmod(join(host, 'agent/auth.json'), 0o644);
  await writeFile(join(host, 'agent/sub/run'), '#!/bin/sh\n');
  await chmod(join(host, 'agent/sub/run'), 0o755);
  await chmod(join(host, 'agent/sub'), 0o750);
  await symlink('token', join(host, 'token-link'));
  socketServer = createServer();
  await new Promise<void>((r) => socketServer.listen(join(host, 'a-socket'), r));
});
after(async () => {
  socketServer.close();
  await rm(dir, { recursive: true, force: true });
});

const VM = { id: 'vm1', name: 'dev' };
const service = (entries: Array<{ host: string; guest: string; mode?: number }>, extra: Partial<ConstructorParameters<typeof FileSyncService>[0]> = {}) =>
  new FileSyncService({ entries, guest: async () => new HostFakeGuest(), runner: new FakeRunner(() => 'missing'), log, gitIdentity: noIdentity, ...extra });

const modeOf = async (p: string) => (await lstat(p)).mode & 0o7777;

test("files keep their mode or take the entry's; directories are recursive with the entry's mode on files only; a missing host path warns and the rest goes on", async () => {
  const ctx = recordingCtx();
  await service([
    { host: join(host, 'missing'), guest: join(guest, 'never') },
    { host: join(host, 'token'), guest: join(guest, 'kept/token') },
    { host: join(host, 'token-link'), guest: join(guest, 'tight/token'), mode: 0o600 },
    { host: join(host, 'agent'), guest: join(guest, '.config/agent'), mode: 0o600 },
  ]).run(VM, ctx);

  assert.equal(await readFile(join(guest, 'kept/token'), 'utf8'), 'secret-token');
  assert.equal(await modeOf(join(guest, 'kept/token')), 0o640);
  // A symlink named in the config is followed: the file arrives, with the entry's mode.
  assert.ok((await lstat(join(guest, 'tight/token'))).isFile());
  assert.equal(await modeOf(join(guest, 'tight/token')), 0o600);
  assert.equal(await readFile(join(guest, '.config/agent/auth.json'), 'utf8'), '{"k":1}');
  assert.equal(await modeOf(join(guest, '.config/agent/auth.json')), 0o600);
  assert.equal(await modeOf(join(guest, '.config/agent/sub/run')), 0o600);
  assert.equal(await modeOf(join(guest, '.config/agent/sub')), 0o750, 'directories keep their own mode');
  await assert.rejects(stat(join(guest, 'never')));

  assert.deepEqual(ctx.stages, ['sync files: 4 file_sync entries']);
  assert.equal(ctx.lines.length, 1);
  assert.match(ctx.lines[0] as string, /^warning: file_sync: .*missing does not exist on the host; skipped$/);
});

test("a directory entry without mode keeps each file's mode; copying again merges (nothing in the guest is deleted)", async () => {
  const target = join(guest, 'again');
  await service([{ host: join(host, 'agent'), guest: target }]).run(VM);
  assert.equal(await modeOf(join(target, 'sub/run')), 0o755);
  await writeFile(join(target, 'guest-only'), 'mine');
  await service([{ host: join(host, 'agent'), guest: target }]).run(VM);
  assert.equal(await readFile(join(target, 'guest-only'), 'utf8'), 'mine');
  assert.equal(await readFile(join(target, 'auth.json'), 'utf8'), '{"k":1}');
});

test('errors other than a missing host path fail the step, naming the entry', async () => {
  // Neither a file nor a directory on the host.
  await assert.rejects(service([{ host: join(host, 'a-socket'), guest: join(guest, 'sock') }]).run(VM), (e: BangerError) => {
    assert.equal(e.code, 'precondition_failed');
    assert.match(e.message, /a-socket → dev:.*sock failed: .*neither a file nor a directory/);
    assert.match(e.fix ?? '', /\[\[file_sync\]\]/);
    return true;
  });
  // The guest refuses: the parent of the target is a file.
  await writeFile(join(guest, 'plainfile'), 'x');
  await assert.rejects(service([{ host: join(host, 'token'), guest: join(guest, 'plainfile/token') }]).run(VM), (e: BangerError) => {
    assert.ok(e instanceof BangerError);
    assert.match(e.message, /token → dev:.*plainfile\/token failed/);
    return true;
  });
  // Entries before the failing one were copied; the ones after it were not.
  await assert.rejects(
    service([
      { host: join(host, 'token'), guest: join(guest, 'order/first') },
      { host: join(host, 'a-socket'), guest: join(guest, 'order/bad') },
      { host: join(host, 'token'), guest: join(guest, 'order/third') },
    ]).run(VM),
  );
  assert.ok((await stat(join(guest, 'order/first'))).isFile());
  await assert.rejects(stat(join(guest, 'order/third')));
});

test('nothing configured and no host identity: no stage, no guest channel asked for', async () => {
  const ctx = recordingCtx();
  let asked = 0;
  await new FileSyncService({
    entries: [],
    guest: async () => {
      asked++;
      return new HostFakeGuest();
    },
    runner: new FakeRunner(() => 'missing'),
    log,
    gitIdentity: noIdentity,
  }).run(VM, ctx);
  assert.deepEqual([ctx.stages, asked], [[], 0]);
});

test('git identity is merged into the guest .gitconfig: other keys and sections kept, git reads the new values back', async () => {
  const gitconfig = join(guest, 'gitconfig-merge');
  await writeFile(gitconfig, '[core]\n\teditor = vim\n[user]\n\tname = Old Name\n\tsigningkey = ABC123\n[alias]\n\tst = status\n');
  await chmod(gitconfig, 0o600);
  const ctx = recordingCtx();
  await service([], { gitIdentity: async () => ({ name: 'Jane "JD" Doe\\x', email: 'jane@example.org' }), gitconfigPath: gitconfig }).run(VM, ctx);
  const git = (key: string) => execFileSync('git', ['config', '-f', gitconfig, '--get', key], { encoding: 'utf8' }).trim();
  assert.equal(git('user.name'), 'Jane "JD" Doe\\x');
  assert.equal(git('user.email'), 'jane@example.org');
  assert.equal(git('user.signingkey'), 'ABC123');
  assert.equal(git('core.editor'), 'vim');
  assert.equal(git('alias.st'), 'status');
  assert.equal(await modeOf(gitconfig), 0o600, 'the file keeps its mode');
  assert.deepEqual(ctx.stages, ['sync files: git identity']);

  // No file yet: created with only the identity.
  const fresh = join(guest, 'gitconfig-fresh');
  await service([], { gitIdentity: async () => ({ email: 'only@example.org' }), gitconfigPath: fresh }).run(VM);
  assert.equal(await readFile(fresh, 'utf8'), '[user]\n\temail = "only@example.org"\n');

  // A symlinked .gitconfig in the guest is left alone, with a warning.
  const linked = join(guest, 'gitconfig-link');
  await symlink(gitconfig, linked);
  const ctx2 = recordingCtx();
  await service([], { gitIdentity: async () => ({ name: 'X' }), gitconfigPath: linked }).run(VM, ctx2);
  assert.ok((await lstat(linked)).isSymbolicLink());
  assert.match(ctx2.lines.join('\n'), /is a symlink, not a file; left alone/);
});

test('mergeGitIdentity: the last [user] section wins as git reads it; continuation lines of removed keys go too; nothing to set changes nothing', () => {
  const text = '[user]\n\tname = A \\\n   continued\n[core]\n\tx = 1\n[user]\n\tEmail = old@x\n\tname\n';
  const merged = mergeGitIdentity(text, { name: 'N', email: 'e@x' });
  assert.equal(merged, '[user]\n[core]\n\tx = 1\n[user]\n\tname = "N"\n\temail = "e@x"\n');
  assert.equal(mergeGitIdentity(text, {}), text);
  assert.equal(mergeGitIdentity('[user "sub"]\n\tname = keep\n', { name: 'N' }), '[user "sub"]\n\tname = keep\n\n[user]\n\tname = "N"\n');
});

test('hostGitIdentity reads git config --global, skipping unset values, values with newlines, and a missing git', async () => {
  const runner = new FakeRunner((_c, args) => (args.includes('user.name') ? { stdout: 'Jane Doe\n' } : { code: 1 }));
  assert.deepEqual(await hostGitIdentity(runner, log), { name: 'Jane Doe' });
  assert.deepEqual(runner.calls[0], ['git', 'config', '--global', '--get', 'user.name']);
  const weird = new FakeRunner((_c, args) => (args.includes('user.name') ? { stdout: 'a\nb\n' } : { stdout: 'e@x\n' }));
  assert.deepEqual(await hostGitIdentity(weird, log), { email: 'e@x' });
  assert.deepEqual(await hostGitIdentity(new FakeRunner(() => 'missing'), log), {});
});

/**
 * A hostile guest's data port (FAKE agent): accepts every session with its A, then stops reading
 * and never answers (not even a cancel's C). Counts the sessions it accepted.
 */
async function stallingDataPort(path: string): Promise<{ accepted: () => number; close: () => Promise<void> }> {
  let accepted = 0;
  const sockets = new Set<import('node:net').Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        if (f.type !== 'S') continue;
        const { nonce } = JSON.parse(f.payload.toString()) as { nonce: string };
        socket.write(encodeFrame('A', JSON.stringify({ nonce })));
        accepted++;
        socket.pause(); // and from now on: nothing read, nothing sent
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    accepted: () => accepted,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

test('a guest that accepts the copy and then stalls fails the step with timeout (each entry is bounded), and the operation can cancel it sooner', {
  timeout: 60_000,
}, async () => {
  const port = join(dir, 'stall-data.sock');
  const fake = await stallingDataPort(port);
  // The pool's idle bound is long here, so what ends the copy is the entry's own deadline.
  const pool = new AgentDataPool({ transport: 'virtio-serial', sockets: [port] }, { idleTimeoutMs: 600_000, cancelTimeoutMs: 100 });
  const noControl = {} as AgentClient; // file entries use only data sessions
  const channel = new AgentGuestChannel(noControl, pool);
  try {
    const svc = service([{ host: join(host, 'token'), guest: '/root/token' }], { guest: async () => channel, entryTimeoutMs: 300 });
    await assert.rejects(svc.run(VM, recordingCtx()), (e: BangerError) => {
      assert.equal(e.code, 'timeout');
      assert.match(e.message, /token → dev:\/root\/token failed: the copy did not finish within 300 ms \(the guest stalled\)/);
      return true;
    });
    assert.equal(fake.accepted(), 1, 'the guest did accept the session: the stall came after');

    // A directory (tar-in) entry, cancelled by its operation before the deadline: cancelled, not timeout.
    const ac = new AbortController();
    const ctx = { ...recordingCtx(), signal: ac.signal };
    const dirSvc = service([{ host: join(host, 'agent'), guest: '/root/agent' }], { guest: async () => channel, entryTimeoutMs: 600_000 });
    const running = dirSvc.run(VM, ctx);
    for (let i = 0; i < 2000 && fake.accepted() < 2; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(fake.accepted(), 2);
    ac.abort();
    await assert.rejects(running, (e: BangerError) => e.code === 'cancelled');
  } finally {
    pool.close();
    await fake.close();
  }
});
