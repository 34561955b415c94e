import { spawn } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { BangerError } from '../api/errors.js';

/** The Debian package of each host tool banger runs, for the one "not installed" error. */
const PACKAGE_OF: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  'mkfs.ext4': 'e2fsprogs',
  debugfs: 'e2fsprogs',
  dumpe2fs: 'e2fsprogs',
  ssh: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  mmdebstrap: 'mmdebstrap',
  gpgv: 'gpgv',
  xz: 'xz-utils',
  zstd: 'zstd',
  lz4: 'lz4',
  ip: 'iproute2',
  nft: 'nftables',
  iptables: 'iptables',
  ebtables: 'ebtables',
  fallocate: 'util-linux',
  cp: 'coreutils',
};

/** The one error for a host tool that is not installed: names the tool and the package to install. */
export function missingTool(command: string, neededFor?: string): BangerError {
  const pkg = PACKAGE_OF[command] ?? command;
  return new BangerError('missing_dependency', `${command} is not installed${neededFor ? ` (${neededFor})` : ''}`, {
    fix: `apt-get install ${pkg} (or run scripts/install-deps.sh); \`banger doctor\` checks every tool`,
  });
}

/** A spawn's 'error': ENOENT becomes missingTool, anything else stays as it is. */
export function toolError(e: NodeJS.ErrnoException, command: string, neededFor?: string): Error {
  return e.code === 'ENOENT' ? missingTool(command, neededFor) : e;
}

/** Options of CommandRunner.run. */
export interface RunOptions {
  input?: string | Buffer;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** When false (default) a non-zero exit rejects with CommandError. */
  allowFailure?: boolean;
  /** Cap on captured stdout/stderr bytes each; the rest is dropped (default 16 MiB). */
  maxOutputBytes?: number;
  /** Why banger runs the tool, for the missing_dependency error. */
  neededFor?: string;
}

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** What a streamed command's stdin, stdout and stderr are: a pipe to banger, or /dev/null. */
export type StdioMode = 'pipe' | 'ignore';

export interface SpawnOptions<I extends StdioMode = 'pipe', O extends StdioMode = 'pipe', E extends StdioMode = 'pipe'> {
  stdin?: I;
  stdout?: O;
  stderr?: E;
  /** Aborting kills the command (SIGTERM); `done` then rejects with the AbortError. */
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Why banger runs the tool, for the missing_dependency error ("it verifies Debian's signed package index"). */
  neededFor?: string;
}

/** A stream when its mode is 'pipe', null when 'ignore'. */
type Piped<M extends StdioMode, S> = M extends 'pipe' ? S : null;

export interface ExitStatus {
  /** null when a signal ended the command. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnedCommand<I extends StdioMode = 'pipe', O extends StdioMode = 'pipe', E extends StdioMode = 'pipe'> {
  stdin: Piped<I, Writable>;
  stdout: Piped<O, Readable>;
  stderr: Piped<E, Readable>;
  /**
   * Settles once the command has exited and its output streams are closed: resolves with how it
   * ended (a non-zero exit is the caller's to judge), rejects with missingTool when the tool is
   * not installed, or with the AbortError of `signal`.
   */
  done: Promise<ExitStatus>;
  /** Signals the command if it still runs (never a process that has already been reaped). */
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Every host tool banger runs goes through this interface, so tests can swap it: `run` for a
 * command whose output is wanted whole, `spawn` for one whose streams are fed or read as it runs.
 */
export interface CommandRunner {
  run(command: string, args: readonly string[], options?: RunOptions): Promise<RunResult>;
  spawn<I extends StdioMode = 'pipe', O extends StdioMode = 'pipe', E extends StdioMode = 'pipe'>(
    command: string,
    args: readonly string[],
    options?: SpawnOptions<I, O, E>,
  ): SpawnedCommand<I, O, E>;
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly result: RunResult,
  ) {
    const tail = (result.stderr || result.stdout).trim().split('\n').slice(-5).join('\n');
    super(`${command} ${args.join(' ')} exited with ${result.signal ?? result.code}${tail ? `: ${tail}` : ''}`);
    this.name = 'CommandError';
  }
}

export class CommandTimeoutError extends Error {
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
  ) {
    super(`${command} did not finish within ${timeoutMs} ms`);
    this.name = 'CommandTimeoutError';
  }
}

/** Runs host commands with execve semantics (no shell), capped output and an optional deadline. */
export class ProcessRunner implements CommandRunner {
  spawn<I extends StdioMode = 'pipe', O extends StdioMode = 'pipe', E extends StdioMode = 'pipe'>(
    command: string,
    args: readonly string[],
    options: SpawnOptions<I, O, E> = {},
  ): SpawnedCommand<I, O, E> {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: [options.stdin ?? 'pipe', options.stdout ?? 'pipe', options.stderr ?? 'pipe'],
      signal: options.signal,
    });
    // 'error' comes before 'close' (a missing tool, an abort), so the first to settle wins.
    const done = new Promise<ExitStatus>((resolve, reject) => {
      child.on('error', (e) => reject(toolError(e as NodeJS.ErrnoException, command, options.neededFor)));
      child.on('close', (code, signal) => resolve({ code, signal }));
    });
    // A command that exits without reading all its input must not turn into an EPIPE crash.
    child.stdin?.on('error', () => undefined);
    return {
      stdin: child.stdin,
      stdout: child.stdout,
      stderr: child.stderr,
      done,
      kill: (signal) => {
        child.kill(signal);
      },
    } as SpawnedCommand<I, O, E>;
  }

  run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const max = options.maxOutputBytes ?? 16 * 1024 * 1024;
    const child = this.spawn(command, args, { cwd: options.cwd, env: options.env, neededFor: options.neededFor });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let timedOut = false;
    const timer =
      options.timeoutMs !== undefined
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, options.timeoutMs)
        : undefined;
    child.stdout.on('data', (b: Buffer) => {
      if (outLen < max) out.push(b.subarray(0, max - outLen));
      outLen += b.length;
    });
    child.stderr.on('data', (b: Buffer) => {
      if (errLen < max) err.push(b.subarray(0, max - errLen));
      errLen += b.length;
    });
    child.stdin.end(options.input ?? undefined);
    return child.done
      .finally(() => clearTimeout(timer))
      .then(({ code, signal }) => {
        if (timedOut) throw new CommandTimeoutError(command, options.timeoutMs ?? 0);
        const result: RunResult = {
          code: code ?? -1,
          signal,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        };
        if (result.code !== 0 && !options.allowFailure) throw new CommandError(command, args, result);
        return result;
      });
  }
}
