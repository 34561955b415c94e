import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttp } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { type AddressInfo, createServer as createTcp, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { collapsePorts, enrichPorts, enrichPortsWithin, probeHttp, type RawPort } from '../../src/daemon/services/port-probe.js';

const servers: Server[] = [];
const listen = async (s: Server) => {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as AddressInfo).port;
};
after(() => {
  for (const s of servers) {
    s.close();
    (s as Server & { closeAllConnections?: () => void }).closeAllConnections?.();
  }
});

/** A raw TCP server whose sockets swallow errors (the probe hangs up on them mid-write on purpose). */
const tcpServer = (onConnection: (c: Socket) => void = () => {}) =>
  createTcp((c) => {
    c.on('error', () => {});
    onConnection(c);
  });

const p = (proto: string, address: string, port: number, pid: number | null = 10, command = 'x'): RawPort => ({ proto, address, port, pid, command });
const show = (ports: RawPort[]) => ports.map((x) => `${x.proto} ${x.address}:${x.port}`);

test('collapse: a dual-stack wildcard pair of one process becomes one tcp/udp entry', () => {
  assert.deepEqual(show(collapsePorts([p('tcp6', '::', 22), p('tcp', '0.0.0.0', 22)])), ['tcp 0.0.0.0:22']);
  assert.deepEqual(show(collapsePorts([p('tcp', '0.0.0.0', 22), p('tcp6', '::', 22)])), ['tcp 0.0.0.0:22']);
  assert.deepEqual(show(collapsePorts([p('udp6', '::', 53), p('udp', '0.0.0.0', 53)])), ['udp 0.0.0.0:53']);
  // Unknown pids on both sides (an agent without permission to see them) still pair up.
  assert.deepEqual(show(collapsePorts([p('tcp', '0.0.0.0', 80, null), p('tcp6', '::', 80, null)])), ['tcp 0.0.0.0:80']);
});

test('collapse: different processes, specific addresses and lone families stay separate', () => {
  const out = collapsePorts([
    p('tcp', '0.0.0.0', 8080, 1),
    p('tcp6', '::', 8080, 2), // another process: not the same service
    p('tcp', '127.0.0.1', 5432, 20),
    p('tcp6', '::1', 5432, 20), // loopback pair: not wildcards, kept as they are
    p('tcp6', '::', 3000, 30),
    p('tcp', '0.0.0.0', 9000, 4),
    p('udp', '0.0.0.0', 9000, 4), // tcp and udp of one port are different services
  ]);
  assert.deepEqual(show(out), [
    'tcp 127.0.0.1:5432',
    'tcp 0.0.0.0:8080',
    'tcp 0.0.0.0:9000',
    'tcp6 :::3000',
    'tcp6 ::1:5432',
    'tcp6 :::8080',
    'udp 0.0.0.0:9000',
  ]);
});

test('collapse: sorted by protocol then port; exact duplicates dropped; input untouched', () => {
  const input = [p('udp', '0.0.0.0', 5), p('tcp', '0.0.0.0', 443), p('tcp6', '::', 443), p('tcp', '0.0.0.0', 22), p('tcp', '0.0.0.0', 22), p('udp6', '::', 1)];
  const snapshot = structuredClone(input);
  assert.deepEqual(show(collapsePorts(input)), ['tcp 0.0.0.0:22', 'tcp 0.0.0.0:443', 'udp 0.0.0.0:5', 'udp6 :::1']);
  assert.deepEqual(input, snapshot);
  assert.deepEqual(collapsePorts([]), []);
  // Extra fields of the caller's type are carried along.
  const [one] = collapsePorts([{ ...p('tcp', '0.0.0.0', 1), extra: 'kept' }]);
  assert.equal(one?.extra, 'kept');
});

let http = 0;
let https = 0;
let garbage = 0;
let silent = 0;
let refused = 0;

