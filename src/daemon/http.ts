import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { z } from 'zod';
import { BangerError, toBangerError } from '../api/errors.js';
import { newOpId } from '../util/ids.js';

export const OP_HEADER = 'x-banger-op';
const MAX_BODY_BYTES = 1024 * 1024;
const OP_ID_RE = /^op-[0-9a-f]{6}(?:\.\d+)?$/;

export interface RequestContext {
  opId: string;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  req: IncomingMessage;
  res: ServerResponse;
  log: Logger;
}

export interface UpgradeContext {
  opId: string;
  params: Record<string, string>;
  query: URLSearchParams;
  req: IncomingMessage;
  socket: Duplex;
  /** Bytes the client sent after its request head. */
  head: Buffer;
  log: Logger;
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path: string;
  body?: z.ZodType;
  response?: z.ZodType;
  /** HTTP status for success (200 unless set). */
  status?: number;
  /** Streaming handlers write the response themselves and return undefined. */
  stream?: boolean;
  /** The request body is raw bytes the handler reads itself from `req` (uploads): never parsed or buffered here. */
  rawBody?: boolean;
  handler(ctx: RequestContext): Promise<unknown> | unknown;
  /**
   * HTTP Upgrade to this protocol (e.g. `banger-attach`): requests carrying `Upgrade: <protocol>`
   * go to `upgrade` (which answers 101 itself, or throws before it did); plain requests to handler.
   */
  upgrade?: { protocol: string; handler(ctx: UpgradeContext): Promise<void> };
}

interface CompiledRoute extends Route {
  regex: RegExp;
  keys: string[];
}

function compile(route: Route): CompiledRoute {
  const keys: string[] = [];
  const pattern = route.path.replace(/:([a-zA-Z]+)/g, (_, k: string) => {
    keys.push(k);
    return '([^/]+)';
  });
  return { ...route, regex: new RegExp(`^${pattern}$`), keys };
}

function zodMessage(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message))
    .join('; ');
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) {
      throw new BangerError('payload_too_large', `request body is larger than ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return undefined;
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    throw new BangerError('bad_request', 'request body is not valid JSON', { fix: 'send a JSON object with Content-Type: application/json' });
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown, opId: string): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    [OP_HEADER]: opId,
  });
  res.end(text);
}

/** A tiny router: exact method + path template, request and response schemas, one error shape. */
export class Router {
  private readonly routes: CompiledRoute[] = [];

  constructor(private readonly log: Logger) {}

  add(...routes: Route[]): void {
    for (const r of routes) this.routes.push(compile(r));
  }

  /** The server's 'upgrade' event: a route with a matching `upgrade` takes the socket; anything else gets a JSON error. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const header = req.headers[OP_HEADER];
    const opId = typeof header === 'string' && OP_ID_RE.test(header) ? header : newOpId();
    const url = new URL(req.url ?? '/', 'http://bangerd');
    const log = this.log.child({ op: opId });
    socket.on('error', () => {});
    try {
      const wanted = String(req.headers.upgrade ?? '').toLowerCase();
      const route = this.routes.find((r) => r.regex.test(url.pathname) && r.method === req.method && r.upgrade?.protocol === wanted);
      if (!route?.upgrade) throw new BangerError('bad_request', `no upgrade to ${JSON.stringify(wanted)} on ${req.method} ${url.pathname}`);
      const params = routeParams(route, url.pathname);
      await route.upgrade.handler({ opId, params, query: url.searchParams, req, socket, head, log });
    } catch (e) {
      const err = toBangerError(e);
      err.opId ??= opId;
      if (err.code === 'internal') log.error({ err: e }, 'upgrade failed');
      else log.info({ method: req.method, path: url.pathname, code: err.code, msg: err.message }, 'upgrade refused');
      if (socket.writable) {
        const text = JSON.stringify({ error: err.toBody() });
        socket.end(
          `HTTP/1.1 ${err.status} ${err.code}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${OP_HEADER}: ${opId}\r\nconnection: close\r\n\r\n${text}`,
        );
      }
    }
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const header = req.headers[OP_HEADER];
    const opId = typeof header === 'string' && OP_ID_RE.test(header) ? header : newOpId();
    const url = new URL(req.url ?? '/', 'http://bangerd');
    const log = this.log.child({ op: opId });
    const started = process.hrtime.bigint();
    try {
      const pathMatches = this.routes.filter((r) => r.regex.test(url.pathname));
      if (pathMatches.length === 0) {
        throw new BangerError('not_found', `no API route ${req.method} ${url.pathname}`, {
          fix: 'check that banger and bangerd are the same version (`banger version`)',
        });
      }
      const route = pathMatches.find((r) => r.method === req.method);
      if (!route) {
        throw new BangerError('bad_request', `method ${req.method} not allowed on ${url.pathname}`);
      }
      const params = routeParams(route, url.pathname);
      let body = route.rawBody ? undefined : await readBody(req);
      if (route.body) {
        const parsed = route.body.safeParse(body ?? {});
        if (!parsed.success) {
          throw new BangerError('bad_request', `invalid request body: ${zodMessage(parsed.error)}`);
        }
        body = parsed.data;
      }
      const result = await route.handler({ opId, params, query: url.searchParams, body, req, res, log });
      if (route.stream) return;
      let out: unknown = result ?? {};
      if (route.response) {
        const parsed = route.response.safeParse(out);
        if (!parsed.success) {
          log.error({ issues: parsed.error.issues }, 'response failed its schema');
          throw new BangerError('internal', `daemon produced an invalid response: ${zodMessage(parsed.error)}`);
        }
        out = parsed.data;
      }
      sendJson(res, route.status ?? 200, out, opId);
      log.debug({ method: req.method, path: url.pathname, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'request');
    } catch (e) {
      const err = toBangerError(e);
      err.opId ??= opId;
      if (err.code === 'internal') log.error({ err: e }, 'request failed');
      else log.info({ method: req.method, path: url.pathname, code: err.code, msg: err.message }, 'request refused');
      if (!res.headersSent) sendJson(res, err.status, { error: err.toBody() }, opId);
      else res.end();
    }
  }
}

/** Server-sent events: one `data:` JSON line per event, comments as keep-alives. */
export function openEventStream(res: ServerResponse, opId: string): { send(data: unknown): void; close(): void } {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    [OP_HEADER]: opId,
  });
  res.flushHeaders();
  const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  keepAlive.unref();
  return {
    send: (data) => {
      res.write(`data: ${JSON.stringify(data)}\n\n`);
    },
    close: () => {
      clearInterval(keepAlive);
      res.end();
    },
  };
}

/** A matched route's path parameters, percent-decoded. */
function routeParams(route: { regex: RegExp; keys: string[] }, pathname: string): Record<string, string> {
  const m = route.regex.exec(pathname) as RegExpExecArray;
  const params: Record<string, string> = {};
  route.keys.forEach((k, i) => {
    try {
      params[k] = decodeURIComponent(m[i + 1] as string);
    } catch {
      throw new BangerError('bad_request', `malformed percent-encoding in ${pathname}`);
    }
  });
  return params;
}
