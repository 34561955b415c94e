/**
 * Processes in running guests (docs/processes.md, "Daemon API"). The daemon keeps no process
 * state it cannot rebuild: ids, names, output and exits live in the guest, behind the VM's
 * GuestChannel; what this service holds is which attach currently writes a process's stdin.
 *
 * Other services (files, workspaces, file sync) reach the guest through `guest(ref)` and run
 * commands through `exec(ref, spec, opts)`.
 */
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BangerError } from '../../api/errors.js';
import { DEFAULT_MAX_BUFFER, type Proc, type ProcResult } from '../../api/proc-schemas.js';
import type { GuestChannel, GuestProc, GuestProcSpec, OutputStream } from '../../guest/guest-channel.js';
import { assembleResult, BoundedBuffer, checkProcRef, findProc, isProcId, newProcId, parseSignal, procNotFound, toApiProc } from './proc-logic.js';

export interface ProcessServiceDeps {
  /** The channel of a running VM (`conflict` otherwise); from VmService. */
  vmGuest(ref: string): Promise<{ vm: { id: string; name: string }; channel: GuestChannel }>;
  /** Marks a VM in use while output is followed (auto-stop leaves it alone); returns the release. */
  inUse?(vmId: string): () => void;
  log: Logger;
}

/** A process to start: the guest spec without its id (the service chooses it). */
export type ExecSpec = Omit<GuestProcSpec, 'id'> & { id?: string };

export interface ExecOptions {
  /** Fed to the process's stdin (then EOF); the process gets a pipe. Without it stdin is /dev/null unless spec.stdin says pipe. */
  stdin?: Buffer | Readable;
  /** Bytes of stdout and of stderr kept (default 16 MiB each). */
  maxBuffer?: number;
  /** Aborting stops waiting; the process keeps running in the guest (kill it with signal()). */
  signal?: AbortSignal;
  /** Called with output as it arrives (besides being buffered). */
  onOutput?: (stream: OutputStream, data: Buffer, offset: number) => Promise<void> | void;
  /** Called once the guest started it (its id, to clean up after a wait that failed). */
  onStarted?: (proc: GuestProc) => void;
}

export interface ProcTarget {
  vm: { id: string; name: string };
  channel: GuestChannel;
  proc: GuestProc;
}

export class ProcessService {
  /** `vmId/procId` of the attaches that write stdin (one writer at a time). */
  private readonly writers = new Set<string>();

  constructor(private readonly d: ProcessServiceDeps) {}

  /** The GuestChannel of a running VM; `conflict` (naming `banger vm start`) when it is not running. */
  async guest(ref: string): Promise<GuestChannel> {
    return (await this.d.vmGuest(ref)).channel;
  }

  async list(ref: string): Promise<Proc[]> {
    const { channel } = await this.d.vmGuest(ref);
    return (await channel.listProcesses()).map(toApiProc);
  }

  /** Resolves a process by id or name. */
  async target(ref: string, procRef: string): Promise<ProcTarget> {
    checkProcRef(procRef);
    const { vm, channel } = await this.d.vmGuest(ref);
    if (isProcId(procRef)) {
      try {
        return { vm, channel, proc: await channel.showProcess(procRef) };
      } catch (e) {
        if (!(e instanceof BangerError && e.code === 'not_found')) throw e;
      }
    }
    const proc = findProc(await channel.listProcesses(), procRef);
    if (!proc) throw procNotFound(vm.name, procRef);
    return { vm, channel, proc };
  }

  async show(ref: string, procRef: string): Promise<Proc> {
    return toApiProc((await this.target(ref, procRef)).proc);
  }

  /** Starts a process and answers at once. A name used by a running process is refused. */
  async start(ref: string, spec: ExecSpec): Promise<ProcTarget> {
    const { vm, channel } = await this.d.vmGuest(ref);
    if (spec.name !== undefined) {
      const running = (await channel.listProcesses()).find((p) => p.name === spec.name && p.state === 'running');
      if (running) {
        throw new BangerError('conflict', `process name "${spec.name}" is in use in VM ${vm.name} (${running.id}, running)`, {
          fix: `choose another name, or stop it: banger vm proc kill ${vm.name} ${spec.name}`,
        });
      }
    }
    const id = spec.id ?? newProcId();
    const proc = await channel.startProcess({ ...spec, id });
    return { vm, channel, proc };
  }

