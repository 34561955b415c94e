import { request } from 'node:http';
import { VmmError } from '../driver.js';
import type { FcRequest } from './requests.js';

/** Firecracker answered with an error status; `faultMessage` is its `fault_message`. */
export class FirecrackerApiError extends VmmError {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly statusCode: number,
    readonly faultMessage: string,
  ) {
    super(`Firecracker rejected ${method} ${path} (HTTP ${statusCode}): ${faultMessage}`);
    this.name = 'FirecrackerApiError';
  }
}

export interface ApiClientOptions {
  /** Whole-request deadline: Firecracker answers configuration calls in milliseconds. */
  timeoutMs?: number;
  /** Firecracker's answers are small JSON objects; anything bigger is not Firecracker. */
  maxResponseBytes?: number;
}

/**
 * HTTP/1.1 over Firecracker's Unix API socket, one connection per request (no agent), so a
 * handle restored after a daemon restart needs nothing but the socket path.
 */
export class FirecrackerApiClient {
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;

  constructor(
    readonly socketPath: string,
    opts: ApiClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.maxResponseBytes = opts.maxResponseBytes ?? 64 * 1024;
  }

  /** Resolves with the parsed JSON body (undefined for 204), rejects with FirecrackerApiError or a VmmError. */
  send<T = unknown>(req: FcRequest, signal?: AbortSignal): Promise<T | undefined> {
    const what = `${req.method} ${req.path}`;
    // Firecracker's HTTP server does not take chunked bodies: always send a Content-Length.
    const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
    const headers: Record<string, string | number> = { Accept: 'application/json' };
    if (payload) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    return new Promise<T | undefined>((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | undefined, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(value);
      };
      const transportError = (e: Error) => settle(new VmmError(`Firecracker API ${what} via ${this.socketPath} failed: ${e.message}`));

      const r = request({ socketPath: this.socketPath, path: req.path, method: req.method, headers, agent: false });
      const timer = setTimeout(() => r.destroy(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      const onAbort = () => r.destroy(new Error('aborted'));
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });

      r.on('error', transportError);
      r.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > this.maxResponseBytes) {
            r.destroy(new Error(`response larger than ${this.maxResponseBytes} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('error', transportError);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            if (text.trim() === '') return settle(undefined, undefined);
            try {
              settle(undefined, JSON.parse(text) as T);
            } catch {
              settle(new VmmError(`Firecracker API ${what} answered with invalid JSON: ${text.slice(0, 200)}`));
            }
            return;
          }
          settle(new FirecrackerApiError(req.method, req.path, status, faultMessageOf(text)));
        });
      });
      r.end(payload);
    });
  }
}

function faultMessageOf(text: string): string {
  try {
    const parsed = JSON.parse(text) as { fault_message?: unknown };
    if (typeof parsed.fault_message === 'string') return parsed.fault_message;
  } catch {
    /* not JSON: show the raw text */
  }
  return text.trim().slice(0, 500) || '(empty response)';
}
