/**
 * The web UI's server in front of the daemon's real routes (Router + procRoutes + fileRoutes over
 * the FAKE HostFakeGuest: "the guest" is this host) on a private Unix socket: raw downloads and
 * the attach WebSocket go through the bridge unchanged; static files from a fixture dist/web.
 * No bangerd, no VM (test/integration/web-daemon.test.ts runs the real daemon).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { Router } from '../../src/daemon/http.js';
import { fileRoutes } from '../../src/daemon/routes-files.js';
import { procRoutes } from '../../src/daemon/routes-procs.js';
import { FilesService } from '../../src/daemon/services/files.js';
import { ProcessService } from '../../src/daemon/services/processes.js';
import { SECURITY_HEADERS } from '../../src/daemon/web/checks.js';
import { DEFAULT_STATIC_DIR, WebServer } from '../../src/daemon/web/server.js';
import { systemClock } from '../../src/util/op-context.js';
import { ROOT } from '../helpers/banger.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { webLogin, webRequest, wsProtocols } from '../helpers/web.js';

let dir: string;
let daemon: Server;
let web: WebServer;
let base: string;
let session: { cookie: string; csrf: string; key: string };
const guest = new HostFakeGuest();

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-web-'));
  const log = pino({ level: 'silent' });
  const vmGuest = async () => ({ vm: { id: 'vm1', name: 'dev' }, channel: guest });
  const procs = new ProcessService({ vmGuest, log });
  const files = new FilesService({ guest: async () => guest });
  const router = new Router(log);
  router.add(...procRoutes(procs), ...fileRoutes(files));
  daemon = createServer((req, res) => void router.handle(req, res));
  daemon.on('upgrade', (req, socket, head) => void router.handleUpgrade(req, socket, head));
  const socketPath = join(dir, 'bangerd.sock');
  await new Promise<void>((r) => daemon.listen(socketPath, r));

  // A fixture dist/web, with a symlink out of it and a canary beside it.
  const staticDir = join(dir, 'web');
  mkdirSync(join(staticDir, 'assets'), { recursive: true });
  writeFileSync(join(staticDir, 'index.html'), '<!doctype html><title>fixture</title>');
  writeFileSync(join(staticDir, 'assets', 'app.js'), 'console.log(1)');
  writeFileSync(join(dir, 'canary.txt'), 'SECRET-CANARY');
  symlinkSync(join(dir, 'canary.txt'), join(staticDir, 'assets', 'link.txt'));

  web = await WebServer.start({ listenAddr: '127.0.0.1:0', allowRemote: false, socketPath, clock: systemClock, log, staticDir });
  base = web.baseUrl.replace(/\/$/, '');
  session = await webLogin(web.issueToken().url);
});

after(async () => {
  for (const p of guest.procs.values()) if (p.info.state === 'running') p.kill(9);
  await web?.close();
  daemon?.closeAllConnections();
  await new Promise<void>((r) => (daemon ? daemon.close(() => r()) : r()));
  await rm(dir, { recursive: true, force: true });
});

test('static: index.html for the SPA routes, /assets with fixed types and the security headers', async () => {
  for (const path of ['/', '/vms/dev', '/ops/op-123456', '/images/x']) {
    const r = await webRequest(base, 'GET', path, { headers: { cookie: session.cookie } });
    assert.equal(r.status, 200, path);
    assert.equal(r.text, '<!doctype html><title>fixture</title>');
    assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) assert.equal(r.headers[k], v, k);
  }
  const js = await webRequest(base, 'GET', '/assets/app.js', { headers: { cookie: session.cookie } });
  assert.equal(js.status, 200);
  assert.equal(js.text, 'console.log(1)');
  assert.equal(js.headers['content-type'], 'text/javascript; charset=utf-8');
  assert.equal(js.headers['x-content-type-options'], 'nosniff');
});

test('static: `..`, escapes, dot files and symlinks out of dist/web are refused (the canary is never served)', async () => {
  for (const path of [
    '/assets/../../canary.txt',
    '/assets/..%2f..%2fcanary.txt',
    '/assets/%2e%2e/%2e%2e/canary.txt',
    '/assets/link.txt',
    '/assets/',
    '/assets/.x.js',
    '/assets/nope.js',
  ]) {
    const r = await webRequest(base, 'GET', path, { headers: { cookie: session.cookie } });
    assert.equal(r.status, 404, `${path}: ${r.status}`);
    assert.doesNotMatch(r.text, /SECRET-CANARY/);
  }
});

test('bridge: a raw file download is byte-for-byte the daemon’s, with its result trailer', async () => {
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const file = join(dir, 'blob.bin');
  writeFileSync(file, data);
  const r = await webRequest(base, 'GET', `/api/v1/vms/dev/files?path=${encodeURIComponent(file)}`, { headers: { cookie: session.cookie } });
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'application/octet-stream');
  assert.equal(r.headers['cache-control'], 'no-store');
  assert.ok(r.body.equals(data), 'same bytes');
  assert.deepEqual(JSON.parse(String(r.trailers['x-banger-result'])), { ok: true, size: data.length, mode: 0o644 }, 'the result trailer is passed on');
});

test('bridge: a raw upload (PUT) streams through with the CSRF header, and not without', async () => {
  const data = randomBytes(1024 * 1024 + 3);
  const target = join(dir, 'up.bin');
  const headers = { cookie: session.cookie, 'content-type': 'application/octet-stream' };
  const refused = await webRequest(base, 'PUT', `/api/v1/vms/dev/files?path=${encodeURIComponent(target)}`, { headers, body: data });
  assert.equal(refused.status, 403);
  await assert.rejects(
    import('node:fs/promises').then((f) => f.stat(target)),
    'nothing written',
  );
  const ok = await webRequest(base, 'PUT', `/api/v1/vms/dev/files?path=${encodeURIComponent(target)}`, {
    headers: { ...headers, 'x-banger-csrf': session.csrf },
    body: data,
  });
  assert.equal(ok.status, 200, ok.text);
  assert.ok((await import('node:fs/promises').then((f) => f.readFile(target))).equals(data));
});

/** Opens the browser terminal's WebSocket to a process. */
function openWs(path: string, origin: string, cookie = session.cookie): WebSocket {
  return new WebSocket(`ws://${new URL(base).host}${path}`, wsProtocols(session.key), { headers: { cookie, origin } });
}