  /**
   * Follows a process's output from the offsets, in order per stream, at onData's pace; resolves
   * with its info when the session ends (follow: after its exit and last byte).
   */
  async follow(
    t: Pick<ProcTarget, 'channel' | 'proc'> & { vm?: ProcTarget['vm'] },
    opts: { stdoutFrom: number; stderrFrom: number; follow: boolean; signal?: AbortSignal; stdin?: AsyncIterable<Buffer> },
    onData: (stream: OutputStream, data: Buffer, offset: number) => Promise<void> | void,
  ): Promise<GuestProc> {
    const offsets = { stdout: opts.stdoutFrom, stderr: opts.stderrFrom };
    // A client following a long build is using the VM: auto_stop_stale_after must not stop it.
    const release = t.vm ? this.d.inUse?.(t.vm.id) : undefined;
    try {
      return await this.output(t, opts, offsets, onData);
    } finally {
      release?.();
    }
  }

  private output(
    t: Pick<ProcTarget, 'channel' | 'proc'>,
    opts: { stdoutFrom: number; stderrFrom: number; follow: boolean; signal?: AbortSignal; stdin?: AsyncIterable<Buffer> },
    offsets: { stdout: number; stderr: number },
    onData: (stream: OutputStream, data: Buffer, offset: number) => Promise<void> | void,
  ): Promise<GuestProc> {
    return t.channel.output(
      t.proc.id,
      {
        stdoutFrom: opts.stdoutFrom,
        stderrFrom: opts.stderrFrom,
        follow: opts.follow,
        ...(opts.signal ? { signal: opts.signal } : {}),
        ...(opts.stdin ? { stdin: opts.stdin } : {}),
      },
      (stream, data) => {
        const at = offsets[stream];
        offsets[stream] += data.length;
        return onData(stream, data, at);
      },
    );
  }

