/**
 * Host side of the guest agent channel (protocol: ./agent-protocol.ts).
 *
 * One connection is held for the VM's life: under QEMU the Unix socket is a virtio-serial
 * chardev, and replies written while no host is connected are lost, so short connections do not
 * work. A dropped connection fails the calls in flight and the next call reconnects.
 * The guest is untrusted: lines, buffers, waits and every field of every reply are bounded.
 */
import net from 'node:net';
import { BangerError } from '../api/errors.js';
import {
  AGENT_MAX_BUFFERED_BYTES,
  AGENT_MAX_HANDSHAKE_BYTES,
  AGENT_MAX_LINE_BYTES,
  AGENT_METHODS,
  AGENT_VSOCK_PORT,
  type AgentHealth,
  type AgentIdentity,
  type AgentMethod,
  type AgentPorts,
  AgentResponseSchema,
  type AgentResult,
  type AgentStats,
  FREEZE_MAX_PATHS,
  FREEZE_MAX_THAW_AFTER_MS,
  FREEZE_MIN_THAW_AFTER_MS,
  HYBRID_VSOCK_OK,
  type IdentityParams,
  IdentityParamsSchema,
} from './agent-protocol.js';

export interface AgentClientOptions {
  socketPath: string;
  transport: 'virtio-serial' | 'hybrid-vsock';
  /** Guest vsock port for the hybrid-vsock handshake (default 1024). */
  vsockPort?: number;
}

/** Pause between connection attempts and between readiness probes. */
const RETRY_MS = 100;
/** Per-probe wait in waitReady: early writes into a guest port nobody opened yet are dropped. */
const READY_PROBE_MS = 1000;
/** Calls in flight at most (a guest that never answers must not make the host grow). */
const MAX_PENDING = 256;
const DEFAULT_CALL_MS = 5000;

