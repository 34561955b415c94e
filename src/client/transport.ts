import type { IncomingMessage, RequestOptions } from 'node:http';
import { BangerError, type ErrorBody } from '../api/errors.js';
import { assertTrustedSocket } from './trust.js';

// node:http through getBuiltinModule, not `import`: an ESM import of a built-in reads every export
// to build the module's namespace, and on Node 24 node:http's exports include lazy getters
// (WebSocket, ...) that load undici: ~60 ms of CPU on every CLI start-up for a request over a socket.
const { request } = process.getBuiltinModule('node:http');

/**
 * An HTTP request over the daemon's Unix socket. `servername: ''` spares Node's agent from checking
 * whether the (unused, TLS-only) default host name `localhost` is an IP address, whose first use
 * compiles the IPv6 address pattern: ~5 ms of a CLI run.
 */
const httpRequest = (options: RequestOptions & { socketPath: string }, onResponse: (res: IncomingMessage) => void) =>
  request({ ...options, servername: '' } as RequestOptions, onResponse);

export const OP_HEADER = 'x-banger-op';
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

export interface RawResponse {
  status: number;
  body: unknown;
  opId: string | undefined;
}

/** Errors that mean "nobody is listening": the daemon is not running (or its socket is stale). */
export function isNotRunning(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/** `signal`: aborting destroys the request (rejects with a `cancelled` BangerError). */
export function requestJson(
  socketPath: string,
  method: string,
  path: string,
  body: unknown,
  opId: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new BangerError('cancelled', `${method} ${path} was aborted`, { opId, cause: signal.reason }));
    // Every connection: who owns the socket path is checked first (a squatted /tmp/banger-<uid>).
    assertTrustedSocket(socketPath);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = httpRequest(
      {
        socketPath,
        method,
        path,
        headers: {
          [OP_HEADER]: opId,
          ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(new BangerError('payload_too_large', 'daemon response exceeded 64 MiB'));
            return;
          }
          chunks.push(c);
        });
        res.on('error', (e) => reject(midRequest(e, opId)));
        res.on('end', () => {
          if (!res.complete) return reject(midRequest(new Error('truncated response'), opId));
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            return reject(new BangerError('internal', `daemon sent invalid JSON for ${method} ${path}`, { opId }));
          }
          const header = res.headers[OP_HEADER];
          resolve({ status: res.statusCode ?? 0, body: parsed, opId: typeof header === 'string' ? header : undefined });
        });
      },
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(
        new BangerError('timeout', `daemon did not answer ${method} ${path} within ${timeoutMs / 1000}s`, { opId, fix: 'check `banger daemon logs`' }),
      ),
    );
    const onAbort = () => req.destroy(new BangerError('cancelled', `${method} ${path} was aborted`, { opId, cause: signal?.reason }));
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('close', () => signal?.removeEventListener('abort', onAbort));
    req.on('error', (e) => reject(isNotRunning(e) || e instanceof BangerError ? e : midRequest(e, opId)));
    req.end(payload);
  });
}

function midRequest(e: Error, opId: string): BangerError {
  return new BangerError('unavailable', `the daemon closed the connection mid-request (${e.message}); it may have crashed`, {
    opId,
    fix: 'see `banger daemon logs`, then retry (the daemon restarts on the next command)',
  });
}

export function errorFrom(raw: RawResponse): BangerError {
  const body = raw.body as { error?: ErrorBody } | undefined;
  if (body?.error && typeof body.error.code === 'string' && typeof body.error.message === 'string') {
    const e = BangerError.fromBody(body.error);
    e.opId ??= raw.opId;
    return e;
  }
  return new BangerError('internal', `daemon answered HTTP ${raw.status} without an error body`, { opId: raw.opId });
}

/** A streaming route refused the request: its body is the usual JSON error. */
function rejectWithErrorBody(res: IncomingMessage, opId: string, reject: (e: Error) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  res.on('end', () => {
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      body = undefined;
    }
    reject(errorFrom({ status: res.statusCode ?? 0, body, opId }));
  });
}

export interface StreamOptions {
  method?: 'GET' | 'POST';
  /** JSON request body (POST). */
  body?: unknown;
  /** Aborting ends the stream (the promise resolves). */
  signal?: AbortSignal;
}

/** Reads a server-sent-events stream and calls onEvent with each parsed `data:` payload. */
export function streamEvents(
  socketPath: string,
  path: string,
  opId: string,
  onEvent: (data: unknown) => boolean | undefined,
  options: StreamOptions = {},
): Promise<void> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    const { signal } = options;
    if (signal?.aborted) return resolve();
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const headers = {
      [OP_HEADER]: opId,
      accept: 'text/event-stream',
      ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
    };
    const onAbort = () => {
      req.destroy();
      resolve();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const req = httpRequest({ socketPath, method: options.method ?? 'GET', path, headers }, (res) => {
      if (res.statusCode !== 200) return void rejectWithErrorBody(res, opId, reject);
      res.setEncoding('utf8');
      let buf = '';
      let stopped = false;
      res.on('data', (chunk: string) => {
        buf += chunk;
        if (buf.length > 8 * 1024 * 1024) {
          req.destroy(new BangerError('payload_too_large', 'event stream line too long'));
          return;
        }
        let idx = buf.indexOf('\n\n');
        while (idx >= 0 && !stopped) {
          const block = buf.slice(0, idx);
          buf = buf.slice(idx + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6))
            .join('\n');
          if (data) {
            let parsed: unknown;
            try {
              parsed = JSON.parse(data);
            } catch {
              req.destroy(new BangerError('internal', 'daemon sent an invalid event'));
              return;
            }
            if (onEvent(parsed) === false) {
              stopped = true;
              req.destroy();
              resolve();
              return;
            }
          }
          idx = buf.indexOf('\n\n');
        }
      });
      res.on('end', () => resolve());
      res.on('error', (e) => (stopped || signal?.aborted ? resolve() : reject(midRequest(e, opId))));
    });
    req.on('error', (e) => (signal?.aborted ? resolve() : reject(e instanceof BangerError ? e : isNotRunning(e) ? e : midRequest(e, opId))));
    req.on('close', () => signal?.removeEventListener('abort', onAbort));
    req.end(payload);
  });
}

