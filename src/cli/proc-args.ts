import { parseDuration } from '../util/duration.js';
import { InvalidArgumentError } from './commander.js';
import { signalNumber } from './exit-status.js';

/** `--env K=V` (repeatable): the key a portable environment name, the value anything. */
export function envArg(value: string, previous: string[] = []): string[] {
  const at = value.indexOf('=');
  const key = at < 0 ? value : value.slice(0, at);
  if (at < 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(key))
    throw new InvalidArgumentError(`--env takes KEY=VALUE (KEY a letter or _ then letters, digits, _), got "${value}"`);
  if (value.includes('\0')) throw new InvalidArgumentError('--env values cannot contain a NUL byte');
  return [...previous, value];
}

/** `--timeout 90s|15m|1h30m` → milliseconds (at least 1 ms). */
export function timeoutArg(value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError(`--timeout takes a duration like "30s", "15m" or "1h30m", got "${value}"`);
  return ms;
}

/** `--signal TERM|SIGTERM|15` → the number (the API takes it as is). */
export function signalArg(value: string): number {
  const n = signalNumber(value);
  if (n === undefined) throw new InvalidArgumentError(`--signal takes a name like TERM, KILL, INT or a number 1-64, got "${value}"`);
  return n;
}

/** A byte offset into a process's output. */
export function offsetArg(name: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError(`${name} takes a byte offset (0 or more), got "${value}"`);
    const n = Number(value);
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${name} is too large: "${value}"`);
    return n;
  };
}

/**
 * A process name (`--name`): the API's rule (PROC_NAME in src/api/proc-schemas.ts, not imported:
 * that module loads zod, which stays off the CLI's start-up path), checked here for a usage error.
 */
export function procNameArg(value: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(value)) {
    throw new InvalidArgumentError(`--name takes letters, digits, ".", "_" and "-" (at most 64, starting with a letter or digit), got "${value}"`);
  }
  return value;
}