function startProc(body: unknown): Promise<{ id: string }> {
  return webRequest(base, 'POST', '/api/v1/vms/dev/procs', {
    headers: { cookie: session.cookie, 'x-banger-csrf': session.csrf, origin: base, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  }).then((r) => {
    assert.equal(r.status, 201, r.text);
    return r.json() as { id: string };
  });
}

test('attach over WebSocket: stdin up (binary), output down (binary), eof, then exit JSON and close 1000', async () => {
  const proc = await startProc({ shell: 'cat; echo bye >&2', stdin: 'pipe', mode: 'detach' });
  const ws = openWs(`/api/v1/vms/dev/procs/${proc.id}/attach`, base);
  const output: Buffer[] = [];
  const texts: string[] = [];
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
  ws.on('message', (data, isBinary) => {
    if (isBinary) output.push(data as Buffer);
    else texts.push(String(data));
  });
  await new Promise<void>((resolve, reject) => {
    ws.on('open', () => resolve());
    ws.on('error', reject);
  });
  // Sent at once, before the daemon's side of the attach is up: it waits, nothing is lost.
  const payload = randomBytes(200_000);
  ws.send(payload, { binary: true });
  ws.send(JSON.stringify({ type: 'eof' }));
  assert.equal(await closed, 1000);
  const all = Buffer.concat(output);
  assert.ok(all.subarray(0, payload.length).equals(payload), 'stdin echoed back unchanged');
  assert.equal(all.subarray(payload.length).toString(), 'bye\n');
  assert.equal(texts.length, 1);
  const exit = JSON.parse(texts[0] as string) as { type: string; proc: { id: string; state: string; exitCode: number } };
  assert.equal(exit.type, 'exit');
  assert.equal(exit.proc.id, proc.id);
  assert.equal(exit.proc.exitCode, 0);
});

test('attach over WebSocket: an unknown process is the daemon’s error as a message, then close 1011', async () => {
  const direct = await webRequest(base, 'GET', '/api/v1/vms/dev/procs/p-0000000000', { headers: { cookie: session.cookie } });
  const expected = (direct.json() as { error: { code: string; message: string } }).error;
  const ws = openWs('/api/v1/vms/dev/procs/p-0000000000/attach', base);
  const texts: string[] = [];
  ws.on('message', (d) => texts.push(String(d)));
  const code = await new Promise<number>((resolve) => ws.on('close', (c) => resolve(c)));
  assert.equal(code, 1011);
  const msg = JSON.parse(texts[0] as string) as { type: string; error: { code: string } };
  assert.equal(msg.type, 'error');
  assert.deepEqual(msg.error, { code: expected.code, message: expected.message });
});

test('WebSocket upgrades: a foreign or missing Origin, no session, or a foreign Host are refused before anything is attached', async () => {
  const proc = await startProc({ shell: 'sleep 30', mode: 'detach' });
  const path = `/api/v1/vms/dev/procs/${proc.id}/attach`;
  const statusOf = (ws: WebSocket) =>
    new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => resolve(101));
      ws.on('error', () => {});
    });
  assert.equal(await statusOf(openWs(path, 'http://evil.example')), 403);
  assert.equal(await statusOf(openWs(path, 'null')), 403);
  assert.equal(await statusOf(openWs(path, base, 'banger_session=forged')), 403);
  const rebound = new WebSocket(`ws://${new URL(base).host}${path}`, wsProtocols(session.key), {
    headers: { cookie: session.cookie, origin: base, host: `evil.example:${new URL(base).port}` },
  });
  assert.equal(await statusOf(rebound), 421);
  // The refused attaches never reached the process: it has no attach writer and still runs.
  const shown = await webRequest(base, 'GET', `/api/v1/vms/dev/procs/${proc.id}`, { headers: { cookie: session.cookie } });
  assert.equal((shown.json() as { state: string }).state, 'running');
});