/**
 * An HTTP Upgrade over the daemon's socket (`/procs/:proc/attach`): resolves with the raw duplex
 * once the daemon answered 101, or rejects with the daemon's JSON error.
 */
export function upgrade(socketPath: string, path: string, protocol: string, opId: string): Promise<{ socket: import('node:net').Socket; head: Buffer }> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    const req = httpRequest({ socketPath, method: 'GET', path, headers: { [OP_HEADER]: opId, connection: 'Upgrade', upgrade: protocol } }, (res) => {
      rejectWithErrorBody(res, opId, reject);
    });
    req.on('upgrade', (res, socket, head) => {
      if (String(res.headers.upgrade ?? '').toLowerCase() !== protocol) {
        socket.destroy();
        return reject(new BangerError('internal', `daemon upgraded ${path} to ${JSON.stringify(res.headers.upgrade)}, not ${protocol}`, { opId }));
      }
      resolve({ socket, head });
    });
    req.on('error', (e) => reject(e instanceof BangerError ? e : isNotRunning(e) ? e : midRequest(e, opId)));
    req.end();
  });
}

/** Streams a text response (logs) chunk by chunk until the server ends it or `signal` aborts. */
export function streamText(socketPath: string, path: string, opId: string, onChunk: (text: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    const req = httpRequest({ socketPath, method: 'GET', path, headers: { [OP_HEADER]: opId } }, (res) => {
      if (res.statusCode !== 200) return void rejectWithErrorBody(res, opId, reject);
      res.setEncoding('utf8');
      res.on('data', (c: string) => onChunk(c));
      res.on('end', () => resolve());
      res.on('error', () => resolve());
    });
    signal?.addEventListener('abort', () => {
      req.destroy();
      resolve();
    });
    req.on('error', (e) => (signal?.aborted ? resolve() : reject(e)));
    req.end();
  });
}

/**
 * A POST whose answer is raw bytes (a workspace patch): piped into `out` at the pace `out` takes
 * them. Resolves with the response headers once every byte was written; a daemon that cut the
 * stream short (it aborts the response on a failure mid-way) rejects, so a partial patch is never
 * taken for a whole one. A JSON answer (content-type application/json) resolves with its body instead.
 */
export function postForBytes(
  socketPath: string,
  path: string,
  body: unknown,
  opId: string,
  out: NodeJS.WritableStream,
  signal?: AbortSignal,
): Promise<{ headers: IncomingMessage['headers']; json?: unknown }> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    if (signal?.aborted) return reject(new BangerError('cancelled', 'the request was aborted', { opId }));
    const payload = JSON.stringify(body);
    const req = httpRequest(
      { socketPath, method: 'POST', path, headers: { [OP_HEADER]: opId, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
      (res) => {
        if ((res.statusCode ?? 0) >= 400) return void rejectWithErrorBody(res, opId, reject);
        if (String(res.headers['content-type'] ?? '').startsWith('application/json')) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            try {
              resolve({ headers: res.headers, json: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
            } catch (e) {
              reject(midRequest(e as Error, opId));
            }
          });
          return;
        }
        res.on('data', (c: Buffer) => {
          if (!out.write(c)) {
            res.pause();
            out.once('drain', () => res.resume());
          }
        });
        res.on('aborted', () => reject(midRequest(new Error('the stream was cut short'), opId)));
        res.on('error', (e) => reject(midRequest(e, opId)));
        res.on('end', () => (res.complete ? resolve({ headers: res.headers }) : reject(midRequest(new Error('the stream was cut short'), opId))));
      },
    );
    req.on('error', (e) => reject(e instanceof BangerError ? e : isNotRunning(e) ? e : midRequest(e, opId)));
    // A sink that fails (full, bounded, closed) or an abort ends the request: nothing keeps
    // streaming into a writer nobody listens to.
    const onOutError = (e: Error) => {
      req.destroy();
      reject(e instanceof BangerError ? e : midRequest(e, opId));
    };
    out.on('error', onOutError);
    const onAbort = () => {
      req.destroy();
      reject(new BangerError('cancelled', 'the request was aborted', { opId }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('close', () => {
      out.removeListener('error', onOutError);
      signal?.removeEventListener('abort', onAbort);
    });
    req.end(payload);
  });
}
