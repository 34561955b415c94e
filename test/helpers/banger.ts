import { type SpawnOptions, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Project root (this file is dist/test/helpers/banger.js). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BANGER = join(ROOT, 'bin', 'banger.js');
export const BANGERD = join(ROOT, 'bin', 'bangerd.js');

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** An isolated banger installation: its own daemon, store, sockets and VMs. Short path: socket paths are limited to 108 bytes. */
export class TestHome {
  private constructor(
    readonly dir: string,
    /** When set, the CLI (and so the daemon it starts, and its VMs, bridges and TAPs) runs in this namespace. */
    readonly netns?: string,
  ) {}

  /**
   * `netns: true` runs everything inside a fresh network namespace with only loopback, so bridges,
   * TAPs, NAT rules and the DNS listener never touch the host's own networking.
   */
  static async create(config = '', opts: { netns?: boolean } = {}): Promise<TestHome> {
    const dir = await mkdtemp('/tmp/bg-');
    await mkdir(join(dir, 'config'), { recursive: true });
    if (config) await writeFile(join(dir, 'config', 'config.toml'), config);
    let netns: string | undefined;
    if (opts.netns) {
      netns = `bgt-${dir.slice(-6).toLowerCase()}`;
      await runProcess('ip', ['netns', 'add', netns], {}, 10_000);
      await runProcess('ip', ['netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up'], {}, 10_000);
    }
    return new TestHome(dir, netns);
  }

  /** Runs a command inside this home's namespace (or directly when it has none). */
  exec(cmd: string, args: string[], timeoutMs = 60_000): Promise<Result> {
    return this.netns ? runProcess('ip', ['netns', 'exec', this.netns, cmd, ...args], { env: this.env }, timeoutMs) : runProcess(cmd, args, { env: this.env }, timeoutMs);
  }

  get env(): NodeJS.ProcessEnv {
    return { ...process.env, BANGER_HOME: this.dir, CI: '1' };
  }

  run(args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<Result> {
    const [cmd, argv] = this.netns ? ['ip', ['netns', 'exec', this.netns, process.execPath, BANGER, ...args]] : [process.execPath, [BANGER, ...args]];
    return runProcess(cmd, argv, { env: this.env }, opts.timeoutMs ?? 600_000, opts.input);
  }

  async json<T>(args: string[]): Promise<T> {
    const r = await this.run([...args, '--json']);
    if (r.code !== 0) throw new Error(`banger ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** Stops the daemon and every VMM started under this home, then removes it. */
  async destroy(): Promise<void> {
    await this.run(['daemon', 'stop'], { timeoutMs: 60_000 }).catch(() => {});
    for (const pid of await pidsMentioning(this.dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await rm(this.dir, { recursive: true, force: true });
    if (this.netns) await runProcess('ip', ['netns', 'del', this.netns], {}, 10_000).catch(() => {});
  }
}

export function runProcess(cmd: string, args: string[], options: SpawnOptions, timeoutMs: number, input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c) => {
      stdout += c;
    });
    child.stderr?.on('data', (c) => {
      stderr += c;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

/** Pids of processes whose command line mentions `needle` (e.g. a test home's path). */
export async function pidsMentioning(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(needle)) pids.push(Number(e));
    } catch {
      /* exited */
    }
  }
  return pids;
}

export interface GuestAssets {
  /** An extracted Debian kernel package: boot/vmlinuz-<v>, vmlinux, lib/modules/<v>/. */
  kernelDir: string;
  kernelVersion: string;
  /** The kernel file banger boots from kernelDir (the uncompressed vmlinux when present). */
  kernel: string;
  rootfs: string;
}

/** Real guest assets built by scripts/guest-assets.sh, or undefined (tests then skip with the reason). */
export function guestAssets(): GuestAssets | undefined {
  const cache = process.env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets');
  const manifest = join(cache, 'assets.json');
  if (!existsSync(manifest)) return undefined;
  const m = JSON.parse(readFileSync(manifest, 'utf8')) as Record<string, string>;
  const { kernelDir, kernelVersion, kernel, rootfs } = m;
  if (!kernelDir || !kernelVersion || !kernel || !rootfs) return undefined;
  if (![kernelDir, kernel, rootfs].every((p) => existsSync(p))) return undefined;
  return { kernelDir, kernelVersion, kernel, rootfs };
}
