import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BangerClient } from '../../src/client/client.js';
import { requestJson, streamEvents } from '../../src/client/transport.js';
import { resolveLayout } from '../../src/config/layout.js';
import { TestHome } from './harness.js';

/**
 * A daemon that dies mid-request, simulated by a socket server that misbehaves on purpose: a
 * real daemon cannot be SIGKILLed at a precise point inside a request, this server can.
 */
type Behaviour = (socket: Socket) => void;

let home: TestHome;
let server: Server;
let behaviour: Behaviour = (s) => s.destroy();
const sockets = new Set<Socket>();

before(async () => {
  home = await TestHome.create();
  mkdirSync(home.runDir, { recursive: true, mode: 0o700 });
  server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    behaviour(socket);
  });
  await new Promise<void>((resolve) => server.listen(home.socketPath, resolve));
});

after(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await home?.destroy();
});

/** Waits for the whole request head, then runs `then`. */
const afterRequestHead =
  (then: (socket: Socket) => void): Behaviour =>
  (socket) => {
    let buf = '';
    socket.on('data', (c) => {
      buf += c.toString();
      if (buf.includes('\r\n\r\n')) then(socket);
    });
  };

function assertMidRequest(e: unknown, opId: string): true {
  assert.ok(e instanceof BangerError, `expected a BangerError, got ${String(e)}`);
  assert.equal(e.code, 'unavailable');
  assert.match(e.message, /the daemon closed the connection mid-request/);
  assert.match(e.fix ?? '', /banger daemon logs/);
  assert.equal(e.opId, opId);
  return true;
}

test('connection destroyed after the request was read → "closed the connection mid-request" with a fix', async () => {
  behaviour = afterRequestHead((s) => s.destroy());
  await assert.rejects(requestJson(home.socketPath, 'GET', '/v1/daemon', undefined, 'op-aaaaaa', 5000), (e) => assertMidRequest(e, 'op-aaaaaa'));
});

test('connection destroyed before anything was read', async () => {
  behaviour = (s) => s.destroy();
  await assert.rejects(requestJson(home.socketPath, 'POST', '/v1/vms', { name: 'x' }, 'op-bbbbbb', 5000), (e) => assertMidRequest(e, 'op-bbbbbb'));
});

test('response cut off after the headers and part of the body', async () => {
  behaviour = afterRequestHead((s) => {
    s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{"pid": 12');
    setTimeout(() => s.destroy(), 20);
  });
  await assert.rejects(requestJson(home.socketPath, 'GET', '/v1/daemon', undefined, 'op-cccccc', 5000), (e) => assertMidRequest(e, 'op-cccccc'));
});

test('an event stream cut off mid-stream is an error, not a silent end', async () => {
  behaviour = afterRequestHead((s) => {
    s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
    const event = 'data: {"type":"stage","stage":{"name":"a","startedAt":"x"}}\n\n';
    s.write(`${Buffer.byteLength(event).toString(16)}\r\n${event}\r\n`);
    setTimeout(() => s.destroy(), 20);
  });
  const seen: unknown[] = [];
  await assert.rejects(
    streamEvents(home.socketPath, '/v1/operations/op-dddddd/events', 'op-dddddd', (d) => {
      seen.push(d);
      return undefined;
    }),
    (e) => assertMidRequest(e, 'op-dddddd'),
  );
  assert.equal(seen.length, 1, 'the event before the cut was delivered');
});

test('a daemon that never answers → timeout error naming the request', async () => {
  behaviour = () => {};
  await assert.rejects(requestJson(home.socketPath, 'GET', '/v1/daemon', undefined, 'op-eeeeee', 300), (e) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'timeout');
    assert.match(e.message, /GET \/v1\/daemon/);
    assert.ok(e.fix);
    return true;
  });
});

test('the CLI reports the mid-request close as one error with a fix and the op id, exit 1', async () => {
  behaviour = afterRequestHead((s) => s.destroy());
  const r = await home.banger(['daemon', 'status']);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 2, r.stderr);
  assert.match(lines[0] ?? '', /^error: the daemon closed the connection mid-request .*\(op-[0-9a-f]{6}\)$/);
  assert.match(lines[1] ?? '', /^fix: .*banger daemon logs/);
  // The client must not "recover" by starting a second daemon next to a socket that accepts.
  assert.deepEqual(home.daemonPids(), []);
});

test('no socket at all and autostart off → "bangerd is not running" with a fix', async () => {
  const empty = await TestHome.create();
  try {
    const client = new BangerClient({ layout: resolveLayout({ BANGER_HOME: empty.dir }), autostart: false });
    assert.equal(await client.ping(), false);
    await assert.rejects(client.status(), (e) => {
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, 'unavailable');
      assert.match(e.message, /not running/);
      assert.match(e.fix ?? '', /banger daemon start/);
      return true;
    });
  } finally {
    await empty.destroy();
  }
});
