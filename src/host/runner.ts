import { spawn } from 'node:child_process';
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

/** Every host tool banger shells out to goes through this interface so tests can swap it. */
export interface RunOptions {
  input?: string | Buffer;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** When false (default) a non-zero exit rejects with CommandError. */
  allowFailure?: boolean;
  /** Cap on captured stdout/stderr bytes each; the rest is dropped (default 16 MiB). */
  maxOutputBytes?: number;
}

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  run(command: string, args: readonly string[], options?: RunOptions): Promise<RunResult>;
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
  run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const max = options.maxOutputBytes ?? 16 * 1024 * 1024;
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, {
        cwd: options.cwd,
        env: options.env ?? process.env,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
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
      child.on('error', (e) => {
        if (timer) clearTimeout(timer);
        reject(toolError(e as NodeJS.ErrnoException, command));
      });
      child.on('close', (code, signal) => {
        if (timer) clearTimeout(timer);
        if (timedOut) return reject(new CommandTimeoutError(command, options.timeoutMs ?? 0));
        const result: RunResult = {
          code: code ?? -1,
          signal,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        };
        if (result.code !== 0 && !options.allowFailure) {
          return reject(new CommandError(command, args, result));
        }
        resolve(result);
      });
      child.stdin.on('error', () => {});
      child.stdin.end(options.input ?? undefined);
    });
  }
}
