import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import {
  allowedHosts,
  assetPath,
  checkListenAllowed,
  hostAllowed,
  isLoopback,
  keyFromProtocols,
  keyMatches,
  MAX_SESSIONS,
  MAX_TOKENS,
  originAllowed,
  parseCookies,
  parseListenAddr,
  SESSION_COOKIE,
  type Session,
  sessionCookie,
  stateChangeRefusal,
  TOKEN_TTL_MS,
  upgradeRefusal,
  urlHost,
  WebAuth,
} from '../../src/daemon/web/checks.js';

/** A clock the test moves by hand. */
function manualClock(start = Date.parse('2026-01-01T00:00:00Z')) {
  let now = start;
  return { now: () => new Date(now), advance: (ms: number) => (now += ms) };
}

const loopback = allowedHosts({ host: '127.0.0.1', port: 42070 }, false);
const session: Session = { id: 'a'.repeat(64), csrf: 'c'.repeat(64), key: 'b'.repeat(64), createdAt: new Date(0) };

test('Host allowlist: the three loopback names at the bound port, nothing else (DNS rebinding)', () => {
  for (const h of ['127.0.0.1:42070', 'localhost:42070', '[::1]:42070', 'LOCALHOST:42070']) assert.equal(hostAllowed(h, loopback), true, h);
  for (const h of [undefined, '', 'evil.example:42070', '127.0.0.1', '127.0.0.1:42071', 'localhost', '127.0.0.2:42070', 'localhost.:42070', '0.0.0.0:42070']) {
    assert.equal(hostAllowed(h, loopback), false, String(h));
  }
  // A remote listener (allowed) adds its own host:port; a loopback one adds nothing new.
  const remote = allowedHosts({ host: '10.0.0.5', port: 8080 }, true);
  assert.deepEqual([...remote].sort(), ['10.0.0.5:8080', '127.0.0.1:8080', '[::1]:8080', 'localhost:8080']);
  assert.equal(allowedHosts({ host: '::1', port: 1 }, false).has('[::1]:1'), true);
});

test('Origin must be exactly http://<allowed host>', () => {
  assert.equal(originAllowed('http://127.0.0.1:42070', loopback), true);
  assert.equal(originAllowed('http://localhost:42070', loopback), true);
  for (const o of [undefined, 'null', 'https://127.0.0.1:42070', 'http://127.0.0.1:42070/', 'http://evil.example', 'http://127.0.0.1:42071', 'file://']) {
    assert.equal(originAllowed(o, loopback), false, String(o));
  }
});

test('state-changing methods need the session CSRF token, and an Origin of ours when one is sent', () => {
  const ok = { csrf: session.csrf, origin: 'http://127.0.0.1:42070' };
  for (const method of ['GET', 'HEAD'])
    assert.equal(stateChangeRefusal({ method, csrf: undefined, origin: 'http://evil.example' }, session, loopback), undefined);
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'FOO', undefined]) {
    assert.equal(stateChangeRefusal({ method, ...ok }, session, loopback), undefined, String(method));
    assert.match(stateChangeRefusal({ method, csrf: undefined, origin: ok.origin }, session, loopback) ?? '', /x-banger-csrf/);
    assert.match(stateChangeRefusal({ method, csrf: 'c'.repeat(63), origin: ok.origin }, session, loopback) ?? '', /x-banger-csrf/);
    assert.match(stateChangeRefusal({ method, csrf: `${'c'.repeat(63)}d`, origin: ok.origin }, session, loopback) ?? '', /x-banger-csrf/);
    assert.match(stateChangeRefusal({ method, csrf: session.csrf, origin: 'http://evil.example' }, session, loopback) ?? '', /origin/);
  }
  // No Origin header (a non-browser client with the token): allowed.
  assert.equal(stateChangeRefusal({ method: 'POST', csrf: session.csrf, origin: undefined }, session, loopback), undefined);
});

test('WebSocket upgrades need a session and our Origin (a missing Origin is refused)', () => {
  assert.equal(upgradeRefusal(session, 'http://localhost:42070', loopback, 'b'.repeat(64)), undefined);
  // The cookie's session without the page key (a page on another port of 127.0.0.1 has the cookie only).
  assert.match(upgradeRefusal(session, 'http://localhost:42070', loopback) ?? '', /page key/);
  assert.match(upgradeRefusal(session, 'http://localhost:42070', loopback, 'c'.repeat(64)) ?? '', /page key/);
  // A key of the right length in characters but not in bytes (a non-ASCII one) is refused, never a throw.
  assert.match(upgradeRefusal(session, 'http://localhost:42070', loopback, `${'b'.repeat(63)}\u00e9`) ?? '', /page key/);
  assert.equal(keyMatches(session, `${'b'.repeat(63)}\u00e9`), false);
  assert.equal(keyMatches(session, 'B'.repeat(64)), false);
  assert.equal(keyFromProtocols('banger, banger.key.abc'), 'abc');
  assert.equal(keyFromProtocols('banger'), undefined);
  assert.match(upgradeRefusal(undefined, 'http://localhost:42070', loopback) ?? '', /session/);
  assert.match(upgradeRefusal(session, undefined, loopback) ?? '', /origin/);
  assert.match(upgradeRefusal(session, 'http://evil.example', loopback) ?? '', /origin/);
});

