/**
 * The web UI's HTTP server (docs/web.md): checks every request (Host, session, CSRF/Origin:
 * checks.ts), serves the built UI from dist/web, and bridges `/api/v1/*` to the daemon's own
 * Unix socket as `/v1/*` (one code path into the services, streamed both ways) and the browser
 * terminal's WebSocket to the daemon's attach (attach-bridge.ts).
 */
import { constants, type Stats } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import { BangerError } from '../../api/errors.js';
import type { Clock } from '../../util/op-context.js';
import { bridgeAttach } from './attach-bridge.js';
import {
  allowedHosts,
  assetPath,
  CSRF_HEADER,
  checkListenAllowed,
  hostAllowed,
  KEY_HEADER,
  keyFromProtocols,
  keyMatches,
  parseListenAddr,
  SECURITY_HEADERS,
  type Session,
  sessionCookie,
  stateChangeRefusal,
  UI_PROTOCOL,
  upgradeRefusal,
  urlHost,
  WebAuth,
} from './checks.js';

/** Connections the UI's port holds at most (other local users can connect; a browser needs a few dozen). */
const MAX_CONNECTIONS = 256;

/** dist/web, fixed at build: this file is dist/src/daemon/web/server.js. */
export const DEFAULT_STATIC_DIR = fileURLToPath(new URL('../../../web/', import.meta.url));
const MAX_STATIC_BYTES = 32 * 1024 * 1024;
const ATTACH_PATH = /^\/api(\/v1\/vms\/[^/]+\/procs\/[^/]+)\/attach$/;
/** Request headers the bridge forwards to the daemon (never the cookie). */
const FORWARDED_REQUEST_HEADERS = ['content-type', 'content-length', 'x-banger-op', 'accept'];
/** Response headers the bridge passes back. */
const FORWARDED_RESPONSE_HEADERS = ['content-type', 'content-length', 'x-banger-op', 'content-disposition', 'trailer'];

export interface WebServerOptions {
  listenAddr: string;
  allowRemote: boolean;
  /** The daemon's own Unix socket: the bridge's only way into the services. */
  socketPath: string;
  clock: Clock;
  log: Logger;
  staticDir?: string;
}

const NOT_BUILT_PAGE = `<!doctype html><meta charset="utf-8"><title>banger</title>
<h1>banger web UI not built</h1>
<p>This banger was built without its web UI (dist/web is missing): run <code>npm run build</code>. The API under /api still works.</p>`;
const LOGIN_PAGE = `<!doctype html><meta charset="utf-8"><title>banger</title>
<h1>Not signed in</h1><p>Run <code>banger ui</code> in a terminal: it opens this page with a one-time link.</p>`;
const BAD_TOKEN_PAGE = `<!doctype html><meta charset="utf-8"><title>banger</title>
<h1>This link is used or expired</h1><p>Run <code>banger ui</code> again for a fresh one (a link works once, for two minutes).</p>`;

export class WebServer {
  readonly auth: WebAuth;
  // The UI offers `banger` beside its key; `banger` is chosen (the key is never echoed back).
  private readonly wss = new WebSocketServer({
    noServer: true,
    maxPayload: 1024 * 1024,
    handleProtocols: (protocols) => (protocols.has(UI_PROTOCOL) ? UI_PROTOCOL : false),
  });
  private allowed = new Set<string>();
  private bound?: { host: string; port: number };

  private constructor(
    private readonly opts: WebServerOptions,
    private readonly server: Server,
  ) {
    this.auth = new WebAuth(opts.clock);
  }

