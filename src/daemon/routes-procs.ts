/**
 * `/v1/vms/:ref/procs…`: guest processes over HTTP (docs/processes.md, "Daemon API"). Streams
 * are SSE at the client's pace (the guest's data channel stalls while the client reads slowly);
 * attach is an HTTP Upgrade carrying data-channel frames.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { z } from 'zod';
import { BangerError, toBangerError } from '../api/errors.js';
import {
  ATTACH_UPGRADE,
  MAX_STDIN_WRITE,
  ProcListSchema,
  ProcResizeRequestSchema,
  ProcSchema,
  ProcSignalRequestSchema,
  ProcStartRequestSchema,
  ProcStdinRequestSchema,
  ProcStdinResultSchema,
  ProcWaitRequestSchema,
  ProcWaitResultSchema,
} from '../api/proc-schemas.js';
import type { GuestProc, OutputStream } from '../guest/guest-channel.js';
import { encodeFrame, FrameDecoder } from '../util/frames.js';
import { OP_HEADER, openEventStream, type Route } from './http.js';
import { toApiProc } from './services/proc-logic.js';
import type { ExecSpec, ProcessService, ProcTarget } from './services/processes.js';

const base = '/v1/vms/:ref/procs';
/** Stdin bytes an attach buffers from its client before it stops reading the client's socket. */
const ATTACH_STDIN_HIGH_WATER = 1024 * 1024;

function offsetParam(query: URLSearchParams, name: string): number {
  const v = query.get(name);
  if (v === null || v === '') return 0;
  if (!/^[0-9]{1,15}$/.test(v)) throw new BangerError('bad_request', `${name} must be a byte offset (a non-negative integer)`);
  return Number(v);
}

