/**
 * The data-channel pool (src/guest/agent-data.ts) against a FAKE data-channel agent: Unix sockets
 * that speak the frames of docs/processes.md as each test scripts them (including what a broken
 * or hostile guest would send).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError } from '../../src/api/errors.js';
import { AgentDataPool, type DataChannelTarget, DEFAULT_VSOCK_SESSIONS } from '../../src/guest/agent-data.js';
import { encodeData, encodeFrame, type Frame, FrameDecoder, type FrameStream } from '../../src/guest/agent-frames.js';
import { AGENT_DATA_VSOCK_PORT } from '../../src/guest/agent-protocol.js';

interface FakeSession {
  request: Record<string, unknown> & { nonce: string; op: string };
  socket: net.Socket;
  accept(): void;
  send(type: 'A' | 'D' | 'R', payload?: Buffer | string, stream?: FrameStream): boolean;
  result(r: Record<string, unknown>): void;
  /** Host frames after S (D, E, C). */
  frames: Frame[];
  onFrame?: (f: Frame) => void;
}

/** FAKE agent: each connection's S frame goes to `onSession`; later frames to the session. */
class FakeDataAgent {
  readonly servers: net.Server[] = [];
  readonly sockets = new Set<net.Socket>();
  onSession: (s: FakeSession) => void = (s) => {
    s.accept();
    s.result({ ok: true });
  };
  sessions: FakeSession[] = [];
  connections = 0;
  /** vsock mode: answer CONNECT with this line first. */
  connectAnswer: string | null = null;

  async listen(paths: string[]): Promise<void> {
    for (const path of paths) {
      const server = net.createServer((socket) => this.serve(socket));
      await new Promise<void>((r) => server.listen(path, r));
      this.servers.push(server);
    }
  }

