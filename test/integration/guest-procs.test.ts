/**
 * The host side of guest processes against the REAL agent binary running on this host (no VM):
 * the agent sits behind fake virtio-serial ports (test/helpers/serial-relay.ts), the product's
 * channel (openAgentLink → AgentGuestChannel over AgentClient + AgentDataPool) drives it, and the
 * daemon's process routes serve it to the product's client over a real HTTP socket.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { BangerError } from '../../src/api/errors.js';
import type { Proc, ProcEvent } from '../../src/api/proc-schemas.js';
import { BangerClient } from '../../src/client/client.js';
import type { Layout } from '../../src/config/layout.js';
import { Router } from '../../src/daemon/http.js';
import { procRoutes } from '../../src/daemon/routes-procs.js';
import { ProcessService } from '../../src/daemon/services/processes.js';
import { type AgentLink, openAgentLink } from '../../src/guest/agent-link.js';
import type { GuestChannel, OutputStream } from '../../src/guest/guest-channel.js';
import type { VmmHandle } from '../../src/vmm/driver.js';
import { RelayedAgent } from '../helpers/serial-relay.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;

function linkTo(agent: RelayedAgent): AgentLink {
  return openAgentLink({ agentSocket: agent.agentSocket, agentTransport: 'virtio-serial' } as VmmHandle);
}

async function collect(channel: GuestChannel, id: string, from = { stdout: 0, stderr: 0 }) {
  const out: Record<OutputStream, Buffer[]> = { stdout: [], stderr: [] };
  const proc = await channel.output(id, { stdoutFrom: from.stdout, stderrFrom: from.stderr, follow: true }, (s, d) => {
    out[s].push(d);
  });
  return { proc, stdout: Buffer.concat(out.stdout), stderr: Buffer.concat(out.stderr) };
}

describe('GuestChannel over the real agent', () => {
  let agent: RelayedAgent;
  let link: AgentLink;
  let procs: ProcessService;
  let scratch: string;

  before(async () => {
    agent = await RelayedAgent.start();
    link = linkTo(agent);
    await link.waitReady(20_000);
    procs = new ProcessService({ vmGuest: async () => ({ vm: { id: 'vm1', name: 'dev' }, channel: link.guest }), log: pino({ level: 'silent' }) });
    scratch = await mkdtemp(join(tmpdir(), 'banger-procs-'));
  });
  after(async () => {
    link?.close();
    await agent?.close();
    await rm(scratch, { recursive: true, force: true });
  });

  test('exit codes, stdout and stderr apart, 127 for a missing command, a signal death by name', async () => {
    const r = await procs.exec('dev', { shell: 'echo out; echo err >&2; exit 3' });
    assert.equal(r.result.exitCode, 3);
    assert.equal(r.result.stdout, 'out\n');
    assert.equal(r.result.stderr, 'err\n');
    assert.equal(r.result.signal, null);
    const missing = await procs.exec('dev', { argv: ['/nonexistent/banger-cmd'] });
    assert.equal(missing.result.exitCode, 127);
    assert.equal(missing.result.code, 'command_not_found');
    const killed = await procs.exec('dev', { shell: 'kill -KILL $$' });
    assert.equal(killed.result.signal, 'KILL');
    assert.equal(killed.result.exitCode, null);
    // Default stdin is /dev/null: cat returns at once.
    assert.equal((await procs.exec('dev', { argv: ['cat'] })).result.exitCode, 0);
  });

  test('8 MiB of random stdout arrive intact (sha256)', async () => {
    const file = join(scratch, 'random.bin');
    const bytes = randomBytes(8 * 1024 * 1024);
    writeFileSync(file, bytes);
    const t = await procs.start('dev', { argv: ['cat', file] });
    const { proc, stdout, stderr } = await collect(link.guest, t.proc.id);
    assert.equal(proc.state, 'exited');
    assert.equal(proc.exitCode, 0);
    assert.equal(stdout.length, bytes.length);
    assert.equal(sha(stdout), sha(bytes));
    assert.equal(stderr.length, 0);
  });

  test('1 MiB of stdin through the data channel, and through idempotent control writes', async () => {
    const input = randomBytes(1024 * 1024);
    const viaData = await procs.exec('dev', { argv: ['sha256sum'] }, { stdin: input });
    assert.equal(viaData.result.stdout.split(' ')[0], sha(input));

    const t = await procs.start('dev', { argv: ['sha256sum'], stdin: 'pipe' });
    const half = 512 * 1024;
    assert.equal(await link.guest.writeStdin(t.proc.id, 0, input.subarray(0, half + 100)), half + 100);
    // A retried write from an earlier offset skips what the guest already has.
    assert.equal(await link.guest.writeStdin(t.proc.id, half, input.subarray(half)), input.length);
    await assert.rejects(link.guest.writeStdin(t.proc.id, input.length + 10, Buffer.from('x')), isCode('bad_request'), 'a gap is refused');
    await link.guest.closeStdin(t.proc.id);
    const { stdout } = await collect(link.guest, t.proc.id);
    assert.equal(stdout.toString().split(' ')[0], sha(input));
  });

  test('output from offsets, without follow, after the exit', async () => {
    const r = await procs.exec('dev', { argv: ['seq', '1', '20000'] });
    const all = Buffer.from(r.result.stdout);
    const cut = 12345;
    const tail: Buffer[] = [];
    const proc = await link.guest.output(r.proc.id, { stdoutFrom: cut, stderrFrom: 0, follow: false }, (s, d) => {
      if (s === 'stdout') tail.push(d);
    });
    assert.equal(proc.state, 'exited');
    assert.deepEqual(Buffer.concat(tail), all.subarray(cut));
  });

  test('more sessions than data ports queue and all finish', async () => {
    const starts = await Promise.all(Array.from({ length: 7 }, (_, i) => procs.start('dev', { shell: `sleep 0.2; echo ${i}` })));
    const outs = await Promise.all(starts.map((t) => collect(link.guest, t.proc.id)));
    assert.deepEqual(
      outs.map((o) => o.stdout.toString()),
      starts.map((_, i) => `${i}\n`),
    );
  });

  test('a new channel (a restarted daemon) picks up a running process and follows it to the end', async () => {
    const t = await procs.start('dev', { shell: 'seq 1 1000; read x; seq 1001 2000', stdin: 'pipe', name: 'survivor' });
    const first = linkTo(agent);
    const part: Buffer[] = [];
    await first.guest.output(t.proc.id, { stdoutFrom: 0, stderrFrom: 0, follow: false }, (_s, d) => {
      part.push(d);
    });
    first.close();
    const second = linkTo(agent);
    try {
      const again = await second.guest.listProcesses();
      const found = again.find((p) => p.name === 'survivor');
      assert.equal(found?.state, 'running');
      const offset = Buffer.concat(part).length;
      await second.guest.writeStdin(t.proc.id, 0, Buffer.from('go\n'));
      const rest = await collect(second.guest, t.proc.id, { stdout: offset, stderr: 0 });
      const joined = Buffer.concat([...part, rest.stdout]).toString();
      assert.equal(joined, `${Array.from({ length: 2000 }, (_, i) => i + 1).join('\n')}\n`);
      assert.equal(rest.proc.exitCode, 0);
    } finally {
      second.close();
    }
  });

  test('files: write (mode, mkdirs), read, stat, list, move, remove; symlinks are not followed', async () => {
    const g = link.guest;
    const base = join(scratch, 'files');
    const content = randomBytes(3 * 1024 * 1024 + 17);
    const w = await g.writeFile(join(base, 'deep', 'a.bin'), Readable.from([content.subarray(0, 1000), content.subarray(1000)]), { mode: 0o640, mkdirs: true });
    assert.equal(w.size, content.length);
    assert.equal(statSync(join(base, 'deep', 'a.bin')).mode & 0o777, 0o640);
    const r = await g.readFile(join(base, 'deep', 'a.bin'));
    const chunks: Buffer[] = [];
    for await (const c of r.stream) chunks.push(c as Buffer);
    assert.deepEqual(await r.done, { size: content.length, mode: 0o640 });
    assert.equal(sha(Buffer.concat(chunks)), sha(content));
    const st = await g.stat(join(base, 'deep', 'a.bin'));
    assert.equal(st.type, 'file');
    assert.equal(st.size, content.length);
    symlinkSync('/etc/hostname', join(base, 'link'));
    assert.equal((await g.stat(join(base, 'link'))).linkTarget, '/etc/hostname');
    await assert.rejects(
      (async () => {
        const x = await g.readFile(join(base, 'link'));
        x.stream.resume();
        await x.done;
      })(),
      (e) => e instanceof BangerError,
      'reading through a symlink is refused',
    );
    await g.mkdir(join(base, 'sub'), { mode: 0o700 });
    await g.move(join(base, 'deep', 'a.bin'), join(base, 'sub', 'b.bin'));
    const names = (await g.list(base)).entries.map((e) => `${e.name}:${e.type}`).sort();
    assert.deepEqual(names, ['deep:dir', 'link:symlink', 'sub:dir']);
    await g.remove(join(base, 'sub'), { recursive: true });
    await assert.rejects(g.stat(join(base, 'sub')), isCode('not_found'));
  });

  test('tar out and tar in through the data channel', async () => {
    const g = link.guest;
    const src = join(scratch, 'tree');
    mkdirSync(join(src, 'd'), { recursive: true });
    writeFileSync(join(src, 'd', 'x.txt'), 'x');
    writeFileSync(join(src, 'y.sh'), '#!/bin/sh\n', { mode: 0o755 });
    const out = await g.tarOut(src);
    const chunks: Buffer[] = [];
    for await (const c of out.stream) chunks.push(c as Buffer);
    await out.done;
    const tarball = Buffer.concat(chunks);
    const listing = execFileSync('tar', ['-tf', '-'], { input: tarball }).toString().split('\n').filter(Boolean).sort();
    assert.deepEqual(listing, ['tree/', 'tree/d/', 'tree/d/x.txt', 'tree/y.sh']);
    const dest = join(scratch, 'unpacked');
    await g.tarIn(dest, Readable.from([tarball]));
    assert.equal(readFileSync(join(dest, 'tree', 'd', 'x.txt'), 'utf8'), 'x');
    assert.equal(statSync(join(dest, 'tree', 'y.sh')).mode & 0o777, 0o755);
    await assert.rejects(
      g.tarIn(join(scratch, 'bad'), Readable.from([Buffer.from('this is not a tar archive at all'.repeat(40))])),
      (e) => e instanceof BangerError,
    );
  });

  test('pipeIn streams into a command through the data channel; a failing command rejects with its stderr', async () => {
    const dir = join(scratch, 'piped');
    mkdirSync(dir);
    const data = Buffer.alloc(2 * 1024 * 1024, 'q');
    await link.guest.pipeIn(['sh', '-c', 'cat >got'], dir, Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
    assert.ok(readFileSync(join(dir, 'got')).equals(data));
    await assert.rejects(
      link.guest.pipeIn(['sh', '-c', 'echo refused-here >&2; exit 2'], dir, Readable.from([Buffer.from('x')])),
      (e) => e instanceof BangerError && /refused-here/.test(e.message),
    );
  });

  test('the agent restarting (SIGKILL): the same channel reaches the new agent, the process and its output live on', async () => {
    const t = await procs.start('dev', { shell: 'echo before; read x; echo after', stdin: 'pipe' });
    await agent.restartAgent();
    await link.waitReady(20_000);
    assert.equal((await link.guest.showProcess(t.proc.id)).state, 'running');
    await link.guest.writeStdin(t.proc.id, 0, Buffer.from('\n'));
    const { proc, stdout } = await collect(link.guest, t.proc.id);
    assert.equal(stdout.toString(), 'before\nafter\n');
    assert.equal(proc.exitCode, 0);
  });

  test('the agent restarting mid-follow: the follow fails unavailable, a new follow from its offset finishes it', async () => {
    const t = await procs.start('dev', { shell: 'echo one; read x; echo two', stdin: 'pipe' });
    let got = '';
    let sawOne!: () => void;
    const one = new Promise<void>((r) => {
      sawOne = r;
    });
    const following = link.guest.output(t.proc.id, { stdoutFrom: 0, stderrFrom: 0, follow: true }, (_s, d) => {
      got += d.toString();
      if (got === 'one\n') sawOne();
    });
    following.catch(() => {});
    await one;
    await agent.restartAgent();
    await assert.rejects(following, isCode('unavailable'));
    await link.waitReady(20_000);
    await link.guest.writeStdin(t.proc.id, 0, Buffer.from('\n'));
    const rest = await collect(link.guest, t.proc.id, { stdout: Buffer.byteLength(got), stderr: 0 });
    assert.equal(got + rest.stdout.toString(), 'one\ntwo\n');
  });

  test('an exit while no channel was open (the daemon down) is reported by the next one', async () => {
    const first = linkTo(agent);
    const p = await first.guest.startProcess({ id: 'p-whiledown', shell: 'read x; echo bye; exit 5', stdin: 'pipe' });
    await first.guest.closeStdin(p.id);
    first.close();
    // The process ends with nobody connected: wait for the agent's status file.
    for (let i = 0; i < 400 && !existsSync(join(agent.procsDir, p.id, 'status')); i++) await new Promise((r) => setTimeout(r, 25));
    const second = linkTo(agent);
    try {
      const shown = await second.guest.showProcess(p.id);
      assert.equal(shown.state, 'exited');
      assert.equal(shown.exitCode, 5);
      assert.equal((await collect(second.guest, p.id)).stdout.toString(), 'bye\n');
    } finally {
      second.close();
    }
  });

  test('signal, forget, and the errors of unknown processes', async () => {
    const t = await procs.start('dev', { argv: ['sleep', '600'] });
    await assert.rejects(procs.forget('dev', t.proc.id, false), isCode('conflict'));
    await procs.signal('dev', t.proc.id, 'TERM');
    const { proc } = await collect(link.guest, t.proc.id);
    assert.equal(proc.signal, 15);
    await procs.forget('dev', t.proc.id, false);
    await assert.rejects(procs.show('dev', t.proc.id), isCode('not_found'));
    await assert.rejects(link.guest.showProcess('p-doesnotexist'), isCode('not_found'));
  });
});

describe('the daemon process API over the real agent', () => {
  let agent: RelayedAgent;
  let link: AgentLink;
  let server: Server;
  let client: BangerClient;
  let dir: string;

  before(async () => {
    agent = await RelayedAgent.start();
    link = linkTo(agent);
    await link.waitReady(20_000);
    const log = pino({ level: 'silent' });
    const procs = new ProcessService({
      vmGuest: async (ref) => {
        if (ref !== 'dev') throw new BangerError('conflict', `VM ${ref} is stopped, not running`, { fix: `start it: banger vm start ${ref}` });
        return { vm: { id: 'vm1', name: 'dev' }, channel: link.guest };
      },
      log,
    });
    const router = new Router(log);
    router.add(...procRoutes(procs));
    dir = await mkdtemp(join(tmpdir(), 'banger-procapi-'));
    server = createServer((req, res) => void router.handle(req, res));
    server.on('upgrade', (req, socket, head) => void router.handleUpgrade(req, socket, head));
    await new Promise<void>((r) => server.listen(join(dir, 'bangerd.sock'), r));
    client = new BangerClient({ layout: { socketPath: join(dir, 'bangerd.sock') } as Layout, autostart: false });
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    link?.close();
    await agent?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('exec (wait): the buffered result; a stopped VM is a conflict naming banger vm start', async () => {
    const r = await client.execProcess('dev', { shell: 'printf hi; printf oops >&2; exit 7' });
    assert.equal(r.result.exitCode, 7);
    assert.equal(r.result.stdout, 'hi');
    assert.equal(r.result.stderr, 'oops');
    assert.equal(r.proc.state, 'exited');
    await assert.rejects(client.execProcess('other', { argv: ['true'] }), (e) => isCode('conflict')(e) && /banger vm start/.test((e as BangerError).fix ?? ''));
    const capped = await client.execProcess('dev', { argv: ['seq', '1', '1000'], maxBuffer: 10 });
    assert.equal(capped.result.stdout, '1\n2\n3\n4\n5\n');
    assert.equal(capped.result.truncated, true);
  });

  test('stream: start, output with offsets, exit', async () => {
    const events: ProcEvent[] = [];
    const proc = await client.streamProcess('dev', { shell: 'seq 1 5000; echo done >&2' }, (e) => events.push(e));
    assert.equal(events[0]?.type, 'start');
    assert.equal(events.at(-1)?.type, 'exit');
    assert.equal(proc?.exitCode, 0);
    let expected = 0;
    const out: Buffer[] = [];
    for (const e of events) {
      if (e.type !== 'stdout') continue;
      assert.equal(e.offset, expected, 'offsets are contiguous');
      const b = Buffer.from(e.data, 'base64');
      expected += b.length;
      out.push(b);
    }
    assert.equal(Buffer.concat(out).toString(), `${Array.from({ length: 5000 }, (_, i) => i + 1).join('\n')}\n`);
    assert.deepEqual(
      events.filter((e) => e.type === 'stderr').map((e) => Buffer.from((e as { data: string }).data, 'base64').toString()),
      ['done\n'],
    );
  });

  test('detach, show by name, output from an offset, stdin writes, wait, forget', async () => {
    const started = await client.startProcess('dev', { argv: ['cat'], stdin: 'pipe', name: 'echoer' });
    assert.equal(started.state, 'running');
    await assert.rejects(client.startProcess('dev', { argv: ['true'], name: 'echoer' }), isCode('conflict'), 'a running name is taken');
    assert.equal((await client.process('dev', 'echoer')).id, started.id);
    assert.ok((await client.processes('dev')).some((p) => p.id === started.id));
    assert.equal((await client.writeProcessStdin('dev', 'echoer', 0, Buffer.from('hello '))).offset, 6);
    assert.equal((await client.writeProcessStdin('dev', 'echoer', 0, Buffer.from('hello world\n'), true)).offset, 12);
    const waited = await client.waitProcess('dev', 'echoer');
    assert.equal(waited.result?.stdout, 'hello world\n');
    const tail: string[] = [];
    const final = await client.processOutput('dev', started.id, { stdoutFrom: 6 }, (e) => {
      if (e.type === 'stdout') tail.push(Buffer.from(e.data, 'base64').toString());
    });
    assert.equal(tail.join(''), 'world\n');
    assert.equal(final?.state, 'exited');
    await client.forgetProcess('dev', started.id);
    await assert.rejects(client.process('dev', started.id), isCode('not_found'));
  });

  test('wait with a timeout answers a null result while the process runs; signal by name ends it', async () => {
    const p = await client.startProcess('dev', { argv: ['sleep', '600'] });
    const w = await client.waitProcess('dev', p.id, 200);
    assert.equal(w.result, null);
    assert.equal(w.proc.state, 'running');
    const signalled: Proc = await client.signalProcess('dev', p.id, 'KILL');
    assert.equal(signalled.id, p.id);
    const end = await client.waitProcess('dev', p.id);
    assert.equal(end.result?.signal, 'KILL');
    await assert.rejects(client.signalProcess('dev', p.id, 'BOGUS'), isCode('bad_request'));
  });

  test('attach: one writer (stdin up, output down, EOF, the exit), a second attach is read-only', async () => {
    const p = await client.startProcess('dev', { argv: ['cat'], stdin: 'pipe' });
    const writer = await client.attachProcess('dev', p.id);
    const reader = await client.attachProcess('dev', p.id);
    const seen: Buffer[] = [];
    writer.onOutput((o) => {
      if (o.stream === 'stdout') seen.push(o.data);
    });
    const readerSeen: Buffer[] = [];
    reader.onOutput((o) => readerSeen.push(o.data));
    writer.write(Buffer.from('ping\n'));
    reader.write(Buffer.from('intruder\n'));
    await assert.rejects(reader.done, isCode('conflict'));
    writer.end();
    const proc = await writer.done;
    assert.equal(proc?.state, 'exited');
    assert.equal(Buffer.concat(seen).toString(), 'ping\n');
    // The refused writer's bytes never reached the process.
    const out: string[] = [];
    await client.processOutput('dev', p.id, {}, (e) => e.type === 'stdout' && out.push(Buffer.from(e.data, 'base64').toString()));
    assert.equal(out.join(''), 'ping\n');
  });

  test('follow, stop, resume from the offsets several times: the joined output is exact', async () => {
    const p = await client.startProcess('dev', { argv: ['seq', '1', '300000'] });
    const parts: Buffer[] = [];
    let offset = 0;
    let final: Proc | undefined;
    for (let round = 0; round < 20 && !final; round++) {
      const ac = new AbortController();
      let got = 0;
      final = await client.processOutput('dev', p.id, { stdoutFrom: offset, follow: true, signal: ac.signal }, (e) => {
        if (e.type !== 'stdout') return;
        assert.equal(e.offset, offset, 'each event starts where the last ended');
        const b = Buffer.from(e.data, 'base64');
        parts.push(b);
        offset += b.length;
        got += b.length;
        if (got > 64 * 1024 && round < 5) ac.abort(); // leave mid-stream a few times
      });
    }
    assert.equal(final?.state, 'exited');
    assert.equal(Buffer.concat(parts).toString(), `${Array.from({ length: 300000 }, (_, i) => i + 1).join('\n')}\n`);
  });

  test('PTY: the process has a terminal, resize reaches it', async () => {
    const p = await client.startProcess('dev', { shell: 'tty; stty size; read x; stty size', pty: { rows: 24, cols: 80 }, stdin: 'pipe' });
    assert.equal(p.pty, true);
    // Resize only once the first `stty size` answered (it would otherwise see the new size).
    let early = '';
    for (let i = 0; i < 200 && !early.includes('24 80'); i++) {
      early = '';
      await client.processOutput('dev', p.id, {}, (e) => {
        if (e.type === 'stdout') early += Buffer.from(e.data, 'base64').toString();
      });
      if (!early.includes('24 80')) await new Promise((r) => setTimeout(r, 25));
    }
    assert.match(early, /\/dev\/pts\/[0-9]+\r?\n24 80\r?\n/);
    await client.resizeProcess('dev', p.id, 30, 100);
    await client.writeProcessStdin('dev', p.id, 0, Buffer.from('\n'));
    const r = await client.waitProcess('dev', p.id);
    assert.match(r.result?.stdout ?? '', /24 80\r?\n(\r?\n)?30 100\r?\n$/);
    const plain = await client.startProcess('dev', { argv: ['true'] });
    await assert.rejects(client.resizeProcess('dev', plain.id, 10, 10), isCode('conflict'));
  });

  test('attach to an unknown process: the daemon answers its JSON error instead of upgrading', async () => {
    const { upgrade } = await import('../../src/client/transport.js');
    await assert.rejects(upgrade(join(dir, 'bangerd.sock'), '/v1/vms/dev/procs/p-nothere/attach', 'banger-attach', 'op-abcdef'), isCode('not_found'));
    await assert.rejects(upgrade(join(dir, 'bangerd.sock'), '/v1/vms/dev/procs/..%2Fx/attach', 'banger-attach', 'op-abcdef'), isCode('bad_request'));
  });

  test('attach then detach: the process keeps running', async () => {
    const p = await client.startProcess('dev', { shell: 'echo ready; sleep 600' });
    const h = await client.attachProcess('dev', p.id);
    const first = await (async () => {
      for await (const o of h) return o;
      return undefined;
    })();
    assert.equal(first?.data.toString(), 'ready\n');
    h.close();
    const proc = await h.done;
    assert.equal(proc?.state, 'running');
    assert.equal((await client.process('dev', p.id)).state, 'running');
    await client.forgetProcess('dev', p.id, { kill: true });
    await assert.rejects(client.process('dev', p.id), isCode('not_found'));
  });
});