/** Resolves once res can take more (SSE backpressure: the guest is read at the client's pace). */
function drained(res: ServerResponse): Promise<void> | undefined {
  if (!res.writableNeedDrain) return undefined;
  return new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/** Sends output events then `exit` (or `error`) on an already opened event stream. */
async function streamOutput(
  procs: ProcessService,
  t: ProcTarget,
  opts: { stdoutFrom: number; stderrFrom: number; follow: boolean },
  res: ServerResponse,
  events: ReturnType<typeof openEventStream>,
): Promise<void> {
  const gone = new AbortController();
  res.on('close', () => gone.abort());
  // Nothing is written to a response the client closed (a write after its end would be an error event).
  const send = (event: unknown) => {
    if (!res.destroyed && !res.writableEnded) events.send(event);
  };
  try {
    const proc = await procs.follow(t, { ...opts, signal: gone.signal }, (stream, data, offset) => {
      send({ type: stream, offset, data: data.toString('base64') });
      return res.destroyed ? undefined : drained(res);
    });
    send({ type: 'exit', proc: toApiProc(proc) });
  } catch (e) {
    if (!gone.signal.aborted) send({ type: 'error', error: toBangerError(e).toBody() });
  } finally {
    events.close();
  }
}

/** An async iterable of stdin chunks fed by an attach's client, with a high-water mark. */
class StdinQueue implements AsyncIterable<Buffer> {
  private readonly chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private wake: (() => void) | null = null;

  constructor(private readonly onLow: () => void) {}

  get buffered(): number {
    return this.bytes;
  }

  push(b: Buffer): void {
    if (this.ended) return;
    this.chunks.push(b);
    this.bytes += b.length;
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const next = this.chunks.shift();
      if (next) {
        this.bytes -= next.length;
        if (this.bytes < ATTACH_STDIN_HIGH_WATER / 2) this.onLow();
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = null;
    }
  }
}

/**
 * Attach: D frames of stdout/stderr down (at this socket's pace), D stream 0 and E up (the
 * writer's stdin), C up detaches, R `{ok, proc}` or `{ok:false, code, error}` down last.
 */
async function serveAttach(procs: ProcessService, t: ProcTarget, opts: { stdoutFrom: number; stderrFrom: number }, socket: Duplex, head: Buffer, opId: string) {
  const release = procs.claimWriter(t);
  const detach = new AbortController();
  const decoder = new FrameDecoder();
  const stdin = release && t.proc.stdin === 'open' ? new StdinQueue(() => socket.resume()) : undefined;
  let finished = false;
  const sendResult = (r: Record<string, unknown>) => {
    if (finished) return;
    finished = true;
    if (socket.writable) socket.end(encodeFrame('R', JSON.stringify(r)));
    else socket.destroy();
  };
  const refuse = (err: BangerError) => {
    sendResult({ ok: false, code: err.code, error: err.toBody() });
    detach.abort();
  };
  const onChunk = (chunk: Buffer) => {
    let frames: ReturnType<FrameDecoder['push']>;
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      return refuse(new BangerError('bad_request', `invalid attach frame: ${(e as Error).message}`));
    }
    for (const f of frames) {
      if (f.type === 'D' && f.stream === 0) {
        if (!release) return refuse(new BangerError('conflict', `another attach writes the stdin of ${t.proc.id}; this one is read-only`));
        if (stdin) {
          stdin.push(f.payload);
          if (stdin.buffered > ATTACH_STDIN_HIGH_WATER) socket.pause();
        }
      } else if (f.type === 'E') stdin?.end();
      else if (f.type === 'C') detach.abort();
    }
  };
  socket.on('data', onChunk);
  socket.on('close', () => {
    stdin?.end();
    detach.abort();
  });
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${ATTACH_UPGRADE}\r\nconnection: Upgrade\r\n${OP_HEADER}: ${opId}\r\n\r\n`);
  if (head.length) onChunk(head);
  try {
    const proc: GuestProc = await procs.follow(
      t,
      { ...opts, follow: true, signal: detach.signal, ...(stdin ? { stdin } : {}) },
      (stream: OutputStream, data: Buffer) => {
        if (finished || !socket.writable) return undefined;
        const ok = socket.write(encodeFrame('D', data, stream === 'stdout' ? 1 : 2));
        if (ok) return undefined;
        return new Promise<void>((resolve) => {
          const done = () => {
            socket.off('drain', done);
            socket.off('close', done);
            resolve();
          };
          socket.on('drain', done);
          socket.on('close', done);
        });
      },
    );
    sendResult({ ok: true, proc: toApiProc(proc) });
  } catch (e) {
    const err = toBangerError(e);
    if (err.code === 'cancelled' && detach.signal.aborted) {
      // Detached (C or a closed socket): the process keeps running; say how it is now.
      const now = await t.channel.showProcess(t.proc.id).catch(() => t.proc);
      sendResult({ ok: true, proc: toApiProc(now) });
    } else sendResult({ ok: false, code: err.code, error: err.toBody() });
  } finally {
    release?.();
    stdin?.end();
  }
}

export function procRoutes(procs: ProcessService): Route[] {
  return [
    {
      method: 'POST',
      path: base,
      body: ProcStartRequestSchema,
      stream: true,
      handler: async ({ params, body, res, opId, req }) => {
        const { mode, maxBuffer, ...spec } = body as z.output<typeof ProcStartRequestSchema>;
        const t = await procs.start(params.ref as string, spec as ExecSpec);
        if (mode === 'detach') {
          const text = JSON.stringify(ProcSchema.parse(toApiProc(t.proc)));
          res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), [OP_HEADER]: opId });
          res.end(text);
          return undefined;
        }
        if (mode === 'wait') {
          const gone = new AbortController();
          res.on('close', () => {
            if (!res.writableFinished) gone.abort();
          });
          req.resume();
          const { proc, result } = await procs.collect(t, { ...(maxBuffer !== undefined ? { maxBuffer } : {}), signal: gone.signal });
          const text = JSON.stringify(ProcWaitResultSchema.parse({ proc: toApiProc(proc), result }));
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), [OP_HEADER]: opId });
          res.end(text);
          return undefined;
        }
        const events = openEventStream(res, opId);
        events.send({ type: 'start', proc: toApiProc(t.proc) });
        await streamOutput(procs, t, { stdoutFrom: 0, stderrFrom: 0, follow: true }, res, events);
        return undefined;
      },
    },
    { method: 'GET', path: base, response: ProcListSchema, handler: async ({ params }) => ({ procs: await procs.list(params.ref as string) }) },
    { method: 'GET', path: `${base}/:proc`, response: ProcSchema, handler: ({ params }) => procs.show(params.ref as string, params.proc as string) },
    {
      method: 'GET',
      path: `${base}/:proc/output`,
      stream: true,
      handler: async ({ params, query, res, opId }) => {
        const opts = {
          stdoutFrom: offsetParam(query, 'stdoutFrom'),
          stderrFrom: offsetParam(query, 'stderrFrom'),
          follow: query.get('follow') === '1' || query.get('follow') === 'true',
        };
        const t = await procs.target(params.ref as string, params.proc as string);
        await streamOutput(procs, t, opts, res, openEventStream(res, opId));
        return undefined;
      },
    },
    {
      method: 'POST',
      path: `${base}/:proc/stdin`,
      body: ProcStdinRequestSchema,
      response: ProcStdinResultSchema,
      handler: ({ params, body }) => {
        const b = body as z.output<typeof ProcStdinRequestSchema>;
        const data = Buffer.from(b.data, 'base64');
        if (data.length > MAX_STDIN_WRITE) throw new BangerError('payload_too_large', `a stdin write is at most ${MAX_STDIN_WRITE} bytes`);
        return procs.writeStdin(params.ref as string, params.proc as string, b.offset, data, b.eof ?? false);
      },
    },
    {
      method: 'POST',
      path: `${base}/:proc/signal`,
      body: ProcSignalRequestSchema,
      response: ProcSchema,
      handler: ({ params, body }) => procs.signal(params.ref as string, params.proc as string, (body as z.output<typeof ProcSignalRequestSchema>).signal),
    },
    {
      method: 'POST',
      path: `${base}/:proc/resize`,
      body: ProcResizeRequestSchema,
      handler: async ({ params, body }) => {
        const b = body as z.output<typeof ProcResizeRequestSchema>;
        await procs.resize(params.ref as string, params.proc as string, b.rows, b.cols);
        return {};
      },
    },
    {
      method: 'POST',
      path: `${base}/:proc/wait`,
      body: ProcWaitRequestSchema,
      response: ProcWaitResultSchema,
      handler: ({ params, body, res }) => {
        const b = body as z.output<typeof ProcWaitRequestSchema>;
        const gone = new AbortController();
        res.on('close', () => {
          if (!res.writableFinished) gone.abort();
        });
        return procs.wait(params.ref as string, params.proc as string, { ...b, signal: gone.signal });
      },
    },
    {
      method: 'GET',
      path: `${base}/:proc/attach`,
      handler: () => {
        throw new BangerError('bad_request', `attach needs an HTTP Upgrade to ${ATTACH_UPGRADE}`, {
          fix: 'use `banger vm proc attach` or the client’s attachProcess',
        });
      },
      upgrade: {
        protocol: ATTACH_UPGRADE,
        handler: async ({ params, query, socket, head, opId }) => {
          const opts = { stdoutFrom: offsetParam(query, 'stdoutFrom'), stderrFrom: offsetParam(query, 'stderrFrom') };
          const t = await procs.target(params.ref as string, params.proc as string);
          void serveAttach(procs, t, opts, socket, head, opId);
        },
      },
    },
    {
      method: 'DELETE',
      path: `${base}/:proc`,
      handler: async ({ params, query }) => {
        await procs.forget(params.ref as string, params.proc as string, query.get('kill') === '1' || query.get('kill') === 'true');
        return {};
      },
    },
  ];
}