before(async () => {
  http = await listen(createHttp((_, res) => res.end('ok')));
  const dir = mkdtempSync(join(tmpdir(), 'probe-cert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-subj',
        '/CN=x',
        '-days',
        '1',
        '-keyout',
        join(dir, 'k'),
        '-out',
        join(dir, 'c'),
      ],
      { stdio: 'ignore' },
    );
    https = await listen(createHttps({ key: readFileSync(join(dir, 'k')), cert: readFileSync(join(dir, 'c')) }, (_, res) => res.end('ok')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  garbage = await listen(tcpServer((c) => c.end('SSH-2.0-OpenSSH_9.2\r\n')));
  silent = await listen(tcpServer());
  // A port that was free a moment ago: nothing listens there.
  const tmp = createTcp();
  await new Promise<void>((r) => tmp.listen(0, '127.0.0.1', () => r()));
  refused = (tmp.address() as AddressInfo).port;
  await new Promise<void>((r) => tmp.close(() => r()));
});

test('probeHttp tells HTTPS (self-signed), HTTP and other protocols apart', async () => {
  assert.equal(await probeHttp('127.0.0.1', http), 'http');
  assert.equal(await probeHttp('127.0.0.1', https), 'https');
  assert.equal(await probeHttp('127.0.0.1', garbage), undefined);
  assert.equal(await probeHttp('127.0.0.1', refused), undefined);
});

test('probeHttp: a peer that never speaks gives up; bad input never throws', async () => {
  assert.equal(await probeHttp('127.0.0.1', silent, 200), undefined);
  assert.equal(await probeHttp('127.0.0.1', 70_000), undefined);
  assert.equal(await probeHttp('127.0.0.1', -1), undefined);
  assert.equal(await probeHttp('not an address', 80, 300), undefined);
});

test('probeHttp: a server that floods garbage is cut off at the read cap', async () => {
  const flood = await listen(tcpServer((c) => c.end(Buffer.alloc(1 << 20, 0x41))));
  assert.equal(await probeHttp('127.0.0.1', flood), undefined);
});

test('enrichPorts: endpoints for all, urls for reachable TCP listeners that answered, loopback and UDP skipped', async () => {
  const enriched = await enrichPorts('dev', '127.0.0.1', [
    p('tcp', '0.0.0.0', http, 1, 'web'),
    p('tcp6', '::', https, 2, 'tls'),
    p('tcp', '0.0.0.0', garbage, 3, 'sshd'),
    p('tcp', '127.0.0.1', http, 4, 'loopback only'),
    p('tcp6', '::1', https, 5, 'loopback only'),
    p('udp', '0.0.0.0', http, 6, 'dns'),
  ]);
  assert.deepEqual(
    enriched.map((e) => [e.command, e.endpoint, e.url]),
    [
      ['web', `dev.vm:${http}`, `http://dev.vm:${http}/`],
      ['tls', `dev.vm:${https}`, `https://dev.vm:${https}/`],
      ['sshd', `dev.vm:${garbage}`, undefined],
      ['loopback only', `dev.vm:${http}`, undefined],
      ['loopback only', `dev.vm:${https}`, undefined],
      ['dns', `dev.vm:${http}`, undefined],
    ],
  );
  assert.ok(!('url' in (enriched[2] ?? {})), 'no url key at all when nothing answered');
});

test('one overall deadline: a guest with many silent listeners gets an answer with what is known, and a note', async () => {
  // 40 listeners that accept and never speak: probed one by one (8 at a time, 2 × 10 s each) this
  // would take minutes. The answer comes at the deadline with the HTTP port found before it.
  const silentPorts: number[] = [];
  // (They read, so that they see the probe hang up.)
  const mute: import('node:net').Server[] = [];
  for (let i = 0; i < 40; i++) {
    const srv = tcpServer((c) => c.resume());
    mute.push(srv);
    silentPorts.push(await listen(srv));
  }
  const result = await enrichPortsWithin(
    'dev',
    '127.0.0.1',
    [p('tcp', '0.0.0.0', http, 1, 'web'), ...silentPorts.map((port, i) => p('tcp', '0.0.0.0', port, 100 + i, 'silent'))],
    { timeoutMs: 10_000, deadlineMs: 2000 },
  );
  assert.equal(result.ports.length, 41);
  assert.equal(result.ports.find((x) => x.port === http)?.url, `http://dev.vm:${http}/`, 'known before the deadline: kept');
  assert.equal(result.unprobed, 40);
  assert.ok(result.ports.filter((x) => x.command === 'silent').every((x) => x.url === undefined && x.endpoint === `dev.vm:${x.port}`));
  assert.match(result.note ?? '', /40 of 41 TCP port\(s\) were not probed .* within 2s/);
  // Every probe socket was closed at the deadline: the silent servers see their connections go.
  const openConnections = async () =>
    (await Promise.all(mute.map((s) => new Promise<number>((r) => s.getConnections((_e, n) => r(n)))))).reduce((a, b) => a + b, 0);
  let open = await openConnections();
  for (let i = 0; i < 100 && open > 0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    open = await openConnections();
  }
  assert.equal(open, 0);
});

test('without a deadline hit there is no note', async () => {
  const r = await enrichPortsWithin('dev', '127.0.0.1', [p('tcp', '0.0.0.0', http, 1, 'web')]);
  assert.equal(r.unprobed, 0);
  assert.equal(r.note, undefined);
});
