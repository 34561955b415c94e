/**
 * Host side of the agent's data channels (docs/processes.md, "Data channels"): a pool of
 * sessions, each an exchange of frames (./agent-frames.ts) on a connection of its own.
 *
 * - QEMU: four virtio-serial ports, one Unix socket each (`agent-data-K.sock`). A port outlives
 *   host connections and replies written while no host is connected are lost, so connections are
 *   held and reused; sessions beyond four wait in a queue.
 * - Firecracker: one hybrid-vsock connection per session (`CONNECT 1023`), closed at its end; at
 *   most four at once (the agent serves four), sessions beyond wait in the same queue.
 *
 * Every session starts with `S {nonce, op, …}` and the host discards everything until `A` with
 * that nonce: bytes of an aborted earlier session may still be in flight on a held port.
 *
 * Backpressure both ways: the socket is paused while the consumer's onData promise is pending (so
 * virtio-serial/vsock flow control stalls the guest's writer), and write() resolves only once the
 * socket took the bytes.
 *
 * The guest is hostile: frame lengths are checked before allocation (FrameDecoder), the `A` wait
 * and the wait for `R` after a cancel are bounded, results are parsed with zod by the caller. An
 * accepted session in which the host waits on the guest (a write the socket has not taken, or
 * nothing left to send and no consumer busy) and the guest sends nothing for `idleTimeoutMs` fails
 * with `timeout` and drops the connection: a guest that accepts and then stalls cannot hold a
 * caller (and the VM lock it may run under) forever. Sessions that are idle by design (`output`
 * with follow) opt out and are bounded by their caller's signal.
 */
import net from 'node:net';
import { BangerError } from '../api/errors.js';
import { formatDuration } from '../util/duration.js';
import { encodeData, encodeFrame, type Frame, FrameDecoder, FrameError, type FrameStream } from './agent-frames.js';
import { AcceptedSchema, AGENT_MAX_HANDSHAKE_BYTES, HYBRID_VSOCK_OK, SessionResultSchema } from './agent-protocol.js';

export type DataChannelTarget =
  | { transport: 'virtio-serial'; sockets: string[] }
  | { transport: 'hybrid-vsock'; socketPath: string; port: number; maxSessions?: number };

export interface DataPoolOptions {
  /** How long the guest may take to accept a session (`A`). */
  acceptTimeoutMs?: number;
  /** How long the guest may take to end a cancelled session (`R`) before the connection is dropped. */
  cancelTimeoutMs?: number;
  /** Sessions waiting for a free channel at most. */
  maxQueued?: number;
  /** How long an accepted session may wait on a silent guest (see the module comment). */
  idleTimeoutMs?: number;
}

export interface SessionOptions {
  /** Cancels the session. */
  signal?: AbortSignal | undefined;
  /** The host sends data (write, tar-in, stdin): until `end()` a pause between writes is the host's, not idle. */
  hostSends?: boolean;
  /** false: no idle timeout (a follow that may rightly be silent for hours; bound it with `signal`). */
  idleTimeout?: boolean;
}

export type SessionData = (stream: FrameStream, data: Buffer) => Promise<void> | void;

/** The terminal `R` of a session, `ok: true` (anything else rejects `result`). */
export type SessionResult = { ok: true } & Record<string, unknown>;

export interface DataSession {
  /** Resolves once the guest accepted the session (its `A`). */
  readonly accepted: Promise<void>;
  /** Sends host data (`D` frames, stream 0); resolves when the socket took it. */
  write(data: Buffer): Promise<void>;
  /** End of host data (`E`). */
  end(): Promise<void>;
  /** Asks the guest to end the session (`C`); `result` still settles with its answer. */
  cancel(): void;
  /** The session's `R`: ok:true resolves, ok:false rejects with a BangerError. */
  readonly result: Promise<SessionResult>;
}

const DEFAULT_ACCEPT_MS = 10_000;
const DEFAULT_CANCEL_MS = 5_000;
const DEFAULT_MAX_QUEUED = 1024;
/** Sessions the agent serves at once on its vsock data port (agent/data.c MAX_VSOCK_SESSIONS). */
export const DEFAULT_VSOCK_SESSIONS = 4;
/** A guest silent this long while the host waits on it fails the session (docs/processes.md). */
export const DEFAULT_IDLE_MS = 120_000;
/** Bytes skipped as garbage on one connection before it is dropped (a guest sending only noise). */
const MAX_SKIPPED_BYTES = 64 * 1024 * 1024;

