/**
 * Guest processes: the outcome of a command as a result object (never an exception), and a handle
 * on a running process that any program can obtain again later by id or name.
 */
import { BangerError } from '../api/errors.js';
import type { Proc, ProcResult, ProcStartRequest } from '../api/proc-schemas.js';
import type { GuestPort } from '../api/schemas.js';
import type { AttachHandle } from '../client/attach.js';
import type { BangerClient } from '../client/client.js';
import { abortable, aborted, type CallOptions, EventQueue, sleep, throwIfAborted } from './util.js';

export type { AttachHandle, Proc };

/** The stdin bytes of one write request (the daemon's bound, MAX_STDIN_WRITE). */
const STDIN_CHUNK = 512 * 1024;
/** A wait is asked in slices, so a long wait never depends on one connection staying up for hours. */
const WAIT_SLICE_MS = 30_000;

/**
 * What a finished process produced. `check()` turns a failure into a `process_failed` BangerError
 * when the caller wants one; nothing throws on its own for a non-zero exit.
 */
export class ExecResult {
  readonly exitCode: number | null;
  /** The signal that ended it, without `SIG` ("KILL"), or null. */
  readonly signal: string | null;
  /** Its `timeoutMs` ended it. */
  readonly timedOut: boolean;
  readonly stdout: string;
  readonly stderr: string;
  /** The guest's output cap or `maxBuffer` cut stdout or stderr. */
  readonly truncated: boolean;
  readonly durationMs: number;
  /** Why it never ran: `command_not_found`, `permission_denied`, `exec_failed`; else null. */
  readonly code: string | null;

  constructor(
    result: ProcResult,
    /** The process (id, name, command). */
    readonly process: Proc,
  ) {
    this.exitCode = result.exitCode;
    this.signal = result.signal;
    this.timedOut = result.timedOut;
    this.stdout = result.stdout;
    this.stderr = result.stderr;
    this.truncated = result.truncated;
    this.durationMs = result.durationMs;
    this.code = result.code;
  }

  /** Exit status 0, no signal, no timeout. */
  get ok(): boolean {
    return this.exitCode === 0 && !this.timedOut && this.signal === null && this.code === null;
  }

  /** Returns this result when ok, else throws a `process_failed` BangerError naming why. */
  check(): this {
    if (this.ok) return this;
    const command = describeCommand(this.process);
    const why =
      this.code === 'command_not_found'
        ? 'was not found'
        : this.code
          ? `could not start (${this.code})`
          : this.timedOut
            ? `timed out after ${Math.round(this.durationMs / 100) / 10}s`
            : this.signal
              ? `was killed by SIG${this.signal}`
              : `exited with status ${this.exitCode}`;
    const tail = lastLine(this.stderr);
    throw new BangerError('process_failed', `${command} ${why}${tail ? `: ${tail}` : ''}`, {
      fix: this.code === 'command_not_found' ? 'install it in the guest or check PATH' : 'see result.stderr / result.stdout for its output',
      details: { processId: this.process.id, exitCode: this.exitCode, signal: this.signal, timedOut: this.timedOut },
    });
  }
}

function describeCommand(p: Proc): string {
  const text = p.shell ?? (p.argv ?? []).join(' ');
  return `command ${JSON.stringify(text.length > 120 ? `${text.slice(0, 117)}...` : text)}`;
}

function lastLine(text: string): string {
  const lines = text.trimEnd().split('\n');
  // The guest's bytes go into an error message a program may print: no control or bidi characters.
  const last = (lines[lines.length - 1] ?? '').replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, '').trim();
  return last.length > 200 ? `${last.slice(0, 197)}...` : last;
}

/** Output and the end of a process, as `Process.events()` yields them. */
export type ProcessEvent =
  | { type: 'stdout' | 'stderr'; data: Buffer; offset: number }
  /** Always last (unless aborted); `process` has its exit code or signal. */
  | { type: 'exit'; process: Proc };

export interface EventsOptions extends CallOptions {
  /** Byte offsets to read from (default 0: everything the guest kept). */
  from?: { stdout?: number; stderr?: number };
  /** Keep following until the process ends (default true); false: what there is now, then stop. */
  follow?: boolean;
}

export interface WaitOptions extends CallOptions {
  /** Give up after this long (a `timeout` BangerError; the process keeps running). Default: no limit. */
  timeoutMs?: number;
  /** Bytes of stdout and of stderr kept in the result (default and at most MAX_RESULT_BUFFER each). */
  maxBuffer?: number;
}

/**
 * Output bytes per stream a result can carry: the result is JSON, where a control byte takes six
 * characters, and the client reads at most 64 MiB of it — 2 × 4 MiB × 6 fits. More output: read it
 * by offset with `events()`.
 */
export const MAX_RESULT_BUFFER = 4 * 1024 * 1024;

/** The start request, from a command: a string runs under `sh -c`, an array is an argv. */
export function commandSpec(command: string | readonly string[]): Pick<ProcStartRequest, 'argv' | 'shell'> {
  if (typeof command === 'string') return { shell: command };
  if (!Array.isArray(command) || command.length === 0) throw new BangerError('bad_request', 'a command is a non-empty string or argv array');
  return { argv: [...command] };
}