  /** Waits for the end of a process and buffers its output from offset 0. */
  async collect(
    t: Pick<ProcTarget, 'channel' | 'proc'> & { vm?: ProcTarget['vm'] },
    opts: { maxBuffer?: number; signal?: AbortSignal; stdin?: AsyncIterable<Buffer>; onOutput?: ExecOptions['onOutput'] },
  ): Promise<{ proc: GuestProc; result: ProcResult }> {
    const max = opts.maxBuffer ?? DEFAULT_MAX_BUFFER;
    const out = new BoundedBuffer(max);
    const err = new BoundedBuffer(max);
    let proc = await this.follow(
      t,
      { stdoutFrom: 0, stderrFrom: 0, follow: true, ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.stdin ? { stdin: opts.stdin } : {}) },
      (stream, data, offset) => {
        (stream === 'stdout' ? out : err).push(data);
        return opts.onOutput?.(stream, data, offset);
      },
    );
    if (proc.state === 'running') {
      // A cancelled follow (the caller left, or a wait's timeout) ends with the process still running.
      if (opts.signal?.aborted) throw new BangerError('cancelled', `stopped waiting for process ${t.proc.id}; it keeps running`);
      proc = await t.channel.showProcess(t.proc.id);
      if (proc.state === 'running') throw new BangerError('internal', `the guest ended the output of ${t.proc.id} before the process ended`);
    }
    return { proc, result: assembleResult(proc, out, err) };
  }

  /** Runs a process to its end: `{proc, result}` (the convenience other services use). */
  async exec(ref: string, spec: ExecSpec, opts: ExecOptions = {}): Promise<{ proc: GuestProc; result: ProcResult }> {
    const t = await this.start(ref, opts.stdin !== undefined ? { ...spec, stdin: 'pipe' } : spec);
    opts.onStarted?.(t.proc);
    const stdin = opts.stdin === undefined ? undefined : Buffer.isBuffer(opts.stdin) ? Readable.from([opts.stdin]) : opts.stdin;
    return this.collect(t, {
      ...(opts.maxBuffer !== undefined ? { maxBuffer: opts.maxBuffer } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(stdin ? { stdin: stdin as AsyncIterable<Buffer> } : {}),
      ...(opts.onOutput ? { onOutput: opts.onOutput } : {}),
    });
  }

  /** Waits at most timeoutMs (when given): then `result` is null and the process keeps running. */
  async wait(
    ref: string,
    procRef: string,
    opts: { timeoutMs?: number; maxBuffer?: number; signal?: AbortSignal },
  ): Promise<{ proc: Proc; result: ProcResult | null }> {
    const t = await this.target(ref, procRef);
    const signals = [opts.signal, opts.timeoutMs !== undefined ? AbortSignal.timeout(opts.timeoutMs) : undefined].filter((s) => s !== undefined);
    const signal = signals.length ? AbortSignal.any(signals) : undefined;
    try {
      const { proc, result } = await this.collect(t, { ...(opts.maxBuffer !== undefined ? { maxBuffer: opts.maxBuffer } : {}), ...(signal ? { signal } : {}) });
      return { proc: toApiProc(proc), result };
    } catch (e) {
      if (opts.signal?.aborted || !signal?.aborted) throw e;
      return { proc: toApiProc(await t.channel.showProcess(t.proc.id)), result: null };
    }
  }

  /** Appends to stdin at offset (idempotent: bytes the guest has are skipped); eof closes stdin after them. */
  async writeStdin(ref: string, procRef: string, offset: number, data: Buffer, eof: boolean): Promise<{ offset: number }> {
    const t = await this.target(ref, procRef);
    if (t.proc.stdin === 'null') {
      throw new BangerError('conflict', `process ${t.proc.id} has no stdin pipe`, { fix: 'start it with stdin "pipe" (`banger vm exec -i`)' });
    }
    let total = data.length || !eof ? await t.channel.writeStdin(t.proc.id, offset, data) : offset;
    if (eof) total = await t.channel.closeStdin(t.proc.id);
    return { offset: total };
  }

  async signal(ref: string, procRef: string, signal: string | number): Promise<Proc> {
    const n = parseSignal(signal);
    const t = await this.target(ref, procRef);
    return toApiProc(await t.channel.signalProcess(t.proc.id, n));
  }

  async resize(ref: string, procRef: string, rows: number, cols: number): Promise<void> {
    const t = await this.target(ref, procRef);
    if (!t.proc.pty) throw new BangerError('conflict', `process ${t.proc.id} has no terminal to resize`, { fix: 'start it with a PTY (`banger vm exec -t`)' });
    await t.channel.resizeProcess(t.proc.id, rows, cols);
  }

  /** Removes a process and its output from the guest; `kill` ends a running one first (SIGKILL, then waits for its end). */
  async forget(ref: string, procRef: string, kill: boolean): Promise<void> {
    const t = await this.target(ref, procRef);
    if (t.proc.state === 'running') {
      if (!kill) {
        throw new BangerError('conflict', `process ${t.proc.id} is running`, {
          fix: `stop it first, or remove it with kill: banger vm proc rm --kill ${t.vm.name} ${procRef}`,
        });
      }
      await t.channel.signalProcess(t.proc.id, 9);
      await this.follow(
        t,
        { stdoutFrom: t.proc.stdoutBytes, stderrFrom: t.proc.stderrBytes, follow: true, signal: AbortSignal.timeout(10_000) },
        () => undefined,
      );
    }
    await t.channel.forgetProcess(t.proc.id);
  }

  /**
   * Claims the stdin of a process for one attach. Answers a release function, or null when another
   * attach already writes (this one is then read-only).
   */
  claimWriter(t: ProcTarget): (() => void) | null {
    const key = `${t.vm.id}/${t.proc.id}`;
    if (this.writers.has(key)) return null;
    this.writers.add(key);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.writers.delete(key);
    };
  }
}