const unavailable = (what: string) =>
  new BangerError('unavailable', what, { fix: 'check the VM with `banger vm health` (the guest agent may be restarting or too old)' });

/**
 * Error from an `R {ok:false}`: the agent's words, and a code the daemon maps to HTTP (the agent's
 * session codes, docs/processes.md "As built": not_found; invalid, symlink, not_a_file and
 * permission_denied → bad_request; cancelled; unavailable (a restarted agent); io_error and
 * tar_failed → internal).
 */
export function sessionError(op: string, r: { error?: string | undefined; code?: string | undefined; stderr?: string | undefined }): BangerError {
  const text = r.error ?? (r.stderr ? r.stderr.trim() : 'failed');
  const code =
    r.code === 'not_found' || /^no such (process|file)|ENOENT|No such file/i.test(text)
      ? 'not_found'
      : r.code === 'conflict' || /already exists|EEXIST|is running/.test(text)
        ? 'conflict'
        : r.code === 'cancelled' || /^cancel/.test(text)
          ? 'cancelled'
          : r.code === 'unavailable'
            ? 'unavailable'
            : ['bad_request', 'invalid', 'symlink', 'not_a_file', 'permission_denied'].includes(r.code ?? '') ||
                /EISDIR|ENOTDIR|ELOOP|EACCES|not a regular file|^invalid|^bad /i.test(text)
              ? 'bad_request'
              : 'internal';
  return new BangerError(code, `the guest agent failed ${op}: ${text}`);
}

/**
 * One connection with frame delivery at the consumer's pace: frames are handed to `sink` one at a
 * time, the socket paused while a sink's promise is pending.
 */
class FrameConnection {
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame[] = [];
  private pumping = false;
  sink: ((frame: Frame) => Promise<void> | void) | null = null;
  onClose: ((err: Error) => void) | null = null;
  closed = false;

  constructor(
    readonly socket: net.Socket,
    rest: Buffer,
  ) {
    socket.on('data', (chunk: Buffer) => this.onChunk(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.fail(unavailable('the guest agent data channel closed')));
    if (rest.length) this.onChunk(rest);
    socket.resume();
  }

  private onChunk(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.fail(new BangerError('internal', e instanceof FrameError ? e.message : String(e)));
      return;
    }
    if (this.decoder.skippedBytes > MAX_SKIPPED_BYTES) {
      this.fail(new BangerError('internal', `the guest sent over ${MAX_SKIPPED_BYTES} bytes that are not frames on a data channel`));
      return;
    }
    this.queue.push(...frames);
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length && !this.closed) {
        const frame = this.queue.shift() as Frame;
        const r = this.sink?.(frame);
        if (r && typeof (r as Promise<void>).then === 'function') {
          this.socket.pause();
          try {
            await r;
          } catch {
            // the sink's owner handles its own failures
          }
        }
      }
    } finally {
      this.pumping = false;
      if (!this.closed) this.socket.resume();
    }
  }

  write(buf: Buffer): Promise<void> {
    if (this.closed) return Promise.reject(unavailable('the guest agent data channel closed'));
    return new Promise<void>((resolve, reject) => {
      this.socket.write(buf, (err) => (err ? reject(unavailable(`writing to the guest agent data channel failed: ${err.message}`)) : resolve()));
    });
  }

  /** Drops frames still queued (a new session on a held connection must not see the old one's). */
  clearQueue(): void {
    this.queue.length = 0;
  }

  fail(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.socket.destroy();
    this.onClose?.(err);
  }
}