/** `{KEY: value}` or `['KEY=value']` → the API's list. */
export function envList(env: Record<string, string> | readonly string[] | undefined): string[] | undefined {
  if (env === undefined) return undefined;
  return Array.isArray(env) ? [...env] : Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/**
 * A guest process. It lives in the guest, not in this object: `vm.process(idOrName)` in another
 * program (or after a restart of this one) gives an equivalent handle.
 */
export class Process {
  private stdinOffset: number | undefined;
  private writing: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly client: BangerClient,
    /** The VM's name. */
    readonly vm: string,
    /** `p-…`, chosen by the daemon. */
    readonly id: string,
    /** The name given at spawn, or null. */
    readonly name: string | null,
  ) {}

  /** The process as the guest reports it now (state, exit code, output sizes). */
  info(o: CallOptions = {}): Promise<Proc> {
    return abortable(this.client.process(this.vm, this.id), o.signal);
  }

  /**
   * Its output from the given offsets, then (with `follow`, the default) new output as it comes,
   * then one `exit`. Breaking out of the loop or aborting stops reading (the process keeps running).
   */
  async *events(o: EventsOptions = {}): AsyncGenerator<ProcessEvent> {
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const queue = new EventQueue<ProcessEvent>(4096, () => stop.abort());
    this.client
      .processOutput(
        this.vm,
        this.id,
        { stdoutFrom: o.from?.stdout ?? 0, stderrFrom: o.from?.stderr ?? 0, follow: o.follow ?? true, signal: stop.signal },
        (e) => {
          if (e.type === 'stdout' || e.type === 'stderr') queue.push({ type: e.type, data: Buffer.from(e.data, 'base64'), offset: e.offset });
          else if (e.type === 'exit') queue.push({ type: 'exit', process: e.proc });
        },
      )
      .then(
        () => (o.signal?.aborted ? queue.fail(aborted(o.signal, 'following the process')) : queue.end()),
        (e: unknown) => queue.fail(e),
      );
    try {
      yield* queue.drain();
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      stop.abort();
    }
  }

  /**
   * Appends to its stdin (spawned with `stdin: true`). Writes are sent in order, each at the byte
   * offset after the previous one, so a retried write never doubles bytes.
   */
  write(data: string | Uint8Array, o: CallOptions = {}): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    return this.queueStdin(bytes, false, o.signal);
  }

  /** Closes its stdin (EOF) after everything written. */
  end(o: CallOptions = {}): Promise<void> {
    return this.queueStdin(Buffer.alloc(0), true, o.signal);
  }

  private queueStdin(bytes: Buffer, eof: boolean, signal: AbortSignal | undefined): Promise<void> {
    const next = this.writing.then(async () => {
      throwIfAborted(signal, 'writing stdin');
      if (this.stdinOffset === undefined) this.stdinOffset = (await this.client.process(this.vm, this.id)).stdinBytes;
      let at = 0;
      do {
        const chunk = bytes.subarray(at, at + STDIN_CHUNK);
        const last = at + chunk.length >= bytes.length;
        const r = await this.client.writeProcessStdin(this.vm, this.id, this.stdinOffset, chunk, eof && last);
        this.stdinOffset = r.offset;
        at += chunk.length;
      } while (at < bytes.length);
    });
    this.writing = next.catch(() => {});
    return next;
  }

  /** Sends a signal (a name such as "TERM", "INT", "KILL", or a number) to its process group. */
  async signal(sig: string | number = 'TERM', o: CallOptions = {}): Promise<Proc> {
    return abortable(this.client.signalProcess(this.vm, this.id, sig), o.signal);
  }

  /** SIGKILL to its process group. */
  kill(o: CallOptions = {}): Promise<Proc> {
    return this.signal('KILL', o);
  }

  /** Resizes its terminal (spawned with `pty`). */
  resize(rows: number, cols: number, o: CallOptions = {}): Promise<void> {
    return abortable(this.client.resizeProcess(this.vm, this.id, rows, cols), o.signal);
  }

  /**
   * Waits for its end and gives its result. `timeoutMs` bounds the wait, not the process (a
   * `timeout` BangerError; it keeps running); aborting stops waiting, not the process.
   */
  async wait(o: WaitOptions = {}): Promise<ExecResult> {
    const maxBuffer = o.maxBuffer ?? MAX_RESULT_BUFFER;
    if (!Number.isInteger(maxBuffer) || maxBuffer < 0 || maxBuffer > MAX_RESULT_BUFFER) {
      throw new BangerError('bad_request', `maxBuffer must be an integer from 0 to ${MAX_RESULT_BUFFER}`, {
        fix: 'read larger output by offset with process.events()',
      });
    }
    if (o.timeoutMs !== undefined && !(o.timeoutMs >= 0)) throw new BangerError('bad_request', 'timeoutMs must be a number ≥ 0');
    const deadline = o.timeoutMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + o.timeoutMs;
    for (;;) {
      throwIfAborted(o.signal, 'waiting for the process');
      const slice = Math.max(0, Math.min(WAIT_SLICE_MS, deadline - Date.now()));
      // The signal ends the request itself: an aborted wait leaves no connection parked in the daemon.
      const r = await abortable(this.client.waitProcess(this.vm, this.id, slice, maxBuffer, o.signal), o.signal, 'waiting for the process');
      if (r.result) return new ExecResult(r.result, r.proc);
      if (Date.now() >= deadline)
        throw new BangerError('timeout', `process ${this.id} is still running after ${o.timeoutMs} ms`, {
          fix: 'wait longer, or end it with process.signal() / process.kill()',
        });
    }
  }

  /**
   * A live attach: output from the offsets, `write`/`end` for stdin, `close()` to detach (the
   * process keeps running). One writer at a time.
   */
  attach(o: { from?: { stdout?: number; stderr?: number } } & CallOptions = {}): Promise<AttachHandle> {
    return abortable(this.client.attachProcess(this.vm, this.id, { stdoutFrom: o.from?.stdout ?? 0, stderrFrom: o.from?.stderr ?? 0 }), o.signal);
  }

  /** Removes it and its output from the guest; `kill` ends it first when it still runs. */
  forget(o: { kill?: boolean } & CallOptions = {}): Promise<void> {
    return abortable(this.client.forgetProcess(this.vm, this.id, { kill: !!o.kill }), o.signal);
  }

  /**
   * Resolves once something in the guest listens on TCP `port` (the agent's view of the guest's
   * sockets). Rejects with `process_failed` if this process ends first, `timeout` after timeoutMs
   * (default 60 s).
   */
  async waitForPort(port: number, o: { timeoutMs?: number; intervalMs?: number } & CallOptions = {}): Promise<GuestPort> {
    const deadline = Date.now() + (o.timeoutMs ?? 60_000);
    for (;;) {
      throwIfAborted(o.signal, `waiting for port ${port}`);
      const { ports } = await abortable(this.client.ports(this.vm), o.signal);
      const hit = ports.find((p) => p.port === port && p.proto.startsWith('tcp'));
      if (hit) return hit;
      const p = await abortable(this.client.process(this.vm, this.id), o.signal);
      if (p.state !== 'running')
        throw new BangerError('process_failed', `process ${this.id} ended (${p.state}, exit ${p.exitCode ?? p.signal}) before port ${port} listened`, {
          fix: 'read its output: process.events({ follow: false }) or `banger vm proc logs`',
        });
      if (Date.now() >= deadline) throw new BangerError('timeout', `nothing listened on port ${port} within ${o.timeoutMs ?? 60_000} ms`);
      await sleep(Math.min(o.intervalMs ?? 250, Math.max(0, deadline - Date.now())), o.signal);
    }
  }

  /**
   * Resolves with the first match of `pattern` in its output (stdout and stderr, each read as
   * UTF-8 text from its start). The pattern sees complete lines only (a line still being written
   * could match too early: "listening on 80" of "…8080"), the last 64 KiB of each stream, and the
   * unfinished last line once the process ended. Rejects with `process_failed` if it ends without
   * a match, `timeout` after timeoutMs (default 60 s).
   */
  async waitForLog(pattern: RegExp, o: { timeoutMs?: number; stream?: 'stdout' | 'stderr' | 'both' } & CallOptions = {}): Promise<RegExpExecArray> {
    const re = new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
    const timeoutMs = o.timeoutMs ?? 60_000;
    // AbortSignal.timeout takes a whole number of ms up to 2^32 - 1; anything else is the caller's slip.
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0xffffffff) {
      throw new BangerError('bad_request', `timeoutMs must be a whole number of milliseconds from 0 to ${0xffffffff}`);
    }
    const timer = AbortSignal.timeout(timeoutMs);
    const signal = o.signal ? AbortSignal.any([o.signal, timer]) : timer;
    const text = { stdout: '', stderr: '' };
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    const want = o.stream ?? 'both';
    try {
      for await (const e of this.events({ signal })) {
        if (e.type === 'exit') {
          for (const s of ['stdout', 'stderr'] as const) {
            const m = want === 'both' || want === s ? re.exec(text[s]) : null;
            if (m) return m;
          }
          break;
        }
        if (want !== 'both' && e.type !== want) continue;
        text[e.type] = (text[e.type] + decoders[e.type].decode(e.data, { stream: true })).slice(-64 * 1024);
        const complete = text[e.type].slice(0, text[e.type].lastIndexOf('\n') + 1);
        const m = complete ? re.exec(complete) : null;
        if (m) return m;
      }
    } catch (e) {
      if (timer.aborted && !o.signal?.aborted) throw new BangerError('timeout', `no output matched ${pattern} within ${timeoutMs} ms`);
      throw e;
    }
    throw new BangerError('process_failed', `process ${this.id} ended without output matching ${pattern}`, {
      fix: 'read its output: process.events({ follow: false })',
    });
  }
}