  /** Refuses a non-loopback address unless allowed (a BangerError), then binds. */
  static async start(opts: WebServerOptions): Promise<WebServer> {
    const addr = parseListenAddr(opts.listenAddr);
    checkListenAllowed(addr, opts.allowRemote);
    const server = createServer();
    const web = new WebServer(opts, server);
    // A request that throws ends only itself: never an unhandled rejection that stops the daemon.
    server.on('request', (req, res) =>
      web.handle(req, res).catch((e: unknown) => {
        opts.log.warn({ err: e, path: (req.url ?? '').split('?')[0] }, 'web request failed');
        res.destroy();
      }),
    );
    server.on('upgrade', (req, socket, head) => {
      try {
        web.handleUpgrade(req, socket, head);
      } catch (e) {
        opts.log.warn({ err: e, path: (req.url ?? '').split('?')[0] }, 'web upgrade failed');
        socket.destroy();
      }
    });
    server.requestTimeout = 0; // uploads through the bridge last as long as their data
    server.headersTimeout = 30_000;
    server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(addr.port, addr.host, () => resolve());
    });
    const port = (server.address() as AddressInfo).port;
    web.bound = { host: addr.host, port };
    web.allowed = allowedHosts(web.bound, opts.allowRemote);
    return web;
  }

  /** e.g. "http://127.0.0.1:42070/" */
  get baseUrl(): string {
    const b = this.bound as { host: string; port: number };
    return `http://${urlHost(b.host)}:${b.port}/`;
  }

  issueToken(): { url: string; expiresAt: string } {
    const t = this.auth.issueToken();
    return { url: `${this.baseUrl}auth?token=${t.token}`, expiresAt: t.expiresAt.toISOString() };
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    // Answers in flight (e.g. the UI's own "shut the daemon down") get a moment to reach the browser.
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      setTimeout(() => this.server.closeAllConnections(), 500).unref();
    });
  }

  /** A refusal before any session: answered, then the connection closes (a slow body is never drained). */
  private refuseAndClose(res: ServerResponse, status: number, text: string): undefined {
    this.send(res, status, text, 'text/plain; charset=utf-8', { connection: 'close' });
    res.once('finish', () => res.socket?.destroy());
  }

  private send(res: ServerResponse, status: number, body: string, contentType: string, extra: Record<string, string> = {}): undefined {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...extra });
    res.end(body);
  }

  private sendApiError(res: ServerResponse, err: BangerError): undefined {
    this.send(res, err.status, JSON.stringify({ error: err.toBody() }), 'application/json', { 'cache-control': 'no-store' });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rawPath = (req.url ?? '/').split('?')[0] as string;
    const isApi = rawPath === '/api' || rawPath.startsWith('/api/');
    // DNS rebinding: a foreign name pointing at us gets nothing, not even the login page.
    if (!hostAllowed(req.headers.host, this.allowed)) {
      return this.refuseAndClose(res, 421, 'misdirected request: this host name is not the banger UI\n');
    }
    if (rawPath === '/auth' && req.method === 'GET') return this.redeem(req, res);
    // Service workers: none is ever served from this origin (a worker registered here by whoever
    // held the port before would see every request of the page; its update check gets a 404).
    if (header(req, 'service-worker') !== undefined) return this.refuseAndClose(res, 404, 'no service worker here\n');
    const session = this.auth.session(req.headers.cookie);
    if (!session) {
      res.setHeader('connection', 'close');
      req.resume();
      if (isApi) return this.sendApiError(res, new BangerError('unauthorized', 'no valid web session', { fix: 'run `banger ui`' }));
      return this.send(res, 401, LOGIN_PAGE, 'text/html; charset=utf-8');
    }
    const refusal = stateChangeRefusal({ method: req.method, csrf: header(req, CSRF_HEADER), origin: header(req, 'origin') }, session, this.allowed);
    if (refusal) {
      req.resume();
      const err = new BangerError('forbidden', refusal, { fix: 'reload the page' });
      return isApi ? this.sendApiError(res, err) : this.send(res, 403, `${refusal}\n`, 'text/plain; charset=utf-8');
    }
    if (isApi) {
      // The page's key (see Session.key): a header, or `key=` on a GET (EventSource sets no headers).
      const url = new URL(req.url ?? '/', 'http://x');
      const presented = header(req, KEY_HEADER) ?? (req.method === 'GET' ? url.searchParams.get('key') : null);
      if (!keyMatches(session, presented)) {
        req.resume();
        return this.sendApiError(
          res,
          new BangerError('unauthorized', 'this page has no valid key for the web session', { fix: 'open the UI with `banger ui`' }),
        );
      }
      return this.api(req, res, session);
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      req.resume();
      return this.send(res, 405, 'method not allowed\n', 'text/plain; charset=utf-8', { allow: 'GET, HEAD' });
    }
    if (rawPath.startsWith('/assets/')) {
      const asset = assetPath(rawPath);
      if (!asset) return this.send(res, 404, 'not found\n', 'text/plain; charset=utf-8');
      return this.serveFile(req, res, `assets/${asset.rel}`, asset.contentType, 'public, max-age=300');
    }
    return this.serveFile(req, res, 'index.html', 'text/html; charset=utf-8', 'no-store');
  }

  private redeem(req: IncomingMessage, res: ServerResponse): undefined {
    const token = new URL(req.url ?? '/', 'http://x').searchParams.get('token');
    const session = this.auth.redeem(token);
    if (!session) return this.send(res, 401, BAD_TOKEN_PAGE, 'text/html; charset=utf-8', { 'cache-control': 'no-store' });
    // A page of this origin navigates on to the UI, not a redirect: a login link opened from
    // elsewhere (the file `banger ui` hands to xdg-open) makes a cross-site redirect chain, on
    // which a browser withholds the SameSite=Strict cookie. The page key travels in the fragment:
    // the browser keeps it for the page and never sends it to a server.
    const next = `/#key=${session.key}`;
    const body = `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${next}"><title>banger</title>\n<p><a href="${next}">Open the banger UI</a></p>\n`;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'set-cookie': sessionCookie(session.id),
      'content-type': 'text/html; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      // Whatever this origin stored before (a service worker someone registered while holding the
      // port, an old key) is gone before the new key arrives.
      'clear-site-data': '"storage"',
    });
    res.end(body);
  }

  private api(req: IncomingMessage, res: ServerResponse, session: Session): undefined {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/api/session' && req.method === 'GET') {
      return this.send(res, 200, JSON.stringify({ csrf: session.csrf }), 'application/json', { 'cache-control': 'no-store' });
    }
    if (!url.pathname.startsWith('/api/v1/')) {
      req.resume();
      return this.sendApiError(res, new BangerError('not_found', `no web API route ${url.pathname}`));
    }
    // The normalised path (no `..`) under /v1: nothing but the daemon's API is reachable.
    const headers: Record<string, string> = {};
    for (const h of FORWARDED_REQUEST_HEADERS) {
      const v = header(req, h);
      if (v !== undefined) headers[h] = v;
    }
    if (req.headers['transfer-encoding']) headers['transfer-encoding'] = 'chunked';
    url.searchParams.delete('key'); // the page key stays here: the daemon's routes never see it
    const upstream = request({ socketPath: this.opts.socketPath, method: req.method, path: `${url.pathname.slice('/api'.length)}${url.search}`, headers });
    upstream.on('response', (ures) => {
      const out: Record<string, string | number> = { ...SECURITY_HEADERS, 'cache-control': 'no-store' };
      for (const h of FORWARDED_RESPONSE_HEADERS) {
        const v = ures.headers[h];
        if (typeof v === 'string') out[h] = v;
      }
      res.writeHead(ures.statusCode ?? 502, out);
      res.flushHeaders();
      ures.pipe(res, { end: false });
      // Raw downloads end with their result in a trailer (docs/files.md): passed on as it is.
      ures.on('end', () => {
        const trailers = Object.entries(ures.trailers).filter(([, v]) => typeof v === 'string') as Array<[string, string]>;
        if (trailers.length && typeof out.trailer === 'string') res.addTrailers(trailers);
        res.end();
      });
      ures.on('error', () => res.destroy());
    });
    upstream.on('error', (e) => {
      if (!res.headersSent) this.sendApiError(res, new BangerError('unavailable', `the daemon's socket did not answer: ${e.message}`));
      else res.destroy();
    });
    // A browser that goes away (an SSE tab closed) ends the daemon's side too.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }

  private async serveFile(req: IncomingMessage, res: ServerResponse, rel: string, contentType: string, cache: string): Promise<void> {
    const dir = this.opts.staticDir ?? DEFAULT_STATIC_DIR;
    let fh: FileHandle | undefined;
    try {
      fh = await open(`${dir.replace(/\/$/, '')}/${rel}`, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      const st: Stats = await fh.stat();
      if (!st.isFile() || st.size > MAX_STATIC_BYTES) throw new Error('not a regular file');
      const body = await fh.readFile();
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': contentType, 'content-length': body.length, 'cache-control': cache });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      if (rel === 'index.html') return this.send(res, 200, NOT_BUILT_PAGE, 'text/html; charset=utf-8', { 'cache-control': 'no-store' });
      this.send(res, 404, 'not found\n', 'text/plain; charset=utf-8');
    } finally {
      await fh?.close();
    }
  }

  private handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): undefined {
    socket.on('error', () => {});
    const refuse = (status: number, reason: string): undefined => {
      this.opts.log.debug({ path: (req.url ?? '').split('?')[0], reason }, 'web upgrade refused');
      const text = `${reason}\n`;
      socket.end(
        `HTTP/1.1 ${status} ${status === 421 ? 'Misdirected Request' : status === 404 ? 'Not Found' : 'Forbidden'}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
      );
    };
    if (!hostAllowed(req.headers.host, this.allowed)) return refuse(421, 'this host name is not the banger UI');
    const offered = header(req, 'sec-websocket-protocol');
    const refusal = upgradeRefusal(this.auth.session(req.headers.cookie), header(req, 'origin'), this.allowed, keyFromProtocols(offered));
    if (refusal) return refuse(403, refusal);
    const url = new URL(req.url ?? '/', 'http://x');
    const m = ATTACH_PATH.exec(url.pathname);
    if (!m || req.method !== 'GET' || String(req.headers.upgrade).toLowerCase() !== 'websocket') return refuse(404, 'no WebSocket here');
    const procPath = m[1] as string;
    this.wss.handleUpgrade(req, socket, head, (ws) => bridgeAttach(ws, this.opts.socketPath, procPath, url.search));
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The daemon's web UI, or undefined when `web_listen_addr` is "" or its port is taken (logged; the
 * daemon still serves its socket). A non-loopback address without `web_allow_remote` throws: the
 * daemon does not start.
 */
export async function startWebUi(opts: Omit<WebServerOptions, 'listenAddr'> & { listenAddr: string }): Promise<WebServer | undefined> {
  if (!opts.listenAddr) return undefined;
  checkListenAllowed(parseListenAddr(opts.listenAddr), opts.allowRemote);
  try {
    const web = await WebServer.start(opts);
    opts.log.info({ url: web.baseUrl }, 'web UI listening');
    return web;
  } catch (e) {
    opts.log.warn({ err: e, addr: opts.listenAddr }, 'web UI not started');
    return undefined;
  }
}
