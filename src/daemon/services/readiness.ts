/**
 * Readiness checks of a new VM (`vm create --wait-for port:N|CMD`, the API's `readyWhen`): once the
 * guest is up (agent, sync files, sshd), each check in order, until it holds, within one deadline
 * for all of them. A port holds when the agent lists a TCP listener on it; a command holds when
 * `sh -c CMD`, run as root in /root through the guest's process API, exits 0.
 *
 * What the guest says (a command's output) is hostile text: only a bounded, sanitised last line
 * of it reaches the operation's log and the error.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError } from '../../api/errors.js';
import type { GuestListener, ReadyCheck } from '../../api/schemas.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import { formatDuration } from '../../util/duration.js';
import type { OpContext } from '../../util/op-context.js';
import { newProcId } from './proc-logic.js';

/** What a readiness wait needs of a running VM: its agent, or undefined once it stopped. */
export interface ReadinessGuest {
  ports(timeoutMs: number): Promise<GuestListener[]>;
  guest: GuestChannel;
}

export interface ReadinessOptions {
  vmName: string;
  checks: readonly ReadyCheck[];
  /** One bound for all the checks together. */
  timeoutMs: number;
  ctx: OpContext;
  /** The VM's agent while the VM runs; undefined when it was stopped or deleted meanwhile. */
  guest: () => ReadinessGuest | undefined;
  /** Between two polls of the port listing (default 500 ms). */
  portPollMs?: number;
  /** Between the end of one command attempt and the next (default 1 s). */
  commandRetryMs?: number;
  /** One command attempt at most (default 30 s; the guest kills its process group then). */
  attemptTimeoutMs?: number;
}

const PORT_POLL_MS = 500;
const COMMAND_RETRY_MS = 1000;
const ATTEMPT_TIMEOUT_MS = 30_000;
/** The host waits this much longer than the guest's own bound before it gives up on an attempt. */
const ATTEMPT_GRACE_MS = 5000;
/** Bytes of a command's output kept in the guest per stream, and on the host (its tail). */
const OUTPUT_LIMIT = 64 * 1024;
const TAIL_BYTES = 4096;
const LINE_CHARS = 200;
/** A command's last result is logged when it changes, and anyway every this many attempts. */
const LOG_EVERY = 30;

/** A duration for a message: under a second in ms (tests and tight bounds), else as `formatDuration`. */
const span = (ms: number): string => (ms < 1000 ? `${Math.round(ms)} ms` : formatDuration(ms));

/** One line of guest text: control and format characters replaced, bounded. */
export function guestLine(text: string, max = LINE_CHARS): string {
  const line = text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '?').trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** The last non-empty line of some output, sanitised ('' when there is none). */
export function lastLine(output: string): string {
  const lines = output.split(/\r?\n|\r/).filter((l) => l.trim() !== '');
  return guestLine(lines.at(-1) ?? '');
}

/** How a check is named in stages, logs and errors. */
export function describeCheck(c: ReadyCheck): string {
  return c.kind === 'port' ? `port ${c.port}` : `command \`${guestLine(c.command, 80)}\``;
}

/**
 * Waits until every check holds, in order. Rejects with `timeout` naming the check and its last
 * result when the deadline passes (the caller keeps the VM running), `conflict` when the VM
 * stopped meanwhile, `cancelled` when the operation was cancelled.
 */
export async function waitUntilReady(o: ReadinessOptions): Promise<void> {
  const deadline = performance.now() + o.timeoutMs;
  for (const check of o.checks) {
    const what = describeCheck(check);
    o.ctx.stage(`wait for ${check.kind === 'port' ? what : 'command'}`, check.kind === 'command' ? guestLine(check.command, 120) : undefined);
    const w = new Waiter(o, what, deadline);
    if (check.kind === 'port') await w.port(check.port);
    else await w.command(check.command);
  }
}

class Waiter {
  private attempts = 0;
  private last = 'no attempt yet';

  constructor(
    private readonly o: ReadinessOptions,
    private readonly what: string,
    private readonly deadline: number,
  ) {}

  async port(port: number): Promise<void> {
    for (;;) {
      const guest = this.attempt();
      try {
        const listeners = await guest.ports(Math.max(1, Math.min(2000, this.deadline - performance.now())));
        if (listeners.some((l) => l.port === port && l.proto.startsWith('tcp'))) return;
        this.last = `nothing listens on TCP port ${port}`;
      } catch (e) {
        this.last = `the agent did not list the ports: ${guestLine((e as Error).message)}`;
      }
      await this.pause(this.o.portPollMs ?? PORT_POLL_MS);
    }
  }

