/**
 * The real GuestChannel: the agent's control channel (./agent-client.ts, small requests) plus its
 * data channels (./agent-data.ts, output, attach, files and tar streams). Contract:
 * docs/processes.md. Everything the guest answers is validated by the schemas of
 * ./agent-protocol.ts before it reaches a caller.
 */
import { Readable } from 'node:stream';
import { BangerError } from '../api/errors.js';
import type { AgentClient } from './agent-client.js';
import type { AgentDataPool, DataSession } from './agent-data.js';
import { type AgentProcInfo, OutputResultSchema, ReadResultSchema, TarResultSchema, WriteResultSchema } from './agent-protocol.js';
import type { GuestChannel, GuestDirEntry, GuestProc, GuestProcSpec, GuestStat, OutputOptions, OutputStream } from './guest-channel.js';

/** Decoded stdin bytes per `proc.stdin` request: base64 grows them by 4/3 and the request line is at most 64 KiB. */
export const STDIN_CHUNK_BYTES = 32 * 1024;
const CALL_MS = 10_000;

/** The agent's snake_case info as the host's GuestProc. */
export function guestProc(p: AgentProcInfo): GuestProc {
  return {
    id: p.id,
    name: p.name,
    argv: p.argv,
    shell: p.shell,
    pid: p.pid,
    pty: p.pty,
    state: p.state,
    exitCode: p.exit_code,
    signal: p.signal,
    timedOut: p.timed_out,
    code: p.code === '' ? null : p.code,
    startedMs: p.started_ms,
    endedMs: p.ended_ms,
    stdoutBytes: p.stdout_bytes,
    stderrBytes: p.stderr_bytes,
    truncated: p.truncated,
    stdin: p.stdin,
    stdinBytes: p.stdin_bytes,
  };
}

type AgentStat = { type: GuestStat['type']; mode: number; size: number; mtime_ms: number };

function procParams(spec: GuestProcSpec): Record<string, unknown> {
  const p: Record<string, unknown> = { id: spec.id };
  if (spec.name !== undefined) p.name = spec.name;
  if (spec.argv !== undefined) p.argv = spec.argv;
  if (spec.shell !== undefined) p.shell = spec.shell;
  if (spec.cwd !== undefined) p.cwd = spec.cwd;
  if (spec.env !== undefined) p.env = spec.env;
  if (spec.user !== undefined) p.user = spec.user;
  if (spec.stdin !== undefined) p.stdin = spec.stdin;
  if (spec.pty !== undefined) p.pty = { rows: spec.pty.rows, cols: spec.pty.cols };
  if (spec.timeoutMs !== undefined) p.timeout_ms = spec.timeoutMs;
  if (spec.outputLimit !== undefined) p.output_limit = spec.outputLimit;
  return p;
}

function parseResult<T>(op: string, schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } }, r: unknown): T {
  const parsed = schema.safeParse(r);
  if (!parsed.success) throw new BangerError('internal', `the guest agent sent an invalid ${op} result`);
  return parsed.data;
}

