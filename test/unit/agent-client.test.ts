import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError } from '../../src/api/errors.js';
import { AgentClient } from '../../src/guest/agent-client.js';
import { AGENT_MAX_LINE_BYTES } from '../../src/guest/agent-protocol.js';

interface Req {
  id: number;
  method: string;
}
interface Conn {
  socket: net.Socket;
  /** 1-based number of this connection on the fake. */
  n: number;
  send(obj: unknown): void;
}
type Responder = (req: Req, conn: Conn) => void;

const RESULTS: Record<string, unknown> = {
  health: { ready: true, uptime_s: 12.5, agent_version: '0.1.0', hostname: 'fake', boot_id: 'b-1' },
  ports: {
    ports: [
      { proto: 'tcp', address: '0.0.0.0', port: 22, pid: 321, command: 'sshd: /usr/sbin/sshd -D' },
      { proto: 'udp6', address: '::', port: 53, pid: 0, command: '' },
    ],
  },
  stats: { mem_total_kib: 1_000_000, mem_available_kib: 500_000, load1: 0.5, load5: 0.25, load15: 0, uptime_s: 12.5 },
  ping: {},
};

const answer: Responder = (req, conn) => conn.send({ id: req.id, ok: true, result: RESULTS[req.method] });

/**
 * A fake agent: a Unix-socket server standing in for QEMU's virtio-serial chardev or, with
 * vsock set, for Firecracker's hybrid-vsock socket (expects `CONNECT <port>`, answers `OK ...`).
 */
class FakeAgent {
  readonly requests: Req[] = [];
  readonly handshakes: string[] = [];
  readonly sockets: net.Socket[] = [];
  respond: Responder = answer;
  /** hybrid-vsock: the first `refuse` connections are closed after CONNECT, as with no guest listener. */
  refuse = 0;
  /** hybrid-vsock: the answer to CONNECT. */
  okLine = 'OK 1073741824\n';
  private server: net.Server | null = null;

  constructor(
    readonly path: string,
    readonly vsock = false,
  ) {}

  get connections(): number {
    return this.sockets.length;
  }

  async listen(): Promise<void> {
    const server = net.createServer((socket) => this.serve(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, resolve);
    });
  }

  private serve(socket: net.Socket): void {
    this.sockets.push(socket);
    const conn: Conn = { socket, n: this.sockets.length, send: (obj) => socket.write(`${JSON.stringify(obj)}\n`) };
    socket.on('error', () => {});
    let buf = '';
    let handshaken = !this.vsock;
    socket.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!handshaken) {
          this.handshakes.push(line);
          if (this.refuse > 0) {
            this.refuse--;
            socket.destroy();
            return;
          }
          socket.write(this.okLine);
          handshaken = true;
          continue;
        }
        const req = JSON.parse(line) as Req;
        this.requests.push(req);
        this.respond(req, conn);
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

