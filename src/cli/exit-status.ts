/**
 * How a guest process's end becomes the CLI's exit status and the one line it prints about it, the
 * way a shell reports a child: the exit code itself, 128+N for a death by signal N, 127 for a
 * command that does not exist. Pure: the commands and their tests share it.
 */

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

/** Linux signal numbers (x86_64 and arm64 agree), the guest's numbering. */
const SIGNALS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ILL: 4,
  TRAP: 5,
  ABRT: 6,
  BUS: 7,
  FPE: 8,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  USR2: 12,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
  STKFLT: 16,
  CHLD: 17,
  CONT: 18,
  STOP: 19,
  TSTP: 20,
  TTIN: 21,
  TTOU: 22,
  URG: 23,
  XCPU: 24,
  XFSZ: 25,
  VTALRM: 26,
  PROF: 27,
  WINCH: 28,
  IO: 29,
  PWR: 30,
  SYS: 31,
};

/** `TERM`, `SIGTERM`, `term` or `15` → 15; undefined for anything else (1–64 for numbers). */
export function signalNumber(text: string): number | undefined {
  const t = text.trim().toUpperCase();
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    return n >= 1 && n <= 64 ? n : undefined;
  }
  return SIGNALS[t.startsWith('SIG') ? t.slice(3) : t];
}

/** The number of the signal that ended the process, if one did. */
function signalOf(p: ProcEnd): number | undefined {
  if (p.signal === null || p.signal === undefined) return undefined;
  return typeof p.signal === 'number' ? (p.signal >= 1 && p.signal <= 64 ? p.signal : undefined) : signalNumber(p.signal);
}

/** 15 → `SIGTERM`; real-time and unknown numbers stay numbers (`signal 40`). */
export function signalName(n: number): string {
  const name = Object.keys(SIGNALS).find((k) => SIGNALS[k] === n);
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
