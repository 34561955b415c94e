/** Linux signal numbers (x86_64 and arm64 agree on 1–31): the guest's numbering, for the CLI and the daemon. */
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
const NAMES = new Map(Object.entries(SIGNALS).map(([name, n]) => [n, name]));

/** `TERM`, `SIGTERM`, `term` or `15` → 15; undefined for anything else (1–64 for numbers). */
export function signalNumber(text: string): number | undefined {
  const t = text.trim().toUpperCase();
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    return n >= 1 && n <= 64 ? n : undefined;
  }
  return SIGNALS[t.startsWith('SIG') ? t.slice(3) : t];
}

/** 9 → `KILL`; a number without a name (real-time signals) → undefined. */
export function signalShortName(n: number): string | undefined {
  return NAMES.get(n);
}
