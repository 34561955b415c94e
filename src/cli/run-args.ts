import { isAbsolute, resolve } from 'node:path';

/** What `vm run`'s operands mean: an optional workspace directory, then the command (may be empty). */
export interface RunArgs {
  /** Absolute host path of the repository to prepare as the VM's workspace. */
  repo?: string;
  command: string[];
}

/** `~` and `~/…` become the home directory; `~user` is left alone (the shell's business). */
export function expandHome(path: string, home: string): string {
  if (path === '~') return home;
  if (path.startsWith('~/')) return `${home}${path.slice(1)}`;
  return path;
}

/** The spellings of a host path that `vm run` treats as a workspace candidate. */
export function looksLikeHostPath(word: string): boolean {
  return word === '.' || word === '..' || word.startsWith('./') || word.startsWith('../') || isAbsolute(word) || word.startsWith('~');
}

/**
 * Classifies `vm run`'s operands. `afterDashDash` is how many of them came after `--` (always the
 * command: `vm run -- ./build.sh` never prepares a workspace). A first operand before `--` that
 * is `.`, starts with `./`, `../`, `/` or `~` and names a directory on this host is the
 * workspace; `--repo PATH` names it explicitly (and must be a directory). Anything else is the
 * command, as before workspaces existed.
 */
export function classifyRunArgs(
  operands: readonly string[],
  afterDashDash: number,
  env: { repo?: string; cwd: string; home: string; isDirectory: (path: string) => boolean },
): RunArgs | { error: string } {
  const abs = (p: string) => resolve(env.cwd, expandHome(p, env.home));
  if (env.repo !== undefined) {
    const repo = abs(env.repo);
    if (!env.isDirectory(repo)) return { error: `--repo ${env.repo} is not a directory` };
    return { repo, command: [...operands] };
  }
  const before = operands.length - afterDashDash;
  const first = operands[0];
  if (before >= 1 && first !== undefined && looksLikeHostPath(first) && env.isDirectory(abs(first))) {
    return { repo: abs(first), command: operands.slice(1) };
  }
  return { command: [...operands] };
}

/**
 * How many of a command's operands followed `--` on the command line: commander drops the `--`,
 * so it is found in the raw words (everything after it is an operand, in order, at the end).
 */
export function countAfterDashDash(rawArgs: readonly string[], operandCount: number): number {
  const at = rawArgs.indexOf('--');
  if (at < 0) return 0;
  return Math.min(operandCount, rawArgs.length - at - 1);
}