  private serve(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new FrameDecoder();
    let current: FakeSession | null = null;
    let handshake = this.connectAnswer !== null;
    socket.on('data', (chunk: Buffer) => {
      if (handshake) {
        const nl = chunk.indexOf(0x0a);
        assert.equal(chunk.subarray(0, nl).toString(), `CONNECT ${AGENT_DATA_VSOCK_PORT}`);
        socket.write(this.connectAnswer as string);
        handshake = false;
        chunk = chunk.subarray(nl + 1);
      }
      for (const f of decoder.push(chunk)) {
        if (f.type === 'S') {
          const request = JSON.parse(f.payload.toString()) as FakeSession['request'];
          const s: FakeSession = {
            request,
            socket,
            frames: [],
            accept: () => socket.write(encodeFrame('A', JSON.stringify({ nonce: request.nonce }))),
            send: (type, payload = Buffer.alloc(0), stream = 0) => socket.write(encodeFrame(type, payload, stream)),
            result: (r) => socket.write(encodeFrame('R', JSON.stringify(r))),
          };
          current = s;
          this.sessions.push(s);
          this.onSession(s);
        } else if (current) {
          current.frames.push(f);
          current.onFrame?.(f);
        }
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

let dir: string;
let n = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-data-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function setup(ports = 4, opts: ConstructorParameters<typeof AgentDataPool>[1] = {}) {
  const paths = Array.from({ length: ports }, (_, k) => join(dir, `t${n}-data-${k}.sock`));
  n++;
  const fake = new FakeDataAgent();
  await fake.listen(paths);
  const target: DataChannelTarget = { transport: 'virtio-serial', sockets: paths };
  const pool = new AgentDataPool(target, opts);
  return {
    fake,
    pool,
    [Symbol.asyncDispose]: async () => {
      pool.close();
      await fake.close();
    },
  };
}

const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !cond(); i++) await sleep(5);
  assert.ok(cond(), `timed out waiting for ${what}`);
}

test('everything before our A (garbage, a stale A, an old session’s data) is discarded', async () => {
  await using t = await setup(1);
  t.fake.onSession = (s) => {
    s.socket.write(Buffer.from('leftover bytes of nothing'));
    s.send('D', 'old session output', 1);
    s.send('A', JSON.stringify({ nonce: 'not-yours' }));
    s.send('D', 'still old', 1);
    s.accept();
    s.send('D', 'hello', 1);
    s.send('D', 'warn', 2);
    s.result({ ok: true, answer: 42 });
  };
  const got: string[] = [];
  const session = t.pool.session({ op: 'output', id: 'p-1' }, (stream, d) => {
    got.push(`${stream}:${d.toString()}`);
  });
  const r = await session.result;
  assert.equal(r.answer, 42);
  assert.deepEqual(got, ['1:hello', '2:warn']);
  assert.equal(t.fake.sessions[0]?.request.op, 'output');
  assert.match(t.fake.sessions[0]?.request.nonce ?? '', /^[0-9a-f]{24}$/);
});

test('sessions beyond the ports queue; held connections are reused', async () => {
  await using t = await setup(4);
  const held: Array<() => void> = [];
  t.fake.onSession = (s) => {
    s.accept();
    held.push(() => s.result({ ok: true, op: s.request.op }));
  };
  const sessions = Array.from({ length: 6 }, (_, i) => t.pool.session({ op: `s${i}` }, () => undefined));
  await until('four sessions accepted', () => held.length === 4);
  assert.equal(t.pool.busy, 4);
  assert.equal(t.pool.queued, 2);
  for (const release of held.splice(0)) release();
  await until('the queued two accepted', () => held.length === 2);
  for (const release of held.splice(0)) release();
  const results = await Promise.all(sessions.map((s) => s.result));
  assert.deepEqual(
    results.map((r) => r.op),
    ['s0', 's1', 's2', 's3', 's4', 's5'],
  );
  t.fake.onSession = (s) => {
    s.accept();
    s.result({ ok: true });
  };
  await Promise.all(Array.from({ length: 8 }, () => t.pool.session({ op: 'again' }, () => undefined).result));
  assert.equal(t.fake.connections, 4, 'one connection per port, held across sessions');
  assert.equal(t.pool.connectionsOpened, 4);
});

test('a slow consumer stops the socket being read: the guest’s writes stall', async () => {
  await using t = await setup(1);
  const total = 64 * 1024 * 1024;
  let flushed = 0;
  let blocked = false;
  t.fake.onSession = (s) => {
    s.accept();
    const chunk = Buffer.alloc(256 * 1024, 7);
    const pump = () => {
      while (flushed < total) {
        flushed += chunk.length;
        if (!s.send('D', chunk, 1)) {
          blocked = true;
          s.socket.once('drain', pump);
          return;
        }
      }
      s.result({ ok: true });
    };
    pump();
  };
  let release!: () => void;
  const stuck = new Promise<void>((r) => {
    release = r;
  });
  let received = 0;
  let calls = 0;
  const session = t.pool.session({ op: 'output' }, (_s, d) => {
    received += d.length;
    return calls++ === 0 ? stuck : undefined;
  });
  await until('the fake guest blocked on a full socket', () => blocked);
  await sleep(500); // without backpressure the host would read tens of MiB in this time (it stays under 1 MiB with it)
  assert.ok(flushed <= 4 * 1024 * 1024, `the guest got ${flushed} bytes out while the consumer was stuck`);
  assert.equal(received, 256 * 1024, 'one frame delivered, the rest waits');
  release();
  await session.result;
  assert.equal(received, total);
});

test('host data: write resolves only once the socket took it; E ends it', async () => {
  await using t = await setup(1);
  let fakeSession: FakeSession | undefined;
  t.fake.onSession = (s) => {
    fakeSession = s;
    s.socket.pause(); // a guest that does not read yet
    s.accept();
  };
  const session = t.pool.session({ op: 'write', path: '/x' }, () => undefined);
  await session.accepted;
  let written = false;
  const data = Buffer.alloc(16 * 1024 * 1024, 1);
  const w = session.write(data).then(() => {
    written = true;
  });
  await sleep(200);
  assert.equal(written, false, 'the write waits for a guest that does not read');
  const s = fakeSession as FakeSession;
  let got = 0;
  let ended = false;
  s.onFrame = (f) => {
    if (f.type === 'D') got += f.payload.length;
    if (f.type === 'E') {
      ended = true;
      s.result({ ok: true, size: got });
    }
  };
  s.socket.resume();
  await w;
  await session.end();
  const r = await session.result;
  assert.equal(ended, true);
  assert.equal(r.size, data.length);
});

test('a guest that never accepts: unavailable, and the port is redialled for the next session', async () => {
  await using t = await setup(1, { acceptTimeoutMs: 150 });
  t.fake.onSession = () => {};
  await assert.rejects(t.pool.session({ op: 'output' }, () => undefined).result, isCode('unavailable'));
  t.fake.onSession = (s) => {
    s.accept();
    s.result({ ok: true });
  };
  await t.pool.session({ op: 'output' }, () => undefined).result;
  assert.equal(t.fake.connections, 2);
});

test('hostile frames: an oversized length fails the session before allocating; the next session reconnects', async () => {
  await using t = await setup(1);
  t.fake.onSession = (s) => {
    s.accept();
    const header = Buffer.from([0xba, 0x6e, 'D'.charCodeAt(0), 1, 0, 0, 0, 0]);
    header.writeUInt32LE(0xffffffff, 4);
    s.socket.write(header);
  };
  await assert.rejects(t.pool.session({ op: 'output' }, () => undefined).result, isCode('internal'));
  t.fake.onSession = (s) => {
    s.accept();
    s.result({ ok: false, error: 'no such process p-9' });
  };
  await assert.rejects(t.pool.session({ op: 'output' }, () => undefined).result, isCode('not_found'));
  t.fake.onSession = (s) => {
    s.accept();
    s.send('R', '{not json');
  };
  await assert.rejects(t.pool.session({ op: 'output' }, () => undefined).result, isCode('internal'));
  assert.equal(t.fake.connections, 2);
});

test('cancel: C goes to the guest and its R ends the session; a queued session just leaves the queue', async () => {
  await using t = await setup(1);
  t.fake.onSession = (s) => {
    s.accept();
    s.onFrame = (f) => {
      if (f.type === 'C') s.result({ ok: true, cancelled: true });
    };
  };
  const ac = new AbortController();
  const first = t.pool.session({ op: 'output' }, () => undefined, ac.signal);
  await first.accepted;
  const queuedAc = new AbortController();
  const queued = t.pool.session({ op: 'queued' }, () => undefined, queuedAc.signal);
  assert.equal(t.pool.queued, 1);
  queuedAc.abort();
  await assert.rejects(queued.result, isCode('cancelled'));
  assert.equal(t.pool.queued, 0);
  ac.abort();
  assert.equal((await first.result).cancelled, true);
  assert.deepEqual(
    t.fake.sessions.map((s) => s.request.op),
    ['output'],
    'the cancelled queued session never reached the guest',
  );
});

test('a cancelled session whose guest never answers drops the connection', async () => {
  await using t = await setup(1, { cancelTimeoutMs: 100 });
  t.fake.onSession = (s) => s.accept();
  const ac = new AbortController();
  const s = t.pool.session({ op: 'output' }, () => undefined, ac.signal);
  await s.accepted;
  ac.abort();
  await assert.rejects(s.result, isCode('cancelled'));
  t.fake.onSession = (x) => {
    x.accept();
    x.result({ ok: true });
  };
  await t.pool.session({ op: 'next' }, () => undefined).result;
  assert.equal(t.fake.connections, 2);
});

test('a consumer that fails ends the session with its error (the guest is told to stop)', async () => {
  await using t = await setup(1);
  let cancelled = false;
  t.fake.onSession = (s) => {
    s.accept();
    s.send('D', 'one', 1);
    s.send('D', 'two', 1);
    s.onFrame = (f) => {
      if (f.type === 'C') {
        cancelled = true;
        s.result({ ok: true });
      }
    };
  };
  const seen: string[] = [];
  const session = t.pool.session({ op: 'output' }, async (_s, d) => {
    seen.push(d.toString());
    throw new Error('the client went away');
  });
  await assert.rejects(session.result, /the client went away/);
  assert.equal(cancelled, true);
  assert.deepEqual(seen, ['one'], 'nothing more is delivered after the failure');
});

test('a restarted agent’s announcement: dropped before our A, fails the session after it', async () => {
  await using t = await setup(1);
  const restarted = { ok: false, code: 'unavailable', error: 'agent restarted' };
  t.fake.onSession = (s) => {
    s.result(restarted); // the worker reopened its port just before our S
    s.accept();
    s.result({ ok: true, fine: true });
  };
  assert.equal((await t.pool.session({ op: 'output' }, () => undefined).result).fine, true);
  t.fake.onSession = (s) => {
    s.accept();
    s.send('D', 'partial', 1);
    s.result(restarted); // the agent died mid-session and a new worker opened the port
  };
  await assert.rejects(t.pool.session({ op: 'output' }, () => undefined).result, isCode('unavailable'));
});

test('a consumer stuck past its session’s end does not hold the port for the next session', async () => {
  await using t = await setup(1);
  t.fake.onSession = (s) => {
    s.accept();
    s.send('D', `data of ${s.request.op}`, 1);
    if (s.request.op === 'first') {
      s.onFrame = (f) => {
        if (f.type === 'C') s.result({ ok: true });
      };
    } else s.result({ ok: true });
  };
  const ac = new AbortController();
  const first = t.pool.session({ op: 'first' }, () => new Promise<void>(() => {}), ac.signal);
  await first.accepted;
  ac.abort();
  await first.result;
  const got: string[] = [];
  await t.pool.session({ op: 'second' }, (_s, d) => void got.push(d.toString())).result;
  assert.deepEqual(got, ['data of second']);
});

test('a session whose signal is already aborted never reaches the guest', async () => {
  await using t = await setup(1);
  const s = t.pool.session({ op: 'output' }, () => undefined, AbortSignal.abort());
  await assert.rejects(s.result, isCode('cancelled'));
  await assert.rejects(s.accepted, isCode('cancelled'));
  await t.pool.session({ op: 'next' }, () => undefined).result;
  assert.deepEqual(
    t.fake.sessions.map((x) => x.request.op),
    ['next'],
  );
});

test('the queue is bounded', async () => {
  await using t = await setup(1, { maxQueued: 1 });
  t.fake.onSession = (s) => s.accept();
  const a = t.pool.session({ op: 'a' }, () => undefined);
  await a.accepted;
  t.pool.session({ op: 'b' }, () => undefined);
  await assert.rejects(t.pool.session({ op: 'c' }, () => undefined).result, isCode('busy'));
});

test('the data vsock port is privileged (below 1024: no unprivileged guest user can bind it)', () => {
  assert.ok(AGENT_DATA_VSOCK_PORT < 1024);
});

test('hybrid vsock: CONNECT <data port> per session, one connection each; a refused CONNECT is unavailable', async () => {
  const path = join(dir, 'vsock.sock');
  const fake = new FakeDataAgent();
  fake.connectAnswer = 'OK 1073741824\n';
  await fake.listen([path]);
  const pool = new AgentDataPool({ transport: 'hybrid-vsock', socketPath: path, port: AGENT_DATA_VSOCK_PORT });
  try {
    fake.onSession = (s) => {
      s.accept();
      s.send('D', `for ${s.request.op}`, 1);
      s.result({ ok: true });
    };
    const got: string[] = [];
    await Promise.all(['a', 'b', 'c'].map((op) => pool.session({ op }, (_s, d) => void got.push(d.toString())).result));
    assert.deepEqual(got.sort(), ['for a', 'for b', 'for c']);
    assert.equal(fake.connections, 3);
    await pool.session({ op: 'd' }, () => undefined).result;
    assert.equal(fake.connections, 4, 'no connection is reused');
    fake.connectAnswer = 'NOPE\n';
    await assert.rejects(pool.session({ op: 'e' }, () => undefined).result, isCode('unavailable'));
  } finally {
    pool.close();
    await fake.close();
  }
});

test('host data larger than a frame is split into frames of at most 256 KiB', () => {
  const frames = encodeData(Buffer.alloc(600 * 1024), 0);
  assert.deepEqual(
    frames.map((f) => f.length - 8),
    [256 * 1024, 256 * 1024, 88 * 1024],
  );
});

test('hybrid vsock: at most four sessions at once (the agent serves four); the rest queue and run as sessions end', { timeout: 30_000 }, async () => {
  assert.equal(DEFAULT_VSOCK_SESSIONS, 4);
  const path = join(dir, 'vsock-queue.sock');
  const fake = new FakeDataAgent();
  fake.connectAnswer = 'OK 1073741824\n';
  await fake.listen([path]);
  const pool = new AgentDataPool({ transport: 'hybrid-vsock', socketPath: path, port: AGENT_DATA_VSOCK_PORT });
  const held: FakeSession[] = [];
  fake.onSession = (s) => {
    s.accept();
    held.push(s); // answered later, by the test
  };
  try {
    const sessions = Array.from({ length: 6 }, (_, k) => pool.session({ op: `s${k}` }, () => undefined));
    await until('four sessions accepted', () => held.length === 4);
    assert.equal(pool.busy, 4);
    assert.equal(pool.queued, 2);
    assert.equal(fake.sockets.size, 4, 'no fifth connection while four sessions run');
    held[0]?.result({ ok: true });
    await sessions[0]?.result;
    await until('a queued session started', () => held.length === 5);
    assert.equal(pool.queued, 1);
    for (const s of held.slice(1)) s.result({ ok: true });
    await until('the last session started', () => held.length === 6);
    held[5]?.result({ ok: true });
    await Promise.all(sessions.map((x) => x.result));
    assert.equal(fake.connections, 6);
  } finally {
    pool.close();
    await fake.close();
  }
});

test('idle: a guest that accepts and then sends nothing fails the session with timeout; the port is redialled', { timeout: 30_000 }, async () => {
  await using t = await setup(1, { idleTimeoutMs: 150 });
  t.fake.onSession = (s) => s.accept(); // hostile: A, then silence
  const session = t.pool.session({ op: 'read', path: '/x' }, () => undefined);
  await session.accepted;
  await assert.rejects(session.result, (e: unknown) => isCode('timeout')(e) && /stalled a read session/.test((e as Error).message));
  await until('the stalled connection dropped', () => t.fake.sockets.size === 0);
  t.fake.onSession = (s) => {
    s.accept();
    s.result({ ok: true });
  };
  await t.pool.session({ op: 'read', path: '/x' }, () => undefined).result;
  assert.equal(t.fake.connections, 2);
});

test('idle: a guest that accepts a write and stops reading fails the write with timeout', { timeout: 30_000 }, async () => {
  await using t = await setup(1, { idleTimeoutMs: 150 });
  t.fake.onSession = (s) => {
    s.accept();
    s.socket.pause(); // hostile: never reads the host's data, never answers
  };
  const session = t.pool.session({ op: 'write', path: '/x' }, () => undefined, { hostSends: true });
  await session.accepted;
  const w = session.write(Buffer.alloc(16 * 1024 * 1024, 1));
  await assert.rejects(session.result, isCode('timeout'));
  await assert.rejects(w);
});

test('idle: a guest that took all data and never answers E fails with timeout', { timeout: 30_000 }, async () => {
  await using t = await setup(1, { idleTimeoutMs: 150 });
  t.fake.onSession = (s) => s.accept();
  const session = t.pool.session({ op: 'tar-in', path: '/x' }, () => undefined, { hostSends: true });
  await session.write(Buffer.from('data'));
  await session.end();
  await assert.rejects(session.result, isCode('timeout'));
});

test('idle: time in which the host is the slow side does not count', { timeout: 30_000 }, async () => {
  await using t = await setup(1, { idleTimeoutMs: 100 });
  // A slow host consumer: the guest sent D and R, the consumer takes longer than the idle bound.
  t.fake.onSession = (s) => {
    s.accept();
    s.send('D', 'x', 1);
    s.result({ ok: true });
  };
  const slowConsumer = t.pool.session({ op: 'read', path: '/x' }, () => sleep(400));
  assert.equal((await slowConsumer.result).ok, true);

  // A slow host sender: nothing written for longer than the bound, before its E.
  t.fake.onSession = (s) => {
    s.accept();
    s.onFrame = (f) => {
      if (f.type === 'E') s.result({ ok: true });
    };
  };
  const slowSender = t.pool.session({ op: 'write', path: '/x' }, () => undefined, { hostSends: true });
  await slowSender.accepted;
  await sleep(400);
  await slowSender.write(Buffer.from('late'));
  await sleep(400);
  await slowSender.end();
  assert.equal((await slowSender.result).ok, true);
});

test('idle: a session that opts out (output follow) may be silent; its signal still ends it', { timeout: 30_000 }, async () => {
  await using t = await setup(1, { idleTimeoutMs: 100, cancelTimeoutMs: 100 });
  t.fake.onSession = (s) => {
    s.accept();
    s.onFrame = (f) => {
      if (f.type === 'C') s.result({ ok: false, code: 'cancelled', error: 'cancelled' });
    };
  };
  const ac = new AbortController();
  const follow = t.pool.session({ op: 'output', follow: true }, () => undefined, { signal: ac.signal, idleTimeout: false });
  await follow.accepted;
  await sleep(400);
  let settled = false;
  follow.result.then(
    () => (settled = true),
    () => (settled = true),
  );
  await sleep(0);
  assert.equal(settled, false, 'a quiet follow is not timed out');
  ac.abort();
  await assert.rejects(follow.result, isCode('cancelled'));
});