test('static: the built UI is dist/web; without it, a page says the UI was not built and the API still answers', async () => {
  assert.equal(DEFAULT_STATIC_DIR, `${join(ROOT, 'dist', 'web')}/`);
  const bare = await WebServer.start({
    listenAddr: '127.0.0.1:0',
    allowRemote: false,
    socketPath: join(dir, 'bangerd.sock'),
    clock: systemClock,
    log: pino({ level: 'silent' }),
    staticDir: join(dir, 'missing-web'),
  });
  try {
    const b = bare.baseUrl.replace(/\/$/, '');
    const { cookie } = await webLogin(bare.issueToken().url);
    const page = await webRequest(b, 'GET', '/', { headers: { cookie } });
    assert.equal(page.status, 200);
    assert.match(page.text, /not built/);
    assert.equal(page.headers['content-security-policy'], SECURITY_HEADERS['content-security-policy']);
    assert.equal((await webRequest(b, 'GET', '/assets/app.js', { headers: { cookie } })).status, 404);
    const api = await webRequest(b, 'GET', '/api/v1/vms/dev/procs', { headers: { cookie } });
    assert.equal(api.status, 200, api.text);
  } finally {
    await bare.close();
  }
});

test('attach over WebSocket: a text message that is not a known control message is an error and close 1011; the process keeps running', async () => {
  const proc = await startProc({ shell: 'sleep 30', mode: 'detach' });
  for (const bad of ['not json', JSON.stringify({ type: 'resize', rows: 'x', cols: 1 }), JSON.stringify({ type: 'exec', argv: ['id'] })]) {
    const ws = openWs(`/api/v1/vms/dev/procs/${proc.id}/attach`, base);
    const texts: string[] = [];
    ws.on('message', (d, isBinary) => {
      if (!isBinary) texts.push(String(d));
    });
    ws.on('open', () => ws.send(bad));
    const code = await new Promise<number>((resolve) => ws.on('close', (c) => resolve(c)));
    assert.equal(code, 1011, bad);
    assert.equal((JSON.parse(texts[0] as string) as { error: { code: string } }).error.code, 'bad_request');
  }
  const shown = await webRequest(base, 'GET', `/api/v1/vms/dev/procs/${proc.id}`, { headers: { cookie: session.cookie } });
  assert.equal((shown.json() as { state: string }).state, 'running', 'closing the WebSocket detached; the process was not killed');
  assert.equal(guest.started.filter((s) => s.argv?.[0] === 'id').length, 0);
});
