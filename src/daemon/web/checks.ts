/**
 * The web UI's request checks (docs/web.md, docs/security.md "Web UI"): pure, no sockets. Which
 * Host headers are ours (DNS rebinding), which requests may change state (CSRF token + Origin),
 * which WebSocket upgrades are allowed (session + Origin), cookies, asset paths, and the one-use
 * tokens and sessions, on an injected clock.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { BangerError } from '../../api/errors.js';
import type { Clock } from '../../util/op-context.js';

export const SESSION_COOKIE = 'banger_session';
export const CSRF_HEADER = 'x-banger-csrf';
/** How long a token from `POST /v1/web/token` (banger ui) stays redeemable. */
export const TOKEN_TTL_MS = 120_000;
/** Unredeemed tokens and sessions kept at most (the oldest go first): memory stays bounded. */
export const MAX_TOKENS = 64;
export const MAX_SESSIONS = 64;

/** Every response, whatever it is. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

export interface ListenAddr {
  host: string;
  port: number;
}

/** "IP:PORT" or "[IPv6]:PORT" → its parts (config validated the shape). */
export function parseListenAddr(addr: string): ListenAddr {
  const m = /^(.*):(\d{1,5})$/.exec(addr);
  const host = (m?.[1] ?? '').replace(/^\[|\]$/g, '');
  if (!m || isIP(host) === 0) throw new BangerError('invalid_config', `web_listen_addr ${JSON.stringify(addr)} is not "IP:PORT"`);
  return { host, port: Number(m[2]) };
}

