/**
 * Raw (non-JSON) bodies over the daemon's socket: file contents and tar streams, in both
 * directions, streamed with backpressure (never held whole). A download's verdict arrives last,
 * as the RESULT_TRAILER trailer (see src/daemon/routes-files.ts): a body without it was cut short.
 */
import type { IncomingMessage, RequestOptions } from 'node:http';
import type { Readable } from 'node:stream';
import { BangerError, type ErrorBody, type ErrorCode } from '../api/errors.js';
import { type RawResult, RESULT_TRAILER } from '../api/files-wire.js';
import { errorFrom, isNotRunning, OP_HEADER } from './transport.js';
import { assertTrustedSocket } from './trust.js';

// Through getBuiltinModule, as in transport.ts (no undici on the CLI's start-up path).
const { request } = process.getBuiltinModule('node:http');

const httpRequest = (options: RequestOptions & { socketPath: string }, onResponse: (res: IncomingMessage) => void) =>
  request({ ...options, servername: '' } as RequestOptions, onResponse);

/** A JSON answer (an error body, or a small result) is read whole, up to this size. */
const MAX_JSON_BYTES = 1024 * 1024;

function cut(what: string, opId: string, why: string): BangerError {
  return new BangerError('unavailable', `${what} was cut short (${why})`, { opId, fix: 'retry; see `banger daemon logs` if it keeps failing' });
}

function readJson(res: IncomingMessage, opId: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_JSON_BYTES) res.destroy(new BangerError('payload_too_large', 'daemon answer exceeded 1 MiB', { opId }));
      else chunks.push(c);
    });
    res.on('error', reject);
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        resolve(text ? JSON.parse(text) : undefined);
      } catch {
        reject(new BangerError('internal', 'daemon sent invalid JSON', { opId }));
      }
    });
  });
}

async function failure(res: IncomingMessage, opId: string): Promise<BangerError> {
  const body = await readJson(res, opId).catch(() => undefined);
  return errorFrom({ status: res.statusCode ?? 0, body, opId });
}

export interface RawDownload<T> {
  /** The body as it arrives; read it to the end (or destroy it) for `done` to settle. */
  stream: Readable;
  /** Resolves with the daemon's verdict after the last byte; rejects when it failed or the body was cut. */
  done: Promise<T>;
}

/** GET of a raw body. Resolves once the daemon answered 200; an error answer rejects with its BangerError. */
export function downloadRaw(socketPath: string, path: string, opId: string, what: string): Promise<RawDownload<Extract<RawResult, { ok: true }>>> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    const req = httpRequest({ socketPath, method: 'GET', path, headers: { [OP_HEADER]: opId } }, (res) => {
      if (res.statusCode !== 200) return void failure(res, opId).then(reject, reject);
      const done = new Promise<Extract<RawResult, { ok: true }>>((ok, fail) => {
        res.on('error', (e) => fail(cut(what, opId, e.message)));
        res.on('aborted', () => fail(cut(what, opId, 'the daemon closed the connection')));
        // Destroyed before its end (by the reader, or the connection): settles instead of hanging.
        res.on('close', () => fail(cut(what, opId, 'the body was not read to its end')));
        res.on('end', () => {
          const raw = res.trailers[RESULT_TRAILER];
          if (!res.complete || typeof raw !== 'string') return fail(cut(what, opId, 'no final status from the daemon'));
          let verdict: RawResult;
          try {
            verdict = JSON.parse(raw) as RawResult;
          } catch {
            return fail(new BangerError('internal', `daemon sent an invalid final status for ${what}`, { opId }));
          }
          if (verdict.ok) return ok(verdict);
          const e = verdict.error as ErrorBody;
          fail(new BangerError((e.code as ErrorCode) ?? 'internal', String(e.message ?? 'failed'), { opId, ...(e.fix ? { fix: e.fix } : {}) }));
        });
      });
      done.catch(() => {});
      resolve({ stream: res, done });
    });
    req.on('error', (e) => reject(isNotRunning(e) || e instanceof BangerError ? e : cut(what, opId, e.message)));
    req.end();
  });
}

/**
 * PUT of a raw body read from `data` (at the daemon's pace). Resolves with the JSON answer; an
 * early answer (the daemon refused before reading everything) stops the upload and wins.
 */
export function uploadRaw(socketPath: string, path: string, opId: string, data: Readable, what: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    assertTrustedSocket(socketPath);
    let answered = false;
    const req = httpRequest(
      { socketPath, method: 'PUT', path, headers: { [OP_HEADER]: opId, 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } },
      (res) => {
        answered = true;
        data.unpipe(req);
        if (res.statusCode !== 200) {
          // Refused: whatever is still producing the body (a tree being packed) stops here.
          data.destroy();
          return void failure(res, opId).then(reject, reject);
        }
        readJson(res, opId).then(resolve, reject);
      },
    );
    req.on('error', (e) => {
      if (answered) return; // the answer (already handled) explains why the daemon stopped reading
      reject(isNotRunning(e) || e instanceof BangerError ? e : cut(what, opId, e.message));
    });
    data.on('error', (e) => {
      if (answered) return;
      req.destroy();
      reject(e instanceof BangerError ? e : new BangerError('internal', `${what}: reading the local data failed: ${e.message}`, { opId }));
    });
    data.pipe(req);
  });
}
