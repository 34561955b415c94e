/**
 * The web UI of a real bangerd (TestHome, `web_listen_addr = "127.0.0.1:0"`, loopback only, no
 * VM): authentication, the request checks (Host, CSRF, Origin, GET never changes state), the
 * headers, the bridge to the daemon's socket (SSE unchanged), `banger ui`, and the refusal of a
 * non-loopback listener. Refusals are checked on the daemon's state, not only on status codes.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';
import { SECURITY_HEADERS } from '../../src/daemon/web/checks.js';
import { pageKeyIn, webLogin, webRequest, wsProtocols } from '../helpers/web.js';
import { isAlive, raw, TestHome, waitFor } from './harness.js';

let home: TestHome;
let base: string;
let pid: number;

const noDisplay = { DISPLAY: '', WAYLAND_DISPLAY: '' };

async function tokenUrl(): Promise<string> {
  const out = await home.ok(['ui', '--url']);
  const url = out.trim();
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/auth\?token=[0-9a-f]{64}$/);
  return url;
}

async function operationCount(): Promise<number> {
  const r = await raw(home.socketPath, 'GET', '/v1/operations');
  return (r.body as { operations: unknown[] }).operations.length;
}

before(async () => {
  home = await TestHome.create('web_listen_addr = "127.0.0.1:0"\n');
  const s = await home.json<{ pid: number; webListenAddr: string | null }>(['daemon', 'status']);
  pid = s.pid;
  assert.match(String(s.webListenAddr), /^http:\/\/127\.0\.0\.1:\d+\/$/);
  base = String(s.webListenAddr).replace(/\/$/, '');
});

after(async () => {
  await home?.destroy();
});

test('`daemon status` shows the base URL (no token in it)', async () => {
  const out = await home.ok(['daemon', 'status']);
  assert.match(out, new RegExp(`^web:\\s+${base.replace(/\./g, '\\.')}/$`, 'm'));
  assert.doesNotMatch(out, /token/);
});

test('no session: 401 everywhere (JSON under /api, a page saying `banger ui` elsewhere), nothing proxied', async () => {
  const api = await webRequest(base, 'GET', '/api/v1/daemon');
  assert.equal(api.status, 401);
  assert.equal((api.json() as { error: { code: string } }).error.code, 'unauthorized');
  assert.equal(api.headers['cache-control'], 'no-store');
  const page = await webRequest(base, 'GET', '/vms/dev');
  assert.equal(page.status, 401);
  assert.match(page.text, /banger ui/);
  const forged = await webRequest(base, 'GET', '/api/session', { headers: { cookie: `banger_session=${'0'.repeat(64)}` } });
  assert.equal(forged.status, 401);
  // POST without a session changes nothing.
  const post = await webRequest(base, 'POST', '/api/v1/daemon/shutdown', { headers: { 'content-type': 'application/json' }, body: '{}' });
  assert.equal(post.status, 401);
  assert.ok(isAlive(pid));
});

test('token exchange: a page that navigates on + HttpOnly SameSite=Strict cookie (never Secure) → /api/session → csrf; the token works once', async () => {
  const url = await tokenUrl();
  const u = new URL(url);
  const r = await webRequest(base, 'GET', `${u.pathname}${u.search}`);
  // A page of the UI's origin that navigates on (not a redirect: a cross-site redirect chain would
  // lose the SameSite=Strict cookie), with the page key in the fragment it navigates to.
  assert.equal(r.status, 200);
  assert.equal(r.headers.location, undefined);
  const key = pageKeyIn(r.text);
  assert.ok(key, `the page key in the next URL's fragment: ${r.text}`);
  const setCookie = (r.headers['set-cookie'] as string[])[0] as string;
  assert.match(setCookie, /^banger_session=[0-9a-f]{64}; HttpOnly; SameSite=Strict; Path=\/$/);
  assert.doesNotMatch(setCookie, /Secure/i);
  const cookie = setCookie.split(';')[0] as string;
  // The cookie alone is what a page on another port of 127.0.0.1 would send: refused.
  const cookieOnly = await webRequest(base, 'GET', '/api/session', { headers: { cookie } });
  assert.equal(cookieOnly.status, 401);
  const s = await webRequest(base, 'GET', '/api/session', { headers: { cookie, 'x-banger-key': key } });
  assert.equal(s.status, 200);
  // Even with the CSRF token, the cookie alone changes nothing: the daemon stays up.
  const csrfToken = (s.json() as { csrf: string }).csrf;
  const noKey = await webRequest(base, 'POST', '/api/v1/daemon/shutdown', {
    headers: { cookie, 'x-banger-csrf': csrfToken, origin: base, 'content-type': 'application/json' },
    body: '{}',
  });
  assert.equal(noKey.status, 401);
  assert.equal((await raw(home.socketPath, 'GET', '/v1/daemon')).status, 200, 'the daemon still runs');
  const sse = await webRequest(base, 'GET', `/api/v1/operations?key=${'0'.repeat(64)}`, { headers: { cookie } });
  assert.equal(sse.status, 401, 'a wrong key= is refused');
  // A key that is 64 characters but not 64 bytes: refused, and the daemon does not fall over.
  const odd = await webRequest(base, 'GET', `/api/v1/vms?key=${'a'.repeat(63)}%C3%A9`, { headers: { cookie } });
  assert.equal(odd.status, 401);
  const oddHeader = await webRequest(base, 'GET', '/api/v1/vms', { headers: { cookie, 'x-banger-key': `${'a'.repeat(63)}\u00e9` } });
  assert.equal(oddHeader.status, 401);
  assert.equal((await raw(home.socketPath, 'GET', '/v1/daemon')).status, 200, 'the daemon still runs');
  // No service worker is ever served from the UI's origin; /auth clears what the origin stored.
  const sw = await webRequest(base, 'GET', '/assets/app.js', { headers: { cookie, 'service-worker': 'script' } });
  assert.equal(sw.status, 404);
  assert.equal(r.headers['clear-site-data'], '"storage"');
  assert.match((s.json() as { csrf: string }).csrf, /^[0-9a-f]{64}$/);
  assert.equal(s.headers['cache-control'], 'no-store');

  const again = await webRequest(base, 'GET', `${u.pathname}${u.search}`);
  assert.equal(again.status, 401, 'a used token is refused');
  assert.equal(again.headers['set-cookie'], undefined);
  const wrong = await webRequest(base, 'GET', `/auth?token=${'a'.repeat(64)}`);
  assert.equal(wrong.status, 401);
});

test('every response carries the CSP and the other headers; /api is no-store', async () => {
  const { cookie } = await webLogin(await tokenUrl());
  for (const [path, headers] of [
    ['/', { cookie }],
    ['/api/v1/daemon', { cookie }],
    ['/api/v1/daemon', {}],
    ['/auth?token=x', {}],
  ] as const) {
    const r = await webRequest(base, 'GET', path, { headers });
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) assert.equal(r.headers[k], v, `${path} ${k}`);
  }
  const api = await webRequest(base, 'GET', '/api/v1/daemon', { headers: { cookie } });
  assert.equal(api.status, 200);
  assert.equal((api.json() as { pid: number }).pid, pid, 'the bridge answers with the daemon itself');
  assert.equal(api.headers['cache-control'], 'no-store');
});

test('DNS rebinding: a foreign Host gets 421 and nothing else (a token sent with it is not spent)', async () => {
  const url = new URL(await tokenUrl());
  const { cookie } = await webLogin(await tokenUrl());
  const port = new URL(base).port;
  for (const host of [`evil.example:${port}`, `127.0.0.1.nip.io:${port}`, '127.0.0.1', `127.0.0.1:${Number(port) + 1}`]) {
    for (const path of ['/', '/api/session', '/api/v1/daemon', `${url.pathname}${url.search}`]) {
      const r = await webRequest(base, 'GET', path, { headers: { host, cookie } });
      assert.equal(r.status, 421, `${host} ${path}`);
      assert.doesNotMatch(r.text, /csrf|"pid"/);
    }
  }
  const shutdown = await webRequest(base, 'POST', '/api/v1/daemon/shutdown', { headers: { host: `evil.example:${port}`, cookie }, body: '{}' });
  assert.equal(shutdown.status, 421);
  assert.ok(isAlive(pid));
  // The token went through none of those requests: it still works.
  assert.equal((await webRequest(base, 'GET', `${url.pathname}${url.search}`)).status, 200);
  // localhost and [::1] are our names too.
  assert.equal((await webRequest(base, 'GET', '/api/session', { headers: { host: `localhost:${port}`, cookie } })).status, 200);
});

test('CSRF: a POST without the header, with a wrong one, or from a foreign Origin → 403 and nothing changed', async () => {
  const { cookie, csrf } = await webLogin(await tokenUrl());
  const before = await operationCount();
  const body = JSON.stringify({ name: 'webcsrf', from: '/nonexistent/kernel-dir' });
  const json = { cookie, 'content-type': 'application/json' };
  for (const headers of [
    json,
    { ...json, 'x-banger-csrf': 'f'.repeat(64) },
    { ...json, 'x-banger-csrf': csrf, origin: 'http://evil.example' },
    { ...json, 'x-banger-csrf': csrf, origin: 'null' },
  ]) {
    const r = await webRequest(base, 'POST', '/api/v1/kernels', { headers, body });
    assert.equal(r.status, 403, JSON.stringify(headers));
    assert.equal((r.json() as { error: { code: string } }).error.code, 'forbidden');
    const d = await webRequest(base, 'DELETE', '/api/v1/kernels/whatever', { headers });
    assert.equal(d.status, 403);
  }
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
    const r = await webRequest(base, method, '/api/v1/daemon/shutdown', { headers: json, body: '{}' });
    assert.equal(r.status, 403, method);
  }
  assert.equal(await operationCount(), before, 'no operation was started');
  assert.ok(isAlive(pid), 'the daemon was not shut down');
  assert.equal(home.daemonPids().length, 1);

  // With the header (and our Origin), the same request goes through: an operation exists.
  const ok = await webRequest(base, 'POST', '/api/v1/kernels', { headers: { ...json, 'x-banger-csrf': csrf, origin: base }, body });
  assert.equal(ok.status, 202, ok.text);
  assert.equal(await operationCount(), before + 1);
});

test('GET never changes state: a GET to a POST-only route is refused by the router and nothing runs', async () => {
  const { cookie } = await webLogin(await tokenUrl());
  const before = await operationCount();
  for (const path of ['/api/v1/daemon/shutdown', '/api/v1/kernels/pull', '/api/v1/vms/x/start', '/api/v1/daemon/shutdown?x=1']) {
    const r = await webRequest(base, 'GET', path, { headers: { cookie } });
    assert.ok(r.status === 400 || r.status === 404 || r.status === 405, `${path}: ${r.status}`);
  }
  const head = await webRequest(base, 'HEAD', '/api/v1/daemon/shutdown', { headers: { cookie } });
  assert.notEqual(head.status, 200);
  assert.equal(await operationCount(), before);
  assert.ok(isAlive(pid));
  // Only /api/session and /api/v1 are served under /api: the daemon's socket paths are not reachable otherwise.
  for (const path of ['/api/daemon', '/api/v2/daemon', '/api/v1/../../v1/daemon/shutdown', '/api']) {
    const r = await webRequest(base, 'GET', path, { headers: { cookie } });
    assert.notEqual(r.status, 200, path);
  }
});

test('WebSocket: a foreign Origin, no Origin, or no session is refused (403) before any attach', async () => {
  const { cookie, key } = await webLogin(await tokenUrl());
  const host = new URL(base).host;
  const statusOf = (headers: Record<string, string>, protocols = wsProtocols(key)) =>
    new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://${host}/api/v1/vms/dev/procs/p-0000000000/attach`, protocols, { headers });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => {
        ws.close();
        resolve(101);
      });
      ws.on('error', () => {});
    });
  assert.equal(await statusOf({ cookie, origin: 'http://evil.example' }), 403);
  assert.equal(await statusOf({ cookie, origin: `http://${host}.evil.example` }), 403);
  assert.equal(await statusOf({ cookie }), 403);
  assert.equal(await statusOf({ origin: base }), 403);
  // The cookie and Origin without the page key (another port's page has the cookie, not the key).
  assert.equal(await statusOf({ cookie, origin: base }, ['banger']), 403);
  assert.equal(await statusOf({ cookie, origin: base }, wsProtocols('0'.repeat(64))), 403);
  // With all three, the upgrade is accepted (the attach itself then fails: there is no such VM).
  assert.equal(await statusOf({ cookie, origin: base }), 101);
});

test('bridge: an operation’s SSE event stream is the daemon’s, byte for byte', async () => {
  const { cookie, csrf } = await webLogin(await tokenUrl());
  const started = await webRequest(base, 'POST', '/api/v1/kernels', {
    headers: { cookie, 'x-banger-csrf': csrf, 'content-type': 'application/json', 'x-banger-op': 'op-abc123' },
    body: JSON.stringify({ name: 'websse', from: '/nonexistent/kernel-dir' }),
  });
  assert.equal(started.status, 202, started.text);
  assert.equal(started.headers['x-banger-op'], 'op-abc123', 'the op id header goes both ways');
  const id = (started.json() as { operation: { id: string } }).operation.id;
  // The operation ends first: a stream of a finished operation is the same whenever it is read
  // (one of a running one would differ by the events still to come).
  for (let i = 0; ; i++) {
    const o = await raw(home.socketPath, 'GET', `/v1/operations/${id}`);
    if ((o.body as { state: string }).state !== 'running') break;
    assert.ok(i < 500, 'the operation ended');
    await new Promise((r) => setTimeout(r, 20));
  }
  const viaWeb = await webRequest(base, 'GET', `/api/v1/operations/${id}/events`, { headers: { cookie } });
  const direct = await raw(home.socketPath, 'GET', `/v1/operations/${id}/events`);
  assert.equal(viaWeb.status, 200);
  assert.equal(viaWeb.headers['content-type'], 'text/event-stream');
  assert.match(viaWeb.text, /^data: /);
  assert.match(viaWeb.text, /"type":"done"/);
  assert.equal(viaWeb.text, String(direct.body));
});

test('`banger ui` without a display prints the link; with the UI off the token route says so', async () => {
  const r = await home.banger(['ui'], 30_000, noDisplay);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout.trim(), /^http:\/\/127\.0\.0\.1:\d+\/auth\?token=[0-9a-f]{64}$/);
  assert.match(r.stderr, /no browser/);

  const off = await TestHome.create('web_listen_addr = ""\n');
  try {
    const s = await off.json<{ webListenAddr: string | null }>(['daemon', 'status']);
    assert.equal(s.webListenAddr, null);
    assert.match(await off.ok(['daemon', 'status']), /^web:\s+not serving$/m);
    const t = await raw(off.socketPath, 'POST', '/v1/web/token', '{}');
    assert.equal(t.status, 503);
    assert.equal((t.body as { error: { code: string } }).error.code, 'unavailable');
    const ui = await off.banger(['ui', '--url']);
    assert.equal(ui.code, 1);
    assert.match(ui.stderr, /web UI is not serving/);
  } finally {
    await off.destroy();
  }
});

test('`banger ui` with xdg-open and a display: the link reaches the browser in a private file, never in argv', async () => {
  const bin = await mkdtemp(join(tmpdir(), 'banger-xdg-'));
  try {
    const record = join(bin, 'record');
    // A FAKE xdg-open: records its arguments, the mode of what it was given and its content.
    writeFileSync(
      join(bin, 'xdg-open'),
      `#!/bin/sh\nprintf '%s\\n' "$@" > ${record}.args\nstat -c %a "$1" > ${record}.mode\nstat -c %a "$(dirname "$1")" > ${record}.dirmode\ncat "$1" > ${record}.page\n`,
      { mode: 0o755 },
    );
    const r = await home.banger(['ui'], 30_000, { DISPLAY: ':99', PATH: `${bin}:${process.env.PATH}` });
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, /token=/, 'the link is not printed');
    await waitFor('the fake xdg-open to run', () => existsSync(`${record}.page`) && readFileSync(`${record}.page`, 'utf8').includes('</title>'));
    const args = readFileSync(`${record}.args`, 'utf8').trim().split('\n');
    assert.equal(args.length, 1);
    assert.doesNotMatch(args[0] as string, /token/, 'argv carries no token');
    assert.equal(readFileSync(`${record}.mode`, 'utf8').trim(), '600');
    assert.equal(readFileSync(`${record}.dirmode`, 'utf8').trim(), '700');
    const link = /url=([^"]+)"/.exec(readFileSync(`${record}.page`, 'utf8'))?.[1] ?? '';
    assert.match(link, /^http:\/\/127\.0\.0\.1:\d+\/auth\?token=[0-9a-f]{64}$/);
    const u = new URL(link);
    assert.equal((await webRequest(base, 'GET', `${u.pathname}${u.search}`)).status, 200, 'the link in the file works');
    rmSync(dirname(args[0] as string), { recursive: true, force: true });
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
});

test('a non-loopback web_listen_addr without web_allow_remote: the daemon refuses to start, naming the fix', async () => {
  const remote = await TestHome.create('web_listen_addr = "0.0.0.0:0"\n');
  try {
    const r = await remote.banger(['daemon', 'status'], 60_000);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not a loopback address/);
    assert.match(r.stderr, /web_allow_remote/);
    assert.deepEqual(remote.daemonPids(), [], 'no daemon runs');
  } finally {
    await remote.destroy();
  }
});

test('with the CSRF header, a state change goes through: the daemon shuts down (last test)', async () => {
  const { cookie, csrf } = await webLogin(await tokenUrl());
  const r = await webRequest(base, 'POST', '/api/v1/daemon/shutdown', {
    headers: { cookie, 'x-banger-csrf': csrf, origin: base, 'content-type': 'application/json' },
    body: '{}',
  });
  assert.equal(r.status, 200, r.text);
  await waitFor('the daemon to stop', () => !isAlive(pid), 30_000);
});
