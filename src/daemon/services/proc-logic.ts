/**
 * Pure pieces of the process service (./processes.ts): signal names, process ids and names,
 * API views of the guest's process info, bounded output buffers and the buffered result.
 */
import { BangerError } from '../../api/errors.js';
import { PROC_ID, PROC_NAME, type Proc, type ProcResult } from '../../api/proc-schemas.js';
import type { GuestProc } from '../../guest/guest-channel.js';
import { signalNumber, signalShortName } from '../../util/signals.js';

/** "KILL" for 9; a number without a name is answered as its decimal text. */
export function signalName(n: number): string {
  return signalShortName(n) ?? String(n);
}

/** A signal given by a user: "TERM", "SIGTERM", "term", "15" or 15 → its number (1–64). */
export function parseSignal(input: string | number): number {
  const n = typeof input === 'number' ? (Number.isInteger(input) && input >= 1 && input <= 64 ? input : undefined) : signalNumber(input);
  if (n !== undefined) return n;
  throw new BangerError('bad_request', `unknown signal ${JSON.stringify(String(input))}`, {
    fix: 'give a name such as TERM, KILL, INT, HUP, or a number from 1 to 64',
  });
}

/** A fresh process id: `p-` and 10 hex digits (the agent's id rule: `[a-z0-9][a-z0-9-]{0,39}`). */
export function newProcId(): string {
  return `p-${process.getBuiltinModule('node:crypto').randomBytes(5).toString('hex')}`;
}

export const isProcId = (s: string) => PROC_ID.test(s);

/** Checks a process reference from a URL (an id or a name) before it goes anywhere. */
export function checkProcRef(ref: string): string {
  if (!PROC_ID.test(ref) && !PROC_NAME.test(ref)) {
    throw new BangerError('bad_request', `invalid process reference ${JSON.stringify(ref.slice(0, 80))}`, {
      fix: 'use a process id or name as `banger vm proc list VM` shows them',
    });
  }
  return ref;
}

/**
 * The process a reference names among procs: the id first, else the most recently started
 * process of that name. Undefined when none.
 */
export function findProc(procs: readonly GuestProc[], ref: string): GuestProc | undefined {
  const byId = procs.find((p) => p.id === ref);
  if (byId) return byId;
  let best: GuestProc | undefined;
  for (const p of procs) if (p.name === ref && (!best || p.startedMs >= best.startedMs)) best = p;
  return best;
}

/** The API's view of the guest's info (signal by name). */
export function toApiProc(p: GuestProc): Proc {
  return { ...p, signal: p.signal === null ? null : signalName(p.signal) };
}

/** Keeps at most `max` bytes of a stream; remembers whether more came. */
export class BoundedBuffer {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  cut = false;

  constructor(private readonly max: number) {}

  push(data: Buffer): void {
    const room = this.max - this.size;
    if (data.length > room) this.cut = true;
    if (room <= 0) return;
    const kept = data.length > room ? data.subarray(0, room) : data;
    this.chunks.push(kept);
    this.size += kept.length;
  }

  get bytes(): number {
    return this.size;
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

/** The buffered result of an ended process: its exit, its output (UTF-8 text) and whether anything was cut. */
export function assembleResult(p: GuestProc, stdout: BoundedBuffer, stderr: BoundedBuffer): ProcResult {
  return {
    exitCode: p.exitCode,
    signal: p.signal === null ? null : signalName(p.signal),
    timedOut: p.timedOut,
    durationMs: p.endedMs === null ? 0 : Math.max(0, p.endedMs - p.startedMs),
    stdout: stdout.toBuffer().toString('utf8'),
    stderr: stderr.toBuffer().toString('utf8'),
    truncated: p.truncated || stdout.cut || stderr.cut,
    code: p.code,
  };
}

/** The guest's answer that a process is unknown, with what to do. */
export function procNotFound(vm: string, ref: string): BangerError {
  return new BangerError('not_found', `no process "${ref}" in VM ${vm}`, { fix: `list them with \`banger vm proc list ${vm}\`` });
}