export function isLoopback(host: string): boolean {
  return host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** A non-loopback listener is refused unless the configuration says so explicitly. */
export function checkListenAllowed(addr: ListenAddr, allowRemote: boolean): void {
  if (isLoopback(addr.host) || allowRemote) return;
  throw new BangerError('invalid_config', `web_listen_addr ${addr.host} is not a loopback address: the web UI would be reachable from other machines`, {
    fix: 'set web_listen_addr = "127.0.0.1:42070" (or "" to turn the web UI off), or set web_allow_remote = true if you really mean it',
  });
}

/**
 * The host part of the UI's URLs: a wildcard listener (0.0.0.0, ::) is reached on loopback here;
 * remote browsers must name the configured address, so web_allow_remote wants a specific one.
 */
export function urlHost(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** The Host headers we answer to, for the port actually bound (port 0 is resolved by then). */
export function allowedHosts(bound: ListenAddr, allowRemote: boolean): Set<string> {
  const hosts = new Set([`127.0.0.1:${bound.port}`, `localhost:${bound.port}`, `[::1]:${bound.port}`]);
  if (allowRemote || isLoopback(bound.host)) hosts.add(hostPort(bound.host, bound.port));
  return hosts;
}

/** DNS rebinding: a name that resolves to us but is not one of our hosts is refused (421). */
export function hostAllowed(hostHeader: string | undefined, allowed: ReadonlySet<string>): boolean {
  return hostHeader !== undefined && allowed.has(hostHeader.toLowerCase());
}

/** Origin must be exactly `http://<one of our hosts>`. */
export function originAllowed(origin: string | undefined, allowed: ReadonlySet<string>): boolean {
  if (origin === undefined || !origin.startsWith('http://')) return false;
  return allowed.has(origin.slice('http://'.length).toLowerCase());
}

export function isStateChanging(method: string | undefined): boolean {
  return method !== 'GET' && method !== 'HEAD';
}

/** Same-length constant-time string comparison (the CSRF token is a secret). */
function sameSecret(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * A state-changing request (any method but GET/HEAD) needs the session's CSRF token in
 * `x-banger-csrf` and, when the browser sent an Origin, one of ours. Undefined = allowed,
 * else why not.
 */
export function stateChangeRefusal(
  req: { method: string | undefined; csrf: string | undefined; origin: string | undefined },
  session: Session,
  allowed: ReadonlySet<string>,
): string | undefined {
  if (!isStateChanging(req.method)) return undefined;
  if (req.csrf === undefined || !sameSecret(req.csrf, session.csrf)) return `a ${req.method} needs the session's ${CSRF_HEADER} header`;
  if (req.origin !== undefined && !originAllowed(req.origin, allowed)) return `origin ${JSON.stringify(req.origin)} is not this UI`;
  return undefined;
}

/** A WebSocket upgrade needs a session and an Origin of ours (browsers always send one). */
export const KEY_HEADER = 'x-banger-key';
export const KEY_PROTOCOL_PREFIX = 'banger.key.';
/** The subprotocol a WebSocket of the UI speaks (offered beside its key, and chosen). */
export const UI_PROTOCOL = 'banger';

/** True when `presented` is the session's page key (compared in constant time). */
export function keyMatches(session: Session, presented: string | null | undefined): boolean {
  // Only the key's own shape reaches the comparison: a non-ASCII character makes more bytes than
  // characters, and timingSafeEqual throws on unequal lengths.
  if (typeof presented !== 'string' || !/^[0-9a-f]{64}$/.test(presented)) return false;
  return timingSafeEqual(Buffer.from(presented, 'ascii'), Buffer.from(session.key, 'ascii'));
}

/** The key a WebSocket upgrade offers among its subprotocols (`Sec-WebSocket-Protocol`), if any. */
export function keyFromProtocols(header: string | undefined): string | undefined {
  for (const p of (header ?? '').slice(0, 1024).split(',')) {
    const t = p.trim();
    if (t.startsWith(KEY_PROTOCOL_PREFIX)) return t.slice(KEY_PROTOCOL_PREFIX.length);
  }
  return undefined;
}

export function upgradeRefusal(
  session: Session | undefined,
  origin: string | undefined,
  allowed: ReadonlySet<string>,
  key?: string | undefined,
): string | undefined {
  if (!session) return 'no valid session: run `banger ui`';
  if (!originAllowed(origin, allowed)) return `origin ${JSON.stringify(origin ?? null)} is not this UI`;
  if (!keyMatches(session, key)) return 'no valid page key: open the UI with `banger ui`';
  return undefined;
}

/** Cookie header → name/value map; at most 50 pairs and 4 KiB read. */
export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!header) return out;
  for (const raw of header.slice(0, 4096).split(';').slice(0, 50)) {
    const part = raw.trim();
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    if (!out.has(name)) out.set(name, part.slice(eq + 1).trim());
  }
  return out;
}

export function sessionCookie(id: string): string {
  return `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/`;
}

const ASSET_SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;
const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * `/assets/<a>/<b>` (the raw request path) → the relative file name under the assets directory
 * and its content type, or undefined: no `..`, no dot files, no percent-escapes, no backslashes,
 * at most 4 segments, only known extensions (fixed content types).
 */
export function assetPath(rawPath: string): { rel: string; contentType: string } | undefined {
  if (!rawPath.startsWith('/assets/')) return undefined;
  const segments = rawPath.slice('/assets/'.length).split('/');
  if (segments.length > 4 || !segments.every((s) => ASSET_SEGMENT.test(s))) return undefined;
  const last = segments[segments.length - 1] as string;
  const dot = last.lastIndexOf('.');
  const contentType = dot > 0 ? CONTENT_TYPES[last.slice(dot)] : undefined;
  if (!contentType) return undefined;
  return { rel: segments.join('/'), contentType };
}

export interface Session {
  id: string;
  csrf: string;
  /**
   * The page's key: browsers send a 127.0.0.1 cookie to every port of 127.0.0.1, so a page another
   * local user serves on another port would ride on the cookie alone. The key reaches the UI's page
   * only in the fragment of the URL the /auth page navigates to (never sent to a server; readable
   * only by this origin's script) and comes back in a header (`x-banger-key`), an EventSource URL's
   * `key=`, or a WebSocket subprotocol (`banger.key.<key>`): a foreign origin can read none of them.
   */
  key: string;
  createdAt: Date;
}

/** One-use tokens (`banger ui`) and the sessions they open; in memory (a daemon restart = run `banger ui`). */
export class WebAuth {
  private readonly tokens = new Map<string, Date>();
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly clock: Clock,
    private readonly random: (bytes: number) => string = (n) => randomBytes(n).toString('hex'),
  ) {}

  issueToken(): { token: string; expiresAt: Date } {
    const now = this.clock.now();
    for (const [t, exp] of this.tokens) if (exp.getTime() <= now.getTime()) this.tokens.delete(t);
    while (this.tokens.size >= MAX_TOKENS) this.tokens.delete(this.tokens.keys().next().value as string);
    const token = this.random(32);
    const expiresAt = new Date(now.getTime() + TOKEN_TTL_MS);
    this.tokens.set(token, expiresAt);
    return { token, expiresAt };
  }

  /** A valid unused token → a new session; the token is spent whatever the outcome. */
  redeem(token: string | null | undefined): Session | undefined {
    if (!token || !/^[0-9a-f]{64}$/.test(token)) return undefined;
    const exp = this.tokens.get(token);
    this.tokens.delete(token);
    if (!exp || exp.getTime() <= this.clock.now().getTime()) return undefined;
    while (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value as string);
    const session: Session = { id: this.random(32), csrf: this.random(32), key: this.random(32), createdAt: this.clock.now() };
    this.sessions.set(session.id, session);
    return session;
  }

  session(cookieHeader: string | undefined): Session | undefined {
    const id = parseCookies(cookieHeader).get(SESSION_COOKIE);
    return id ? this.sessions.get(id) : undefined;
  }
}