test('cookies: parsed, first value wins, bounded; the session cookie is HttpOnly, SameSite=Strict, Path=/, never Secure', () => {
  const c = parseCookies(`x=1; ${SESSION_COOKIE}=abc ; ${SESSION_COOKIE}=second; junk; =v`);
  assert.equal(c.get('x'), '1');
  assert.equal(c.get(SESSION_COOKIE), 'abc');
  assert.equal(c.size, 2);
  assert.equal(parseCookies(Array.from({ length: 500 }, (_, i) => `k${i}=v`).join('; ')).size, 50);
  assert.equal(parseCookies(undefined).size, 0);
  assert.equal(sessionCookie('ID'), `${SESSION_COOKIE}=ID; HttpOnly; SameSite=Strict; Path=/`);
});

test('asset paths: no .., no dot files, no escapes, known types only', () => {
  assert.deepEqual(assetPath('/assets/app.js'), { rel: 'app.js', contentType: 'text/javascript; charset=utf-8' });
  assert.deepEqual(assetPath('/assets/fonts/x.woff2'), { rel: 'fonts/x.woff2', contentType: 'font/woff2' });
  for (const p of [
    '/assets/../index.html',
    '/assets/..',
    '/assets/a/../../etc/passwd.txt',
    '/assets/%2e%2e/x.js',
    '/assets/.hidden.js',
    '/assets/',
    '/assets/a//b.js',
    '/assets/a\\..\\b.js',
    '/assets/app',
    '/assets/app.exe',
    '/assets/a/b/c/d/e.js',
    '/index.html',
  ]) {
    assert.equal(assetPath(p), undefined, p);
  }
});

test('listen address: loopback only unless web_allow_remote', () => {
  assert.deepEqual(parseListenAddr('127.0.0.1:0'), { host: '127.0.0.1', port: 0 });
  assert.deepEqual(parseListenAddr('[::1]:42070'), { host: '::1', port: 42070 });
  assert.throws(() => parseListenAddr('localhost:1'), BangerError);
  for (const h of ['127.0.0.1', '127.1.2.3', '::1']) assert.equal(isLoopback(h), true, h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '::ffff:127.0.0.1', '128.0.0.1']) assert.equal(isLoopback(h), false, h);
  assert.throws(
    () => checkListenAllowed({ host: '0.0.0.0', port: 42070 }, false),
    (e: unknown) => e instanceof BangerError && e.code === 'invalid_config' && /web_allow_remote/.test(e.fix ?? ''),
  );
  checkListenAllowed({ host: '0.0.0.0', port: 42070 }, true);
  checkListenAllowed({ host: '127.0.0.1', port: 42070 }, false);
  // URLs name a reachable host: a wildcard listener is reached on loopback, IPv6 in brackets.
  assert.equal(urlHost('0.0.0.0'), '127.0.0.1');
  assert.equal(urlHost('::'), '[::1]');
  assert.equal(urlHost('::1'), '[::1]');
  assert.equal(urlHost('10.0.0.5'), '10.0.0.5');
});

test('tokens: single use, expire after TOKEN_TTL_MS, bounded; sessions come only from a redeemed token', () => {
  const clock = manualClock();
  const auth = new WebAuth(clock);
  const a = auth.issueToken();
  assert.match(a.token, /^[0-9a-f]{64}$/);
  assert.equal(a.expiresAt.getTime() - clock.now().getTime(), TOKEN_TTL_MS);
  const s = auth.redeem(a.token);
  assert.ok(s);
  assert.match(s.id, /^[0-9a-f]{64}$/);
  assert.match(s.csrf, /^[0-9a-f]{64}$/);
  assert.notEqual(s.id, s.csrf);
  assert.equal(auth.redeem(a.token), undefined, 'a token works once');
  assert.equal(auth.session(`${SESSION_COOKIE}=${s.id}`)?.csrf, s.csrf);
  assert.equal(auth.session(`${SESSION_COOKIE}=${s.csrf}`), undefined, 'the CSRF token is not a session id');
  assert.equal(auth.session(undefined), undefined);

  const b = auth.issueToken();
  clock.advance(TOKEN_TTL_MS - 1);
  const c = auth.issueToken();
  assert.ok(auth.redeem(b.token), 'valid until its last millisecond');
  clock.advance(TOKEN_TTL_MS);
  assert.equal(auth.redeem(c.token), undefined, 'expired');
  assert.equal(auth.redeem(c.token), undefined);
  for (const bad of [undefined, null, '', 'x', `${'A'.repeat(64)}`, a.token.toUpperCase()]) assert.equal(auth.redeem(bad), undefined, String(bad));

  // Bounded: the oldest unredeemed token goes first.
  const first = auth.issueToken();
  const rest = Array.from({ length: MAX_TOKENS }, () => auth.issueToken());
  assert.equal(auth.redeem(first.token), undefined);
  assert.ok(auth.redeem(rest.at(-1)?.token));

  const sessions = Array.from({ length: MAX_SESSIONS + 1 }, () => auth.redeem(auth.issueToken().token) as Session);
  assert.equal(auth.session(`${SESSION_COOKIE}=${sessions[0]?.id}`), undefined, 'the oldest session went');
  assert.ok(auth.session(`${SESSION_COOKIE}=${sessions.at(-1)?.id}`));
});