function connectUnix(path: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`no connection to the guest agent data channel ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(unavailable(`cannot connect to the guest agent data channel ${path}: ${e.message}`));
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      socket.pause();
      resolve(socket);
    });
  });
}

/** Firecracker's hybrid vsock: `CONNECT <port>\n`, then `OK <host port>\n`; answers the bytes after it. */
async function connectVsock(path: string, port: number, timeoutMs: number): Promise<{ socket: net.Socket; rest: Buffer }> {
  const socket = await connectUnix(path, timeoutMs);
  return new Promise((resolve, reject) => {
    let answer = Buffer.alloc(0);
    const fail = (why: string) => {
      cleanup();
      socket.destroy();
      reject(unavailable(`the guest agent data channel (vsock port ${port}) ${why}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    const onClose = () => fail('closed during CONNECT (is the agent listening?)');
    const onData = (chunk: Buffer) => {
      answer = Buffer.concat([answer, chunk]);
      const nl = answer.indexOf(0x0a);
      if (nl === -1) {
        if (answer.length > AGENT_MAX_HANDSHAKE_BYTES) fail('sent an over-long answer to CONNECT');
        return;
      }
      const line = answer.subarray(0, nl).toString('latin1').replace(/\r$/, '');
      if (!HYBRID_VSOCK_OK.test(line)) return fail(`answered CONNECT with ${JSON.stringify(line.slice(0, AGENT_MAX_HANDSHAKE_BYTES))}`);
      cleanup();
      socket.pause();
      resolve({ socket, rest: answer.subarray(nl + 1) });
    };
    const timer = setTimeout(() => fail(`did not answer CONNECT within ${timeoutMs} ms`), timeoutMs);
    socket.on('error', () => {});
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.resume();
    socket.write(`CONNECT ${port}\n`);
  });
}

interface Slot {
  /** virtio-serial: the port's socket path; vsock: unused. */
  path: string;
  conn: FrameConnection | null;
  busy: boolean;
}

interface Waiter {
  run: (slot: Slot) => void;
  reject: (err: Error) => void;
}

export class AgentDataPool {
  private readonly slots: Slot[];
  private readonly queue: Waiter[] = [];
  private readonly acceptTimeoutMs: number;
  private readonly cancelTimeoutMs: number;
  private readonly maxQueued: number;
  private readonly idleTimeoutMs: number;
  private closed = false;
  /** Sessions run so far (tests: reuse of held connections). */
  sessionsStarted = 0;
  connectionsOpened = 0;

  constructor(
    private readonly target: DataChannelTarget,
    opts: DataPoolOptions = {},
  ) {
    this.acceptTimeoutMs = opts.acceptTimeoutMs ?? DEFAULT_ACCEPT_MS;
    this.cancelTimeoutMs = opts.cancelTimeoutMs ?? DEFAULT_CANCEL_MS;
    this.maxQueued = opts.maxQueued ?? DEFAULT_MAX_QUEUED;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_MS;
    this.slots =
      target.transport === 'virtio-serial'
        ? target.sockets.map((path) => ({ path, conn: null, busy: false }))
        : Array.from({ length: target.maxSessions ?? DEFAULT_VSOCK_SESSIONS }, () => ({ path: target.socketPath, conn: null, busy: false }));
    if (this.slots.length === 0) throw new BangerError('internal', 'a data channel pool needs at least one channel');
  }

  /** Sessions waiting for a free channel. */
  get queued(): number {
    return this.queue.length;
  }

  get busy(): number {
    return this.slots.filter((s) => s.busy).length;
  }

