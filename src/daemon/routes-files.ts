/**
 * `/v1/vms/:ref/files…` and `/v1/vms/:ref/archive`: the files API (docs/processes.md, "Daemon
 * API"). Contents and tar streams travel as raw bodies, streamed in both directions at the pace
 * of the slower side (never buffered whole); a download's verdict comes last, in the
 * RESULT_TRAILER trailer, because the guest gives it only after its last byte.
 */
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { z } from 'zod';
import { BangerError, toBangerError } from '../api/errors.js';
import { GuestDirListSchema, GuestStatSchema, MkdirRequestSchema, MoveRequestSchema, OctalModeQuery, WriteFileResultSchema } from '../api/file-schemas.js';
import { encodeRawResult, type RawResult, RESULT_TRAILER } from '../api/files-wire.js';
import { OP_HEADER, type Route } from './http.js';
import type { FilesService, RawDownload } from './services/files.js';

const flag = (q: URLSearchParams, name: string): boolean => {
  const v = q.get(name);
  return v === '1' || v === 'true';
};

function modeOf(q: URLSearchParams, fallback: number): number {
  const raw = q.get('mode');
  if (raw === null) return fallback;
  const parsed = OctalModeQuery.safeParse(raw);
  if (!parsed.success) throw new BangerError('bad_request', `mode ${JSON.stringify(raw.slice(0, 20))}: expected octal permission digits such as 644`);
  return parsed.data;
}

const pathOf = (q: URLSearchParams) => q.get('path') as string; // checked by the service

/** Aborts when the client goes away before the exchange finished. */
function abortOnClientGone(req: IncomingMessage, res: ServerResponse): AbortSignal {
  const ac = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) ac.abort();
  });
  req.once('aborted', () => ac.abort());
  return ac.signal;
}

/** Streams a download, then its verdict as a trailer. Errors before the first byte are ordinary JSON errors (the router's). */
async function sendRaw<T>(res: ServerResponse, opId: string, contentType: string, dl: RawDownload<T>, verdict: (result: T) => RawResult): Promise<void> {
  dl.done.catch(() => {}); // awaited below; never an unhandled rejection when the pipe fails first
  // Headers wait for the first byte (or the end): a guest that refuses at once (no such file) gets
  // its proper status and JSON error from the router, not a 200 with the error in the trailer.
  await Promise.race([once(dl.stream, 'readable'), dl.done]);
  res.writeHead(200, { 'content-type': contentType, trailer: RESULT_TRAILER, 'cache-control': 'no-store', [OP_HEADER]: opId });
  let result: RawResult;
  try {
    await pipeline(dl.stream, res, { end: false });
    result = verdict(await dl.done);
  } catch (e) {
    const err = toBangerError(e);
    result = { ok: false, error: { code: err.code, message: err.message, ...(err.fix ? { fix: err.fix } : {}) } };
  }
  if (res.destroyed) return;
  res.addTrailers({ [RESULT_TRAILER]: encodeRawResult(result) });
  res.end();
}

export function fileRoutes(files: FilesService): Route[] {
  const base = '/v1/vms/:ref';
  return [
    {
      method: 'GET',
      path: `${base}/files`,
      stream: true,
      handler: async ({ params, query, req, res, opId }) => {
        const signal = abortOnClientGone(req, res);
        const dl = await files.read(params.ref as string, pathOf(query), signal);
        await sendRaw(res, opId, 'application/octet-stream', dl, (r) => ({ ok: true, size: r.size, mode: r.mode }));
      },
    },
    {
      method: 'PUT',
      path: `${base}/files`,
      rawBody: true,
      response: WriteFileResultSchema,
      handler: ({ params, query, req, res }) =>
        files.write(params.ref as string, pathOf(query), req, {
          mode: modeOf(query, 0o644),
          mkdirs: flag(query, 'mkdirs'),
          signal: abortOnClientGone(req, res),
        }),
    },
    {
      method: 'DELETE',
      path: `${base}/files`,
      handler: async ({ params, query }) => {
        await files.remove(params.ref as string, pathOf(query), flag(query, 'recursive'));
        return {};
      },
    },
    {
      method: 'GET',
      path: `${base}/files/stat`,
      response: GuestStatSchema,
      handler: ({ params, query }) => files.stat(params.ref as string, pathOf(query)),
    },
    {
      method: 'GET',
      path: `${base}/files/list`,
      response: GuestDirListSchema,
      handler: ({ params, query }) => files.list(params.ref as string, pathOf(query)),
    },
    {
      method: 'POST',
      path: `${base}/files/mkdir`,
      body: MkdirRequestSchema,
      handler: async ({ params, body }) => {
        const b = body as z.output<typeof MkdirRequestSchema>;
        await files.mkdir(params.ref as string, b.path, { mode: b.mode, parents: b.parents });
        return {};
      },
    },
    {
      method: 'POST',
      path: `${base}/files/move`,
      body: MoveRequestSchema,
      handler: async ({ params, body }) => {
        const b = body as z.output<typeof MoveRequestSchema>;
        await files.move(params.ref as string, b.from, b.to, b.overwrite);
        return {};
      },
    },
    {
      method: 'GET',
      path: `${base}/archive`,
      stream: true,
      handler: async ({ params, query, req, res, opId }) => {
        const signal = abortOnClientGone(req, res);
        const dl = await files.archiveOut(params.ref as string, pathOf(query), signal);
        await sendRaw(res, opId, 'application/x-tar', dl, () => ({ ok: true }));
      },
    },
    {
      method: 'PUT',
      path: `${base}/archive`,
      rawBody: true,
      handler: async ({ params, query, req, res }) => {
        await files.archiveIn(params.ref as string, pathOf(query), req, { sameOwner: flag(query, 'sameOwner'), signal: abortOnClientGone(req, res) });
        return {};
      },
    },
  ];
}
