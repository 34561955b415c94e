/**
 * How a guest process's end becomes the CLI's exit status and the one line it prints about it, the
 * way a shell reports a child: the exit code itself, 128+N for a death by signal N, 127 for a
 * command that does not exist. Pure: the commands and their tests share it.
 */
import { signalNumber, signalShortName } from '../util/signals.js';

/** The fields of a process (or of a result) that say how it ended. */
export interface ProcEnd {
  state?: 'running' | 'exited' | 'lost' | string;
  exitCode: number | null;
  /** The signal that ended the process: a name without `SIG` ("KILL", as the API gives it) or a number. */
  signal: string | number | null;
  timedOut: boolean;
  /** `command_not_found`, `permission_denied`, `exec_failed`, or null. */
  code: string | null;
}

/** Exit status when the process was lost (its supervisor vanished): nothing is known of its end. */
export const LOST_STATUS = 255;
/** Exit status of a process killed by its --timeout, as GNU timeout(1) reports it. */
export const TIMEOUT_STATUS = 124;

export function exitStatusOf(p: ProcEnd): number {
  if (p.code === 'command_not_found') return 127;
  if (p.code === 'permission_denied' || p.code === 'exec_failed') return p.exitCode ?? 126;
  if (p.timedOut) return TIMEOUT_STATUS;
  const signal = signalOf(p);
  if (signal !== undefined) return 128 + signal;
  if (p.exitCode !== null) return p.exitCode & 0xff;
  return LOST_STATUS;
}

/** The number of the signal that ended the process, if one did. */
function signalOf(p: ProcEnd): number | undefined {
  if (p.signal === null || p.signal === undefined) return undefined;
  return typeof p.signal === 'number' ? (p.signal >= 1 && p.signal <= 64 ? p.signal : undefined) : signalNumber(p.signal);
}

/** 15 → `SIGTERM`; real-time and unknown numbers stay numbers (`signal 40`). */
export function signalName(n: number): string {
  const name = signalShortName(n);
  return name ? `SIG${name}` : `signal ${n}`;
}

/**
 * The line the CLI writes to stderr about how a process ended, or undefined when the exit status
 * says it all (a normal exit, or a signal the user sent themselves from the terminal).
 */
export function endNotice(p: ProcEnd, what: string, timeoutText?: string): string | undefined {
  if (p.code === 'command_not_found') return `${what}: command not found in the guest (exit 127)`;
  if (p.code === 'permission_denied') return `${what}: permission denied in the guest (exit 126)`;
  if (p.code === 'exec_failed') return `${what}: could not be executed in the guest (exit 126)`;
  if (p.timedOut) return `${what}: killed after its timeout${timeoutText ? ` of ${timeoutText}` : ''} (exit ${TIMEOUT_STATUS})`;
  if (p.state === 'lost') return `${what}: lost (its supervisor in the guest is gone; nothing is known of its exit)`;
  const signal = signalOf(p);
  // Ctrl-C is the user's own doing: a shell says nothing either.
  if (signal !== undefined && signal !== 2) return `${what}: killed by ${signalName(signal)} (exit ${128 + signal})`;
  return undefined;
}

export { signalNumber };
