import type { Socket } from 'node:net';
import { BangerError, type ErrorBody } from '../api/errors.js';
import type { Proc } from '../api/proc-schemas.js';
import { encodeData, encodeFrame, FrameDecoder } from '../util/frames.js';

export interface AttachOutput {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

/** A live attach (`/procs/:proc/attach`): output down, stdin up, the process's info at the end. */
export interface AttachHandle extends AsyncIterable<AttachOutput> {
  /** Output as it arrives. Output that came before the first listener is delivered to it first. */
  onOutput(listener: (out: AttachOutput) => void): void;
  /** Appends to the process's stdin. False when the socket's buffer is full: wait for `drain`. */
  write(data: Buffer): boolean;
  /** Resolves when the written data was handed to the daemon's socket. */
  drain(): Promise<void>;
  /** EOF on the process's stdin (after every byte written). */
  end(): void;
  /** Detaches; the process keeps running (`done` resolves with its info as of the detach). */
  close(): void;
  /** The process at the end of the attach (exited, or as of the detach); rejects on an error. */
  done: Promise<Proc | undefined>;
}

/** Parses the frames of an upgraded attach socket. The daemon is trusted (it checked the guest's bytes). */
export function openAttach(socket: Socket, head: Buffer): AttachHandle {
  const decoder = new FrameDecoder();
  const pending: AttachOutput[] = [];
  let listener: ((out: AttachOutput) => void) | undefined;
  let iteratorWake: (() => void) | undefined;
  let ended = false;
  let closedByUs = false;
  let settle!: { resolve: (p: Proc | undefined) => void; reject: (e: Error) => void };
  const done = new Promise<Proc | undefined>((resolve, reject) => {
    settle = { resolve, reject };
  });
  done.catch(() => {}); // callers that only iterate must not see an unhandled rejection

  const emit = (out: AttachOutput) => {
    if (listener) listener(out);
    else {
      pending.push(out);
      // Without a listener, the iterator consumes: stop reading until it catches up.
      if (pending.length > 64) socket.pause();
    }
    iteratorWake?.();
  };
  const finish = (result: { proc?: Proc; error?: Error }) => {
    if (ended) return;
    ended = true;
    if (result.error) settle.reject(result.error);
    else settle.resolve(result.proc);
    socket.end();
    iteratorWake?.();
  };
  const onChunk = (chunk: Buffer) => {
    let frames: ReturnType<FrameDecoder['push']>;
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      socket.destroy();
      return finish({ error: new BangerError('internal', `bad frame from the daemon: ${(e as Error).message}`) });
    }
    for (const f of frames) {
      if (f.type === 'D' && (f.stream === 1 || f.stream === 2)) emit({ stream: f.stream === 1 ? 'stdout' : 'stderr', data: f.payload });
      else if (f.type === 'R') {
        let r: { ok?: boolean; proc?: Proc; error?: ErrorBody | string; code?: string };
        try {
          r = JSON.parse(f.payload.toString('utf8'));
        } catch {
          return finish({ error: new BangerError('internal', 'the daemon sent an invalid attach result') });
        }
        if (r.ok) return finish(r.proc ? { proc: r.proc } : {});
        const body = typeof r.error === 'object' && r.error ? r.error : undefined;
        return finish({
          error: body
            ? BangerError.fromBody(body)
            : new BangerError(r.code === 'conflict' ? 'conflict' : 'internal', typeof r.error === 'string' ? r.error : 'attach failed'),
        });
      }
    }
  };
  socket.on('data', onChunk);
  socket.on('error', () => {});
  socket.on('close', () =>
    finish(closedByUs ? {} : { error: new BangerError('unavailable', 'the daemon closed the attach connection', { fix: 'attach again' }) }),
  );
  if (head.length) queueMicrotask(() => onChunk(head));

  return {
    onOutput(l) {
      listener = l;
      for (const out of pending.splice(0)) l(out);
      socket.resume();
    },
    write(data) {
      if (ended) return false;
      let ok = true;
      for (const frame of encodeData(data, 0)) ok = socket.write(frame);
      return ok;
    },
    drain: () => (socket.writableNeedDrain ? new Promise<void>((resolve) => socket.once('drain', () => resolve())) : Promise.resolve()),
    end() {
      if (!ended) socket.write(encodeFrame('E'));
    },
    close() {
      closedByUs = true;
      socket.write(encodeFrame('C'));
      // The daemon answers C with R; if it does not, the socket's end still releases us.
      setTimeout(() => socket.destroy(), 2000).unref();
    },
    done,
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const next = pending.shift();
        if (next) {
          if (pending.length < 16) socket.resume();
          yield next;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => {
          iteratorWake = resolve;
        });
        iteratorWake = undefined;
      }
    },
  };
}