  async command(command: string): Promise<void> {
    let logged = '';
    for (;;) {
      const guest = this.attempt();
      const perAttempt = this.o.attemptTimeoutMs ?? ATTEMPT_TIMEOUT_MS;
      const bound = Math.max(1, Math.min(perAttempt, Math.ceil(this.deadline - performance.now())));
      const result = await this.runOnce(guest.guest, command, bound);
      if (result.ok) return;
      // An attempt cut short by the deadline says less than the one before it: the error keeps that one.
      if (!(result.killed && bound < perAttempt && this.attempts > 1)) this.last = result.text;
      if (result.text !== logged || this.attempts % LOG_EVERY === 0) {
        this.o.ctx.log(`${this.what}, attempt ${this.attempts}: ${result.text}`);
        logged = result.text;
      }
      await this.pause(this.o.commandRetryMs ?? COMMAND_RETRY_MS);
    }
  }

  /** One attempt: the VM must still run, the deadline not be past; progress counts the attempts. */
  private attempt(): ReadinessGuest {
    this.o.ctx.checkCancelled();
    const guest = this.o.guest();
    if (!guest) {
      throw new BangerError('conflict', `VM ${this.o.vmName} stopped while waiting for ${this.what}`, {
        fix: `see why: banger vm logs ${this.o.vmName}; start it again: banger vm start ${this.o.vmName}`,
      });
    }
    if (this.attempts > 0 && performance.now() >= this.deadline) this.timedOut();
    this.attempts++;
    this.o.ctx.progress(this.attempts, undefined, this.attempts === 1 ? 'attempt' : 'attempts');
    return guest;
  }

  /** Sleeps before the next attempt (never past the deadline, once); a cancel ends it at once. */
  private async pause(ms: number): Promise<void> {
    const left = this.deadline - performance.now();
    if (left <= 0) this.timedOut();
    try {
      await sleep(Math.min(ms, left), undefined, { signal: this.o.ctx.signal });
    } catch {
      this.o.ctx.checkCancelled();
    }
  }

  private timedOut(): never {
    const name = this.o.vmName;
    throw new BangerError(
      'timeout',
      `${name} did not become ready: ${this.what} did not hold within ${span(this.o.timeoutMs)} (${this.attempts} ${this.attempts === 1 ? 'attempt' : 'attempts'}; last: ${this.last}). ${name} is kept running for inspection`,
      {
        fix: `look at it (banger vm logs ${name}, banger vm ports ${name}, banger vm exec ${name} -- CMD), then delete it (banger vm delete ${name}); give it longer with --wait-timeout`,
      },
    );
  }

  /** `sh -c CMD` once, within bound: ok on exit 0, else what happened (exit status and last output line). */
  private async runOnce(channel: GuestChannel, command: string, bound: number): Promise<{ ok: boolean; killed?: boolean; text: string }> {
    const failed = (text: string, killed = false) => ({ ok: false, killed, text });
    let proc: Awaited<ReturnType<GuestChannel['startProcess']>>;
    try {
      proc = await channel.startProcess({ id: newProcId(), shell: command, timeoutMs: bound, outputLimit: OUTPUT_LIMIT });
    } catch (e) {
      return failed(`could not start it: ${guestLine((e as Error).message)}`);
    }
    let tail = Buffer.alloc(0);
    const hostBound = AbortSignal.timeout(bound + ATTEMPT_GRACE_MS);
    try {
      proc = await channel.output(
        proc.id,
        { stdoutFrom: 0, stderrFrom: 0, follow: true, signal: AbortSignal.any([this.o.ctx.signal, hostBound]) },
        (_stream, data) => {
          tail = Buffer.concat([tail, data]);
          if (tail.length > TAIL_BYTES) tail = tail.subarray(tail.length - TAIL_BYTES);
        },
      );
    } catch (e) {
      // Cancelled, or the guest never ended it: its process group goes, then its record (in the background).
      void dropProcess(channel, proc.id, true);
      this.o.ctx.checkCancelled();
      return failed(`no result within ${span(bound)}: ${guestLine((e as Error).message)}`, true);
    }
    // The guest keeps at most 256 process records: a long wait must leave none behind.
    void dropProcess(channel, proc.id, false);
    const out = lastLine(tail.toString('utf8'));
    const said = out ? `, last output: ${out}` : ', no output';
    if (proc.state === 'running') return failed(`still running after ${span(bound)}${said}`, true);
    if (proc.timedOut) return failed(`killed after ${span(bound)} (its bound per attempt)${said}`, true);
    if (proc.code === 'command_not_found') return failed('the shell (/bin/sh) was not found in the guest');
    if (proc.signal) return failed(`killed by signal ${proc.signal}${said}`);
    if (proc.exitCode === 0) return { ok: true, text: 'ok' };
    return failed(`exit ${proc.exitCode}${said}`);
  }
}

/** Forgets a process in the guest (SIGKILL first when asked); best effort: a guest gone is fine. */
async function dropProcess(channel: GuestChannel, id: string, kill: boolean): Promise<void> {
  try {
    if (kill) await channel.signalProcess(id, 9);
    // A killed process ends at once; its record can be forgotten only then.
    for (let i = 0; i < 20 && (await channel.showProcess(id)).state === 'running'; i++) await sleep(100);
    await channel.forgetProcess(id);
  } catch {
    // Already gone, or the VM stopped: nothing left to clean.
  }
}