/** Feeds a Readable/iterable into a session's host data, then `E`; a failure cancels the session. */
async function feed(session: DataSession, data: AsyncIterable<Buffer | string | Uint8Array>): Promise<void> {
  try {
    for await (const chunk of data) await session.write(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    await session.end();
  } catch (e) {
    session.cancel();
    throw e;
  }
}

/** A Readable fed by a session's D frames at the reader's pace (onData waits while the Readable is full). */
function sessionReadable(): { stream: Readable; push: (data: Buffer) => Promise<void> | undefined } {
  let wake: (() => void) | null = null;
  const stream = new Readable({
    highWaterMark: 1024 * 1024,
    read() {
      const w = wake;
      wake = null;
      w?.();
    },
  });
  // The guest's failure also rejects `done`: a stream nobody listens to yet must not crash the daemon.
  stream.on('error', () => {});
  return {
    stream,
    push: (data) => {
      if (stream.destroyed) return undefined;
      if (stream.push(data)) return undefined;
      return new Promise<void>((resolve) => {
        wake = resolve;
        stream.once('close', resolve);
      });
    },
  };
}

export class AgentGuestChannel implements GuestChannel {
  constructor(
    private readonly control: AgentClient,
    private readonly data: AgentDataPool,
  ) {}

  startProcess = async (spec: GuestProcSpec): Promise<GuestProc> => guestProc(await this.control.call('proc.start', procParams(spec), { timeoutMs: CALL_MS }));
  listProcesses = async (): Promise<GuestProc[]> => (await this.control.call('proc.list', {}, { timeoutMs: CALL_MS })).procs.map(guestProc);
  showProcess = async (id: string): Promise<GuestProc> => guestProc(await this.control.call('proc.show', { id }, { timeoutMs: CALL_MS }));
  signalProcess = async (id: string, signal: number): Promise<GuestProc> =>
    guestProc(await this.control.call('proc.signal', { id, signal }, { timeoutMs: CALL_MS }));
  resizeProcess = async (id: string, rows: number, cols: number): Promise<void> => {
    await this.control.call('proc.resize', { id, rows, cols }, { timeoutMs: CALL_MS });
  };

  async writeStdin(id: string, offset: number, data: Buffer): Promise<number> {
    let total = offset;
    if (data.length === 0) return (await this.control.call('proc.stdin', { id, offset, data: '' }, { timeoutMs: CALL_MS })).offset;
    for (let at = 0; at < data.length; at += STDIN_CHUNK_BYTES) {
      const chunk = data.subarray(at, at + STDIN_CHUNK_BYTES);
      total = (await this.control.call('proc.stdin', { id, offset: offset + at, data: chunk.toString('base64') }, { timeoutMs: CALL_MS })).offset;
    }
    return total;
  }
  closeStdin = async (id: string): Promise<number> => (await this.control.call('proc.eof', { id }, { timeoutMs: CALL_MS })).offset;
  forgetProcess = async (id: string): Promise<void> => {
    await this.control.call('proc.forget', { id }, { timeoutMs: CALL_MS });
  };

  async output(id: string, opts: OutputOptions, onData: (stream: OutputStream, data: Buffer) => Promise<void> | void): Promise<GuestProc> {
    const session = this.data.session(
      { op: 'output', id, stdout_from: opts.stdoutFrom, stderr_from: opts.stderrFrom, follow: opts.follow, stdin: !!opts.stdin },
      (stream, data) => (stream === 1 ? onData('stdout', data) : stream === 2 ? onData('stderr', data) : undefined),
      // A follow may rightly be silent for hours: bounded by its caller's signal, not the idle timeout.
      { signal: opts.signal, hostSends: !!opts.stdin, idleTimeout: !opts.follow },
    );
    if (opts.stdin) {
      // Stdin failures (the session ended first) do not fail the output: its R says how it ended.
      feed(session, opts.stdin).catch(() => {});
    }
    return guestProc(parseResult('output', OutputResultSchema, await session.result).proc);
  }

  async readFile(path: string, signal?: AbortSignal): Promise<{ stream: Readable; done: Promise<{ size: number; mode: number }> }> {
    const { stream, push } = sessionReadable();
    const session = this.data.session({ op: 'read', path }, (_s, data) => push(data), signal);
    stream.once('close', () => {
      if (!stream.readableEnded) session.cancel();
    });
    await session.accepted;
    const done = session.result.then(
      (r) => {
        const ok = parseResult('read', ReadResultSchema, r);
        stream.push(null);
        return { size: ok.size, mode: ok.mode };
      },
      (e: Error) => {
        stream.destroy(e);
        throw e;
      },
    );
    done.catch(() => {});
    return { stream, done };
  }

  async writeFile(path: string, data: Readable, opts: { mode: number; mkdirs: boolean; signal?: AbortSignal }): Promise<{ size: number }> {
    const session = this.data.session({ op: 'write', path, mode: opts.mode, mkdirs: opts.mkdirs }, () => undefined, {
      signal: opts.signal,
      hostSends: true,
    });
    const fed = feed(session, data);
    fed.catch(() => {});
    const r = parseResult('write', WriteResultSchema, await session.result);
    await fed;
    return { size: r.size };
  }

  async tarOut(path: string, signal?: AbortSignal): Promise<{ stream: Readable; done: Promise<void> }> {
    const { stream, push } = sessionReadable();
    const session = this.data.session({ op: 'tar-out', path }, (_s, data) => push(data), signal);
    stream.once('close', () => {
      if (!stream.readableEnded) session.cancel();
    });
    await session.accepted;
    const done = session.result.then(
      (r) => {
        const ok = parseResult('tar-out', TarResultSchema, r);
        if (ok.exit_code) {
          const err = new BangerError('internal', `tar in the guest exited ${ok.exit_code}: ${(ok.stderr ?? '').trim().slice(0, 1000)}`);
          stream.destroy(err);
          throw err;
        }
        stream.push(null);
      },
      (e: Error) => {
        stream.destroy(e);
        throw e;
      },
    );
    done.catch(() => {});
    return { stream, done };
  }

  async tarIn(path: string, data: Readable, opts: { sameOwner?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const session = this.data.session({ op: 'tar-in', path, ...(opts.sameOwner ? { same_owner: true } : {}) }, () => undefined, {
      signal: opts.signal,
      hostSends: true,
    });
    const fed = feed(session, data);
    fed.catch(() => {});
    const ok = parseResult('tar-in', TarResultSchema, await session.result);
    await fed;
    if (ok.exit_code) throw new BangerError('internal', `tar in the guest exited ${ok.exit_code}: ${(ok.stderr ?? '').trim().slice(0, 1000)}`);
  }

  async pipeIn(argv: string[], cwd: string, data: Readable, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const session = this.data.session({ op: 'pipe-in', argv, cwd }, () => undefined, { signal: opts.signal, hostSends: true });
    const fed = feed(session, data);
    fed.catch(() => {});
    parseResult('pipe-in', TarResultSchema, await session.result);
    await fed;
  }

  stat = async (path: string): Promise<GuestStat> => {
    const s = await this.control.call('fs.stat', { path }, { timeoutMs: CALL_MS });
    return { type: s.type, mode: s.mode, size: s.size, mtimeMs: s.mtime_ms, uid: s.uid, gid: s.gid, linkTarget: s.link_target ?? null };
  };
  list = async (path: string): Promise<{ entries: GuestDirEntry[]; truncated: boolean }> => {
    const r = await this.control.call('fs.list', { path }, { timeoutMs: CALL_MS });
    const entry = (e: AgentStat & { name: string }): GuestDirEntry => ({ name: e.name, type: e.type, mode: e.mode, size: e.size, mtimeMs: e.mtime_ms });
    return { entries: r.entries.map(entry), truncated: r.truncated };
  };
  mkdir = async (path: string, opts: { mode?: number; parents?: boolean } = {}): Promise<void> => {
    await this.control.call(
      'fs.mkdir',
      { path, ...(opts.mode !== undefined ? { mode: opts.mode } : {}), ...(opts.parents ? { parents: true } : {}) },
      { timeoutMs: CALL_MS },
    );
  };
  move = async (from: string, to: string, opts: { overwrite?: boolean } = {}): Promise<void> => {
    await this.control.call('fs.move', { from, to, ...(opts.overwrite ? { overwrite: true } : {}) }, { timeoutMs: CALL_MS });
  };
  remove = async (path: string, opts: { recursive?: boolean } = {}): Promise<void> => {
    await this.control.call('fs.remove', { path, ...(opts.recursive ? { recursive: true } : {}) }, { timeoutMs: CALL_MS });
  };
}