  /**
   * Starts a session: `request` is the `S` frame's JSON (a nonce is added). Guest data frames go to
   * onData, one at a time, at its pace. An abort cancels the session. A bare AbortSignal is the
   * same as `{ signal }`.
   */
  session(request: Record<string, unknown> & { op: string }, onData: SessionData, options?: AbortSignal | SessionOptions): DataSession {
    const opts: SessionOptions = options instanceof AbortSignal ? { signal: options } : (options ?? {});
    const signal = opts.signal;
    let acceptedResolve!: () => void;
    let acceptedReject!: (e: Error) => void;
    const accepted = new Promise<void>((resolve, reject) => {
      acceptedResolve = resolve;
      acceptedReject = reject;
    });
    let resultResolve!: (r: SessionResult) => void;
    let resultReject!: (e: Error) => void;
    const result = new Promise<SessionResult>((resolve, reject) => {
      resultResolve = resolve;
      resultReject = reject;
    });
    accepted.catch(() => {});
    result.catch(() => {});
    // A held port must not wait for the consumer of a session that already ended (or was cancelled).
    let markEnded!: () => void;
    const ended = new Promise<void>((resolve) => {
      markEnded = resolve;
    });

    let conn: FrameConnection | null = null;
    let slot: Slot | null = null;
    let settled = false;
    let cancelled = false;
    let consumerError: Error | undefined;
    let cancelTimer: NodeJS.Timeout | undefined;
    let acceptTimer: NodeJS.Timeout | undefined;
    // Idle accounting (module comment): counted only while the host waits on the guest.
    let isAccepted = false;
    let pendingWrites = 0;
    let consumerBusy = 0;
    let hostEnded = !opts.hostSends;
    let idleTimer: NodeJS.Timeout | undefined;
    const idleMs = opts.idleTimeout === false ? 0 : this.idleTimeoutMs;
    /** Restarts the idle clock (guest activity) or stops it (the host is the slow side). */
    const rearmIdle = () => {
      clearTimeout(idleTimer);
      idleTimer = undefined;
      if (!idleMs || settled || cancelled || !isAccepted) return;
      const waitingOnGuest = pendingWrites > 0 || (consumerBusy === 0 && hostEnded);
      if (!waitingOnGuest) return;
      idleTimer = setTimeout(
        () =>
          settle(
            {
              err: new BangerError(
                'timeout',
                `the guest agent stalled a ${request.op} session: nothing sent or accepted for ${idleMs < 1000 ? `${idleMs} ms` : formatDuration(idleMs)}`,
                {
                  fix: 'check the VM with `banger vm health` and `banger vm logs`',
                },
              ),
            },
            true,
          ),
        idleMs,
      );
    };

    const release = (dropConnection: boolean) => {
      clearTimeout(cancelTimer);
      clearTimeout(acceptTimer);
      clearTimeout(idleTimer);
      signal?.removeEventListener('abort', onAbort);
      if (!slot) return;
      const s = slot;
      slot = null;
      if (s.conn) {
        s.conn.sink = null;
        s.conn.onClose = null;
        if (dropConnection || this.target.transport === 'hybrid-vsock') {
          s.conn.fail(unavailable('session ended'));
          s.conn = null;
        }
      }
      s.busy = false;
      this.next();
    };
    const settle = (outcome: { ok: SessionResult } | { err: Error }, dropConnection = false) => {
      if (settled) return;
      settled = true;
      markEnded();
      if ('err' in outcome || consumerError) {
        const err = consumerError ?? (outcome as { err: Error }).err;
        acceptedReject(err);
        resultReject(err);
      } else {
        acceptedResolve(); // an R before A cannot happen (frames before A are dropped), but never leave it pending
        resultResolve(outcome.ok);
      }
      release(dropConnection);
    };
    const onAbort = () => {
      if (!conn) return settle({ err: new BangerError('cancelled', 'cancelled') });
      doCancel();
    };
    const doCancel = () => {
      if (cancelled || settled || !conn) return;
      cancelled = true;
      clearTimeout(idleTimer); // the cancel's own bound applies now
      // Data after a cancel is not wanted: stop waiting for the consumer, so the guest's R gets through.
      markEnded();
      conn.write(encodeFrame('C')).catch(() => {});
      // A guest that does not answer a cancel loses the connection (a held port is then redialled).
      cancelTimer = setTimeout(
        () => settle({ err: new BangerError('cancelled', `the guest did not end a cancelled ${request.op} session within ${this.cancelTimeoutMs} ms`) }, true),
        this.cancelTimeoutMs,
      );
    };
    if (signal?.aborted) settle({ err: new BangerError('cancelled', 'cancelled') });
    else signal?.addEventListener('abort', onAbort, { once: true });

    // A consumer that fails ends the session: the guest is asked to stop, the result is that failure.
    const consumerFailed = (e: unknown) => {
      consumerError ??= e instanceof Error ? e : new Error(String(e));
      doCancel();
    };
    const deliver = (stream: FrameStream, data: Buffer): Promise<void> | undefined => {
      if (consumerError || cancelled) return undefined;
      try {
        const r = onData(stream, data);
        if (!r) return undefined;
        // The host consumer is the slow side while its promise is pending: not the guest's idle time.
        consumerBusy++;
        rearmIdle();
        return Promise.race([Promise.resolve(r).catch(consumerFailed), ended]).finally(() => {
          consumerBusy--;
          rearmIdle();
        });
      } catch (e) {
        consumerFailed(e);
        return undefined;
      }
    };

    const start = async (s: Slot) => {
      slot = s;
      if (settled) return release(false);
      try {
        if (!s.conn || s.conn.closed) {
          s.conn = null;
          const { socket, rest } =
            this.target.transport === 'virtio-serial'
              ? { socket: await connectUnix(s.path, this.acceptTimeoutMs), rest: Buffer.alloc(0) }
              : await connectVsock(this.target.socketPath, this.target.port, this.acceptTimeoutMs);
          this.connectionsOpened++;
          if (settled || this.closed) {
            socket.destroy();
            return release(false);
          }
          s.conn = new FrameConnection(socket, rest);
        }
      } catch (e) {
        return settle({ err: e as Error });
      }
      const c = s.conn;
      conn = c;
      this.sessionsStarted++;
      c.clearQueue();
      const nonce = process.getBuiltinModule('node:crypto').randomBytes(12).toString('hex');
      c.onClose = (err) => {
        if (slot === s) s.conn = null;
        settle({ err });
      };
      c.sink = (frame) => {
        if (settled) return;
        if (!isAccepted) {
          // Everything before our A is a leftover of an earlier session.
          if (frame.type !== 'A') return;
          const a = parseJson(frame.payload, AcceptedSchema);
          if (!a || a.nonce !== nonce) return;
          isAccepted = true;
          clearTimeout(acceptTimer);
          acceptedResolve();
          rearmIdle();
          return;
        }
        rearmIdle(); // any frame of this session is the guest's activity
        if (frame.type === 'D') return deliver(frame.stream, frame.payload);
        if (frame.type === 'R') {
          const r = parseJson(frame.payload, SessionResultSchema);
          if (!r) return settle({ err: new BangerError('internal', `the guest agent sent an invalid ${request.op} result`) });
          if (r.ok) return settle({ ok: r as SessionResult });
          return settle({ err: sessionError(request.op, r) });
        }
        // A, S, E, C from the guest mid-session: ignored (a confused guest cannot hurt the host here).
        return undefined;
      };
      acceptTimer = setTimeout(
        () => settle({ err: unavailable(`the guest agent did not accept a ${request.op} session within ${this.acceptTimeoutMs} ms`) }, true),
        this.acceptTimeoutMs,
      );
      let start: Buffer;
      try {
        start = encodeFrame('S', JSON.stringify({ ...request, nonce }));
      } catch (e) {
        return settle({ err: new BangerError('bad_request', `the ${request.op} request is too large: ${(e as Error).message}`) });
      }
      c.write(start).catch((e: Error) => settle({ err: e }, true));
    };

    if (!settled) {
      if (this.closed) settle({ err: unavailable('the guest agent channel is closed') });
      else {
        const free = this.slots.find((s) => !s.busy);
        if (free) {
          free.busy = true;
          void start(free);
        } else if (this.queue.length >= this.maxQueued) {
          settle({ err: new BangerError('busy', `${this.maxQueued} guest data sessions are already waiting`, { fix: 'retry later' }) });
        } else {
          const waiter: Waiter = { run: (s) => void start(s), reject: (e) => settle({ err: e }) };
          this.queue.push(waiter);
          // A queued session that is cancelled leaves the queue.
          signal?.addEventListener(
            'abort',
            () => {
              const at = this.queue.indexOf(waiter);
              if (at >= 0) this.queue.splice(at, 1);
            },
            { once: true },
          );
        }
      }
    }

    const sendWhenAccepted = async (buf: Buffer[], isEnd = false) => {
      await accepted;
      if (settled || !conn) throw new BangerError('cancelled', `the ${request.op} session ended`);
      const c = conn;
      for (const b of buf) {
        // A write the socket has not taken is the guest not reading: idle time runs.
        pendingWrites++;
        rearmIdle();
        try {
          await c.write(b);
        } finally {
          pendingWrites--;
        }
      }
      if (isEnd) hostEnded = true;
      rearmIdle(); // the guest took bytes: activity
    };
    return {
      accepted,
      result,
      write: (data) => (data.length ? sendWhenAccepted(encodeData(data, 0)) : Promise.resolve()),
      end: () => sendWhenAccepted([encodeFrame('E')], true),
      cancel: () => {
        if (!conn) settle({ err: new BangerError('cancelled', 'cancelled') });
        else if (!settled) doCancel();
      },
    };
  }

  private next(): void {
    while (this.queue.length) {
      const free = this.slots.find((s) => !s.busy);
      if (!free) return;
      const waiter = this.queue.shift() as Waiter;
      free.busy = true;
      waiter.run(free);
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.queue.splice(0)) w.reject(unavailable('the guest agent channel is closed'));
    for (const s of this.slots) {
      s.conn?.fail(unavailable('the guest agent channel is closed'));
      s.conn = null;
    }
  }
}

function parseJson<T>(payload: Buffer, schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } }): T | null {
  let raw: unknown;
  try {
    raw = JSON.parse(payload.toString('utf8'));
  } catch {
    return null;
  }
  const r = schema.safeParse(raw);
  return r.success ? r.data : null;
}