async function withFake(opts: { vsock?: boolean; listen?: boolean }, body: (fake: FakeAgent, client: AgentClient) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'banger-agent-client-'));
  const fake = new FakeAgent(join(dir, 'agent.sock'), opts.vsock);
  if (opts.listen !== false) await fake.listen();
  const client = new AgentClient({ socketPath: fake.path, transport: opts.vsock ? 'hybrid-vsock' : 'virtio-serial', vsockPort: 1024 });
  try {
    await body(fake, client);
  } finally {
    client.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const isCode = (code: string, pattern?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, `expected a BangerError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (pattern) assert.match(e.message, pattern);
  return true;
};

test('answers health, ports, stats and ping with typed, validated results over one held connection', async () => {
  await withFake({}, async (fake, client) => {
    await client.connect(1000);
    assert.equal(client.isConnected, true);
    assert.deepEqual(await client.health(), RESULTS.health);
    const ports = await client.ports();
    assert.deepEqual(ports.ports[0], { proto: 'tcp', address: '0.0.0.0', port: 22, pid: 321, command: 'sshd: /usr/sbin/sshd -D' });
    assert.equal(ports.ports[1]?.pid, null, 'pid 0 (unknown) is normalised to null');
    assert.deepEqual(await client.stats(), RESULTS.stats);
    await client.ping();
    assert.deepEqual(
      fake.requests.map((r) => [r.id, r.method]),
      [
        [1, 'health'],
        [2, 'ports'],
        [3, 'stats'],
        [4, 'ping'],
      ],
    );
    assert.equal(fake.connections, 1);
  });
});

test('unknown result fields are dropped, extra envelope fields tolerated', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = (req, conn) => conn.send({ id: req.id, ok: true, extra: 1, result: { ...(RESULTS.health as object), evil: 'x' } });
    const h = await client.health();
    assert.equal('evil' in h, false);
  });
});

test('replies are matched by id: out of order, stale and id-0 replies are ignored', async () => {
  await withFake({}, async (fake, client) => {
    const held: Req[] = [];
    fake.respond = (req, conn) => {
      held.push(req);
      if (held.length < 2) return;
      const [a, b] = held as [Req, Req];
      conn.send({ id: 999, ok: true, result: { nonsense: true } });
      conn.send({ id: 0, ok: false, error: 'invalid JSON' });
      answer(b, conn);
      answer(a, conn);
    };
    const [h, s] = await Promise.all([client.health(), client.stats()]);
    assert.equal(h.hostname, 'fake');
    assert.equal(s.mem_total_kib, 1_000_000);

    // A call that timed out gets its reply late; the next call must get its own.
    let first: Req | undefined;
    fake.respond = (req, conn) => {
      if (!first) {
        first = req;
        return;
      }
      conn.send({ id: first.id, ok: true, result: { ...(RESULTS.health as object), hostname: 'stale' } });
      conn.send({ id: req.id, ok: true, result: { ...(RESULTS.health as object), hostname: 'fresh' } });
    };
    await assert.rejects(client.health(100), isCode('timeout'));
    assert.equal((await client.health(1000)).hostname, 'fresh');
    assert.equal(fake.connections, 1);
  });
});

test('replies split byte by byte and several replies in one chunk are framed correctly', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = (req, conn) => {
      const line = `${JSON.stringify({ id: req.id, ok: true, result: RESULTS[req.method] })}\n`;
      void (async () => {
        for (const ch of Buffer.from(line)) {
          conn.socket.write(Buffer.from([ch]));
          await sleep(0);
        }
      })();
    };
    assert.equal((await client.stats()).load5, 0.25);
    const held: Req[] = [];
    fake.respond = (req, conn) => {
      held.push(req);
      if (held.length === 3) conn.socket.write(held.map((r) => `${JSON.stringify({ id: r.id, ok: true, result: RESULTS[r.method] })}\n`).join(''));
    };
    const [h, p, s] = await Promise.all([client.health(), client.ports(), client.stats()]);
    assert.equal(h.ready, true);
    assert.equal(p.ports.length, 2);
    assert.equal(s.mem_available_kib, 500_000);
  });
});

test('a line over 64 KiB is rejected and the connection recovers', async () => {
  await withFake({}, async (fake, client) => {
    let calls = 0;
    fake.respond = (req, conn) => {
      if (++calls === 1) {
        // Sent in pieces, the newline last: the client must discard across chunks.
        const huge = JSON.stringify({ id: req.id, ok: true, result: { ...(RESULTS.health as object), pad: 'x'.repeat(AGENT_MAX_LINE_BYTES) } });
        for (let i = 0; i < huge.length; i += 10_000) conn.socket.write(huge.slice(i, i + 10_000));
        conn.socket.write('\n');
        return;
      }
      answer(req, conn);
    };
    await assert.rejects(client.health(2000), isCode('internal', /line over 65536 bytes/));
    assert.equal((await client.health(2000)).hostname, 'fake');
    assert.equal(fake.connections, 1, 'the connection is kept');
  });
});

test('the rest of an over-long line is discarded up to its newline, even if it looks like a reply', async () => {
  await withFake({}, async (fake, client) => {
    let calls = 0;
    fake.respond = (req, conn) => {
      if (++calls === 1) {
        conn.socket.write('x'.repeat(AGENT_MAX_LINE_BYTES + 10)); // over-long, and not finished yet
        return;
      }
      conn.send({ id: req.id, ok: true, result: { ...(RESULTS.health as object), hostname: 'tail of the long line' } });
      answer(req, conn);
    };
    await assert.rejects(client.health(2000), isCode('internal', /line over 65536 bytes/));
    assert.equal((await client.health(2000)).hostname, 'fake');
  });
});

test('a reply of exactly 64 KiB is accepted', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = (req, conn) => {
      const base = JSON.stringify({ id: req.id, ok: true, result: { ...(RESULTS.health as object), pad: '' } });
      const line = base.replace('"pad":""', `"pad":"${'y'.repeat(AGENT_MAX_LINE_BYTES - base.length)}"`);
      assert.equal(Buffer.byteLength(line), AGENT_MAX_LINE_BYTES);
      conn.socket.write(`${line}\n`);
    };
    assert.equal((await client.health(2000)).ready, true);
  });
});

test('malformed JSON, schema-invalid results and agent errors are rejected; the next call works', async () => {
  await withFake({}, async (fake, client) => {
    const bad: Array<(req: Req, conn: Conn) => void> = [
      (_req, conn) => conn.socket.write('{"id":1,"ok":tru\n'),
      (req, conn) => conn.send({ id: req.id, ok: 'yes', result: {} }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ...(RESULTS.health as object), ready: 'yes' } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ...(RESULTS.health as object), hostname: 'h'.repeat(256) } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ports: [{ proto: 'tcp', address: '1.2.3.4', port: 70000, pid: 1, command: '' }] } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ports: [{ proto: 'sctp', address: '1.2.3.4', port: 1, pid: 1, command: '' }] } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ports: [{ proto: 'tcp', address: '1.2.3.4', port: 1, pid: 1, command: 'c'.repeat(257) }] } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ports: [{ proto: 'tcp', address: '<script>', port: 1, pid: 1, command: '' }] } }),
      (req, conn) => conn.send({ id: req.id, ok: true, result: { ...(RESULTS.stats as object), load1: -1 } }),
      (req, conn) => conn.send({ id: req.id, ok: false, error: 'boom' }),
    ];
    const expect = [
      /sent invalid JSON/,
      /sent a malformed response/,
      /invalid health result at ready/,
      /invalid health result at hostname/,
      /invalid ports result at ports\.0\.port/,
      /invalid ports result at ports\.0\.proto/,
      /invalid ports result at ports\.0\.command/,
      /invalid ports result at ports\.0\.address/,
      /invalid stats result at load1/,
      /failed stats: boom/,
    ];
    const methods = ['health', 'health', 'health', 'health', 'ports', 'ports', 'ports', 'ports', 'stats', 'stats'] as const;
    for (let i = 0; i < bad.length; i++) {
      fake.respond = bad[i]!;
      await assert.rejects(client.call(methods[i]!, 2000), isCode('internal', expect[i]));
      fake.respond = answer;
      await client.ping(2000);
    }
    assert.equal(fake.connections, 1);
  });
});

test('hybrid vsock: CONNECT 1024, OK, then the protocol; retries while the guest does not listen', async () => {
  await withFake({ vsock: true }, async (fake, client) => {
    fake.refuse = 2;
    fake.okLine = 'OK 1073741824\n';
    await client.connect(3000);
    assert.deepEqual(fake.handshakes, ['CONNECT 1024', 'CONNECT 1024', 'CONNECT 1024']);
    assert.equal(fake.connections, 3);
    assert.equal((await client.health()).hostname, 'fake');
    assert.equal((await client.stats()).load1, 0.5);
  });
});

test('hybrid vsock: bytes glued to the OK line belong to the protocol', async () => {
  await withFake({ vsock: true }, async (fake, client) => {
    // The first half of the reply comes with OK, the rest after the request: dropping the glued
    // bytes would leave invalid JSON.
    fake.okLine = 'OK 5\n{"id":1,"ok":tr';
    fake.respond = (_req, conn) => conn.socket.write('ue,"result":{}}\n');
    await client.connect(1000);
    await client.ping(1000);
  });
});

test('hybrid vsock: an unexpected answer to CONNECT fails the connection', async () => {
  await withFake({ vsock: true }, async (fake, client) => {
    fake.okLine = 'NOPE\n';
    await assert.rejects(client.connect(400), (e: unknown) => {
      assert.ok(e instanceof BangerError);
      assert.match(e.message, /unexpected answer to CONNECT 1024: "NOPE"/);
      assert.ok(e.message.includes(fake.path));
      return true;
    });
  });
});

test('a call times out when the agent does not answer in time; its late answer is ignored', async () => {
  await withFake({}, async (fake, client) => {
    const held: Array<() => void> = [];
    fake.respond = (req, conn) => {
      held.push(() => answer(req, conn));
    };
    await client.connect(1000);
    await assert.rejects(client.ping(150), isCode('timeout', /did not answer ping within 150 ms/));
    assert.equal(fake.requests.length, 1);
    // The agent answers only after the caller gave up: the reply finds no call and is dropped,
    // and the held connection keeps serving.
    for (const release of held) release();
    fake.respond = answer;
    assert.equal((await client.health(5000)).hostname, 'fake');
    assert.equal(fake.connections, 1);
  });
});

test('a dropped connection fails the call in flight at once and the next call reconnects', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = (req, conn) => (conn.n === 1 ? conn.socket.destroy() : answer(req, conn));
    // 'unavailable' (closed), not 'timeout': the call failed when the connection dropped, long
    // before its own deadline.
    await assert.rejects(client.health(60_000), isCode('unavailable', /closed/));
    assert.equal((await client.health(2000)).hostname, 'fake');
    assert.equal(fake.connections, 2);
  });
});

test('virtio-serial: a cut reply at the start of a reconnected port is skipped', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = (req, conn) => {
      if (conn.n === 1) return conn.socket.destroy();
      conn.socket.write('"hostname":"old","boot_id":"x"}}\n');
      answer(req, conn);
    };
    await assert.rejects(client.ping(2000), isCode('unavailable'));
    assert.equal((await client.health(2000)).hostname, 'fake');
  });
});

test('connect waits for the socket to appear, and gives up at the deadline naming it', async () => {
  await withFake({ listen: false }, async (fake, client) => {
    await assert.rejects(client.connect(300), isCode('timeout', new RegExp(`cannot connect to the guest agent on ${fake.path}`)));

    // The socket appears only after connect started retrying (its first attempts were refused).
    const connecting = client.connect(60_000);
    await sleep(300);
    await fake.listen();
    await connecting;
    assert.equal((await client.health()).ready, true);
  });
});

test('waitReady resends health until the agent answers ready', async () => {
  await withFake({}, async (fake, client) => {
    let n = 0;
    fake.respond = (req, conn) => {
      n++;
      if (n === 1) return; // dropped, as writes into a guest port nobody opened yet
      if (n === 2) return conn.send({ id: req.id, ok: true, result: { ...(RESULTS.health as object), ready: false } });
      answer(req, conn);
    };
    await client.waitReady(10_000);
    assert.equal(n, 3);
    assert.ok(fake.requests.every((r) => r.method === 'health'));
    assert.equal(new Set(fake.requests.map((r) => r.id)).size, 3, 'each probe has its own id');
  });
});

test('waitReady rejects at the deadline with the socket path, and promptly when aborted', async () => {
  await withFake({ listen: false }, async (fake, client) => {
    await assert.rejects(client.waitReady(400), isCode('timeout', new RegExp(`guest agent on ${fake.path} was not ready within 400 ms`)));

    // Aborted while it retries the missing socket: 'cancelled', not the 'timeout' its deadline gives.
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(client.waitReady(10_000, ac.signal), isCode('cancelled'));
  });
});

test('an abort ends waitReady while a probe is in flight, without waiting for the probe', async (t) => {
  await withFake({}, async (fake, client) => {
    await client.connect(5000);
    // Timers stand still from here: the probe's own deadline can never end it, only the abort can.
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const ac = new AbortController();
    fake.respond = () => ac.abort(); // the agent got the probe and never answers
    let outcome: unknown;
    const waiting = client.waitReady(600_000, ac.signal).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    void waiting.then((o) => {
      outcome = o;
    });
    for (let turn = 0; turn < 100 && outcome === undefined; turn++) await new Promise((r) => setImmediate(r));
    assert.ok(outcome !== undefined, 'waitReady still waits for its in-flight probe after the abort');
    assert.ok(isCode('cancelled')(outcome));
    assert.equal(fake.requests.length, 1);
  });
});

test('close fails calls in flight and every later call', async () => {
  await withFake({}, async (fake, client) => {
    fake.respond = () => {};
    const inflight = client.health(5000);
    await sleep(50);
    client.close();
    await assert.rejects(inflight, isCode('unavailable', /closed/));
    await assert.rejects(client.ping(1000), isCode('unavailable', /closed/));
    await assert.rejects(client.waitReady(1000), isCode('unavailable', /closed/));
  });
});