interface Pending {
  method: AgentMethod;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

const cancelled = () => new BangerError('cancelled', 'cancelled');

/**
 * The agent's error text mapped to a code (docs/processes.md): `no such process`/`no such file` →
 * not_found; `already exists`, `is running`, `has ended`, stdin `not a pipe`/`closed` → conflict;
 * `too many processes` → busy; `stdin gap`, `unknown param|user`, `… must be …`, path errnos →
 * bad_request; anything else internal.
 */
export function agentError(method: string, error: string, code?: string): BangerError {
  const mapped =
    code === 'not_found' || /^no such (process|file)|ENOENT|No such file/i.test(error)
      ? 'not_found'
      : /^too many processes/.test(error)
        ? 'busy'
        : code === 'conflict' || /already exists|^running|is running|has ended|is not a pipe|is closed|EEXIST|ENOTEMPTY|EBUSY/.test(error)
          ? 'conflict'
          : /^stdin gap|^unknown (param|user|op)|^invalid|^missing|^bad |^not a |must (be|not|hold)|^env entry|EISDIR|ENOTDIR|ELOOP|EINVAL|ENAMETOOLONG|too (long|large)/i.test(
                error,
              )
            ? 'bad_request'
            : 'internal';
  return new BangerError(mapped, `the guest agent failed ${method}: ${error}`);
}
function checkMountPaths(method: string, paths: string[]): void {
  if (paths.length < 1 || paths.length > FREEZE_MAX_PATHS) {
    throw new BangerError('bad_request', `${method} takes 1 to ${FREEZE_MAX_PATHS} mount points, not ${paths.length}`);
  }
  for (const p of paths) {
    if (!p.startsWith('/') || p.includes('\0') || Buffer.byteLength(p) >= 4096) {
      throw new BangerError('bad_request', `${method}: ${JSON.stringify(p.slice(0, 200))} is not an absolute guest path`);
    }
  }
  if (new Set(paths).size !== paths.length) throw new BangerError('bad_request', `${method}: a mount point repeats`);
}

/** The agent answers with the paths it was given; anything else is a guest that lies. */
function samePaths(method: string, asked: string[], answered: string[]): string[] {
  if (answered.length !== asked.length || answered.some((p, i) => p !== asked[i])) {
    throw new BangerError('internal', `the guest agent answered ${method} for other paths than asked`);
  }
  return answered;
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Waits for p, but no longer than the deadline and not past an abort. */
function bounded<T>(p: Promise<T>, deadline: number, signal: AbortSignal | undefined, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled());
    const finish = (settle: () => void) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      settle();
    };
    const onAbort = () => finish(() => reject(cancelled()));
    const timer = setTimeout(() => finish(() => reject(onTimeout())), Math.max(0, deadline - Date.now()));
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => finish(() => resolve(v)),
      (e: unknown) => finish(() => reject(e)),
    );
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled());
    const onAbort = () => {
      clearTimeout(timer);
      reject(cancelled());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class AgentClient {
  private readonly socketPath: string;
  private readonly transport: 'virtio-serial' | 'hybrid-vsock';
  private readonly vsockPort: number;

  private socket: net.Socket | null = null;
  private dialing: Promise<net.Socket> | null = null;
  private dialDeadline = 0;
  private lastDialError = 'not tried yet';
  private connections = 0;
  private closed = false;

  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  // Line assembly of the current connection.
  private partial: Buffer[] = [];
  private partialBytes = 0;
  private discarding = false;
  private linesOnConnection = 0;

  constructor(opts: AgentClientOptions) {
    this.socketPath = opts.socketPath;
    this.transport = opts.transport;
    this.vsockPort = opts.vsockPort ?? AGENT_VSOCK_PORT;
    if (!Number.isInteger(this.vsockPort) || this.vsockPort < 0 || this.vsockPort > 0xffffffff) {
      throw new BangerError('bad_request', `invalid vsock port ${this.vsockPort}`);
    }
  }

  /** Bytes of a partial line held from the guest (at most AGENT_MAX_BUFFERED_BYTES). */
  get bufferedBytes(): number {
    return this.partialBytes;
  }

  /** Calls waiting for an answer (at most MAX_PENDING). */
  get pendingCalls(): number {
    return this.pending.size;
  }

  /** Whether a connection is currently held. */
  get isConnected(): boolean {
    return this.socket !== null;
  }

  /** Connects (retrying while the socket is missing or refuses) and holds the connection. */
  async connect(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    await this.ensureConnected(Date.now() + timeoutMs, signal);
  }

  /**
   * One request: `call(method, timeoutMs, signal?)`, or with params `call(method, params, {timeoutMs, signal})`.
   * A request line over AGENT_MAX_LINE_BYTES is refused here (`bad_request`), before anything is sent.
   */
  call<M extends AgentMethod>(method: M, timeoutMs: number, signal?: AbortSignal): Promise<AgentResult<M>>;
  call<M extends AgentMethod>(method: M, params: Record<string, unknown>, opts?: { timeoutMs?: number; signal?: AbortSignal }): Promise<AgentResult<M>>;
  call<M extends AgentMethod>(
    method: M,
    a: number | Record<string, unknown>,
    b?: AbortSignal | { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<AgentResult<M>> {
    if (typeof a === 'number') return this.send(method, undefined, a, b as AbortSignal | undefined);
    const opts = (b ?? {}) as { timeoutMs?: number; signal?: AbortSignal };
    return this.send(method, a, opts.timeoutMs ?? DEFAULT_CALL_MS, opts.signal);
  }

  private async send<M extends AgentMethod>(
    method: M,
    params: Record<string, unknown> | undefined,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<AgentResult<M>> {
    const line = `${JSON.stringify(params === undefined ? { id: 0, method } : { id: 0, method, params })}`;
    // The id is at most 16 digits: check the line's size before taking one.
    if (Buffer.byteLength(line) + 16 > AGENT_MAX_LINE_BYTES) {
      throw new BangerError('bad_request', `the ${method} request is over ${AGENT_MAX_LINE_BYTES} bytes`, {
        fix: 'shorten the command line, environment or path (or pass long input through stdin)',
      });
    }
    const deadline = Date.now() + timeoutMs;
    const socket = await this.ensureConnected(deadline, signal);
    if (socket !== this.socket) throw new BangerError('unavailable', `the connection to the guest agent on ${this.socketPath} closed`);
    if (this.pending.size >= MAX_PENDING) {
      throw new BangerError('busy', `${MAX_PENDING} calls to the guest agent on ${this.socketPath} are already waiting`);
    }
    const id = this.nextId++;
    const answer = new Promise<unknown>((resolve, reject) => {
      this.pending.set(id, { method, resolve, reject });
    });
    socket.write(`${JSON.stringify(params === undefined ? { id, method } : { id, method, params })}\n`);
    try {
      return (await bounded(
        answer,
        deadline,
        signal,
        () => new BangerError('timeout', `the guest agent on ${this.socketPath} did not answer ${method} within ${timeoutMs} ms`),
      )) as AgentResult<M>;
    } finally {
      // A late reply then finds no id and is ignored.
      this.pending.delete(id);
    }
  }

  health(timeoutMs = DEFAULT_CALL_MS): Promise<AgentHealth> {
    return this.call('health', timeoutMs);
  }
  ports(timeoutMs = DEFAULT_CALL_MS): Promise<AgentPorts> {
    return this.call('ports', timeoutMs);
  }
  stats(timeoutMs = DEFAULT_CALL_MS): Promise<AgentStats> {
    return this.call('stats', timeoutMs);
  }
  async ping(timeoutMs = DEFAULT_CALL_MS): Promise<void> {
    await this.call('ping', timeoutMs);
  }
  async poweroff(timeoutMs = DEFAULT_CALL_MS): Promise<void> {
    await this.call('poweroff', timeoutMs);
  }

  /**
   * Re-identifies a restored or cloned guest (clock, entropy, hostname, machine-id, network,
   * generation; docs/processes.md "Warm start"). The params are checked here first (`bad_request`
   * before anything is sent); every step in the guest is idempotent, so a failed call is retried whole.
   */
  async identitySet(params: IdentityParams, timeoutMs = DEFAULT_CALL_MS): Promise<AgentIdentity> {
    const checked = IdentityParamsSchema.safeParse(params);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      const where = issue?.path.join('.') || 'params';
      const what = issue?.code === 'unrecognized_keys' ? `unknown param ${issue.keys.join(', ')}` : issue?.message;
      throw new BangerError('bad_request', `invalid identity.set params at ${where}: ${what}`);
    }
    const result = await this.call('identity.set', checked.data, { timeoutMs });
    if (checked.data.generation !== undefined && result.generation !== checked.data.generation) {
      throw new BangerError('internal', `the guest agent answered identity.set with generation ${result.generation}, not ${checked.data.generation}`);
    }
    return result;
  }

  /**
   * Syncs and freezes the guest filesystems mounted at `paths` (in order; all or none). The guest
   * thaws them by itself after thawAfterMs unless thawFilesystems comes first. Returns the paths.
   */
  async freezeFilesystems(paths: string[], thawAfterMs: number, timeoutMs = DEFAULT_CALL_MS): Promise<string[]> {
    checkMountPaths('fs.freeze', paths);
    if (!Number.isInteger(thawAfterMs) || thawAfterMs < FREEZE_MIN_THAW_AFTER_MS || thawAfterMs > FREEZE_MAX_THAW_AFTER_MS) {
      throw new BangerError('bad_request', `thaw-after time ${thawAfterMs} ms is outside ${FREEZE_MIN_THAW_AFTER_MS}..${FREEZE_MAX_THAW_AFTER_MS}`);
    }
    const r = await this.call('fs.freeze', { paths, thaw_after_ms: thawAfterMs }, { timeoutMs });
    return samePaths('fs.freeze', paths, r.frozen);
  }

  /** Thaws the guest filesystems mounted at `paths` (one that is not frozen is fine). Returns the paths. */
  async thawFilesystems(paths: string[], timeoutMs = DEFAULT_CALL_MS): Promise<string[]> {
    checkMountPaths('fs.thaw', paths);
    const r = await this.call('fs.thaw', { paths }, { timeoutMs });
    return samePaths('fs.thaw', paths, r.thawed);
  }

  /** Probes `health` until the agent says ready; each probe is resent because early writes can be dropped. */
  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer yet';
    for (;;) {
      if (signal?.aborted) throw cancelled();
      if (this.closed) throw this.closedError();
      if (Date.now() >= deadline) {
        throw new BangerError('timeout', `the guest agent on ${this.socketPath} was not ready within ${timeoutMs} ms (last: ${last})`);
      }
      try {
        await this.ensureConnected(deadline, signal);
        const h = await this.call('health', Math.min(READY_PROBE_MS, Math.max(1, deadline - Date.now())), signal);
        if (h.ready) return;
        last = 'the agent reported ready=false';
      } catch (e) {
        if (signal?.aborted) throw cancelled();
        last = message(e);
      }
      await sleep(Math.min(RETRY_MS, Math.max(0, deadline - Date.now())), signal);
    }
  }

  close(): void {
    this.closed = true;
    const s = this.socket;
    this.socket = null;
    s?.destroy();
    this.failAll(this.closedError());
  }

  // ---- connection ----------------------------------------------------------------------------

  private closedError(): BangerError {
    return new BangerError('unavailable', `the agent client for ${this.socketPath} is closed`);
  }

  private ensureConnected(deadline: number, signal?: AbortSignal): Promise<net.Socket> {
    if (this.closed) return Promise.reject(this.closedError());
    if (this.socket) return Promise.resolve(this.socket);
    // One dial loop serves all callers; it runs until the latest deadline any of them asked for.
    this.dialDeadline = Math.max(this.dialDeadline, deadline);
    if (!this.dialing) {
      const dialing = this.dial().finally(() => {
        this.dialing = null;
        this.dialDeadline = 0;
      });
      dialing.catch(() => {}); // callers that gave up must not leave an unhandled rejection
      this.dialing = dialing;
    }
    const started = Date.now();
    return bounded(
      this.dialing,
      deadline,
      signal,
      () =>
        new BangerError(
          'timeout',
          `cannot connect to the guest agent on ${this.socketPath} within ${Math.max(0, deadline - started)} ms: ${this.lastDialError}`,
        ),
    );
  }

  private async dial(): Promise<net.Socket> {
    for (;;) {
      if (this.closed) throw this.closedError();
      try {
        const { socket, rest } = await this.attempt(Math.max(1, this.dialDeadline - Date.now()));
        return this.adopt(socket, rest);
      } catch (e) {
        if (this.closed) throw this.closedError();
        this.lastDialError = message(e);
      }
      const remaining = this.dialDeadline - Date.now();
      if (remaining <= 0) {
        throw new BangerError('timeout', `cannot connect to the guest agent on ${this.socketPath}: ${this.lastDialError}`);
      }
      await sleep(Math.min(RETRY_MS, remaining));
    }
  }

  /** One connection attempt, including the hybrid-vsock handshake. Resolves with the socket paused. */
  private attempt(timeoutMs: number): Promise<{ socket: net.Socket; rest: Buffer }> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(this.socketPath);
      socket.on('error', () => {}); // errors are always followed by 'close', which is handled
      let answer = Buffer.alloc(0);
      const stop = () => {
        clearTimeout(timer);
        socket.off('error', onError);
        socket.off('close', onClose);
        socket.off('data', onData);
      };
      const fail = (err: Error) => {
        stop();
        socket.destroy();
        reject(err);
      };
      const succeed = (rest: Buffer) => {
        stop();
        socket.pause();
        resolve({ socket, rest });
      };
      const onError = (e: Error) => fail(e);
      const onClose = () => fail(new Error(this.transport === 'hybrid-vsock' ? `closed during CONNECT ${this.vsockPort} (is the agent listening?)` : 'closed'));
      const onData = (chunk: Buffer) => {
        answer = Buffer.concat([answer, chunk]);
        const nl = answer.indexOf(0x0a);
        if (nl === -1) {
          if (answer.length > AGENT_MAX_HANDSHAKE_BYTES) fail(new Error('over-long answer to CONNECT'));
          return;
        }
        const line = answer
          .subarray(0, Math.min(nl, AGENT_MAX_HANDSHAKE_BYTES + 1))
          .toString('latin1')
          .replace(/\r$/, '');
        if (!HYBRID_VSOCK_OK.test(line)) return fail(new Error(`unexpected answer to CONNECT ${this.vsockPort}: ${JSON.stringify(line)}`));
        succeed(answer.subarray(nl + 1));
      };
      const timer = setTimeout(() => fail(new Error(`no connection within ${timeoutMs} ms`)), timeoutMs);
      socket.on('error', onError);
      socket.on('close', onClose);
      socket.once('connect', () => {
        if (this.transport === 'virtio-serial') return succeed(Buffer.alloc(0));
        socket.on('data', onData);
        socket.write(`CONNECT ${this.vsockPort}\n`);
      });
    });
  }

  private adopt(socket: net.Socket, rest: Buffer): net.Socket {
    if (this.closed) {
      socket.destroy();
      throw this.closedError();
    }
    this.socket = socket;
    this.connections++;
    this.resetLine();
    this.discarding = false;
    this.linesOnConnection = 0;
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) this.onData(chunk);
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.resetLine();
      this.failAll(new BangerError('unavailable', `the connection to the guest agent on ${this.socketPath} closed`));
    });
    if (rest.length > 0) this.onData(rest);
    socket.resume();
    return socket;
  }

  // ---- framing -------------------------------------------------------------------------------

  private resetLine(): void {
    this.partial = [];
    this.partialBytes = 0;
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.discarding) {
        if (this.partialBytes + (end - start) > Math.min(AGENT_MAX_LINE_BYTES, AGENT_MAX_BUFFERED_BYTES)) {
          // Drop what we have and skip to the next newline: the next line starts clean.
          this.resetLine();
          this.discarding = true;
          this.failAll(new BangerError('internal', `the guest agent on ${this.socketPath} sent a line over ${AGENT_MAX_LINE_BYTES} bytes`));
        } else if (end > start) {
          this.partial.push(Buffer.from(chunk.subarray(start, end))); // a copy: do not pin whole chunks
          this.partialBytes += end - start;
        }
      }
      if (nl === -1) return;
      if (this.discarding) {
        this.discarding = false;
      } else {
        const line = Buffer.concat(this.partial, this.partialBytes);
        this.resetLine();
        this.onLine(line);
      }
      start = nl + 1;
    }
  }

  private onLine(line: Buffer): void {
    const text = line.toString('utf8').trim();
    if (!text) return;
    const first = this.linesOnConnection++ === 0;
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      this.badLine(first, 'invalid JSON');
      return;
    }
    const envelope = AgentResponseSchema.safeParse(raw);
    if (!envelope.success) {
      this.badLine(first, 'a malformed response');
      return;
    }
    const reply = envelope.data;
    const p = this.pending.get(reply.id);
    if (!p) return; // a late reply to a call that timed out, or id 0 (a request the agent could not read)
    this.pending.delete(reply.id);
    if (!reply.ok) {
      p.reject(agentError(p.method, reply.error));
      return;
    }
    const result = AGENT_METHODS[p.method].safeParse(reply.result);
    if (!result.success) {
      const issue = result.error.issues[0];
      const where = issue?.path.length ? ` at ${issue.path.join('.')}` : '';
      p.reject(new BangerError('internal', `the guest agent sent an invalid ${p.method} result${where}: ${issue?.message ?? 'invalid'}`));
      return;
    }
    p.resolve(result.data);
  }

  private badLine(firstOnConnection: boolean, what: string): void {
    // A virtio-serial port outlives host connections: a reply the guest was writing when the last
    // connection dropped can arrive, cut, as the first line of the next one.
    if (firstOnConnection && this.connections > 1 && this.transport === 'virtio-serial') return;
    this.failAll(new BangerError('internal', `the guest agent on ${this.socketPath} sent ${what}`));
  }

  private failAll(err: Error): void {
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const p of calls) p.reject(err);
  }
}
