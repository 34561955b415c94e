import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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

/**
 * One isolated banger installation for integration and end-to-end tests: the real CLI and a real
 * daemon with their own store, sockets and VMs, nothing shared with the user's banger or with
 * other test files. Short path under /tmp: socket paths are limited to 108 bytes.
 */
export class TestHome {
  private constructor(
    readonly dir: string,
    /** When set, the CLI (and so the daemon it starts, and its VMs, bridges and TAPs) runs in this namespace. */
    readonly netns?: string,
    /** False when the namespace is another home's (`sharedNetnsOf`): destroy leaves it. */
    private readonly ownsNetns = true,
    /** False for a home kept between runs (`reuse`): destroy stops its daemon and leaves its files. */
    private readonly ownsDir = true,
  ) {}

  /**
   * A home kept between runs (e.g. one holding a cached image, test/helpers/agents-image.ts): the
   * config is rewritten, the directory is left in place by destroy.
   */
  static async reuse(dir: string, config: string, opts: { netns?: boolean } = {}): Promise<TestHome> {
    await mkdir(join(dir, 'config'), { recursive: true });
    await writeFile(join(dir, 'config', 'config.toml'), config);
    let netns: string | undefined;
    if (opts.netns) {
      netns = `bgt-${Math.random().toString(36).slice(2, 8)}`;
      await runProcess('ip', ['netns', 'add', netns], {}, 10_000);
      await runProcess('ip', ['netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up'], {}, 10_000);
    }
    return new TestHome(dir, netns, true, false);
  }

  /**
   * `netns: true` runs everything inside a fresh network namespace with only loopback, so bridges,
   * TAPs, NAT rules and the DNS listener never touch the host's own networking.
   */
  static async create(config?: string, opts: { netns?: boolean; sharedNetnsOf?: TestHome } = {}): Promise<TestHome> {
    const dir = await mkdtemp('/tmp/bg-');
    if (config !== undefined) {
      await mkdir(join(dir, 'config'), { recursive: true });
      await writeFile(join(dir, 'config', 'config.toml'), config);
    }
    if (opts.sharedNetnsOf) return new TestHome(dir, opts.sharedNetnsOf.netns, false);
    let netns: string | undefined;
    if (opts.netns) {
      netns = `bgt-${dir.slice(-6).toLowerCase()}`;
      await runProcess('ip', ['netns', 'add', netns], {}, 10_000);
      await runProcess('ip', ['netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up'], {}, 10_000);
    }
    return new TestHome(dir, netns);
  }

  get env(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: this.dir };
    // An outer BANGER_CONFIG would point every test home at the same file.
    delete env.BANGER_CONFIG;
    return env;
  }

  get runDir(): string {
    return join(this.dir, 'run');
  }
  get socketPath(): string {
    return join(this.dir, 'run', 'bangerd.sock');
  }
  get dbPath(): string {
    return join(this.dir, 'state', 'banger.db');
  }
  get configFile(): string {
    return join(this.dir, 'config', 'config.toml');
  }

  /**
   * A VM's disks as the store records them (docs/snapshots.md): each disk's chain of layer files,
   * top (the file its VMM writes) first; a QEMU work disk's last one is the raw ext4 the host made.
   */
  async vmDisks(vmId: string): Promise<{ root: string[]; work: string[] }> {
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(this.dbPath, { readonly: true, fileMustExist: true });
    try {
      const vm = db.prepare('SELECT root_layer, work_layer FROM vms WHERE id = ?').get(vmId) as { root_layer: string; work_layer: string } | undefined;
      if (!vm) throw new Error(`no VM ${vmId} in ${this.dbPath}`);
      const chain = (top: string) => {
        const paths: string[] = [];
        for (let id: string | null = top; id; ) {
          const l = db.prepare('SELECT path, parent_id FROM disk_layers WHERE id = ?').get(id) as { path: string; parent_id: string | null } | undefined;
          if (!l) break;
          paths.push(l.path);
          id = l.parent_id;
        }
        return paths;
      };
      return { root: chain(vm.root_layer), work: chain(vm.work_layer) };
    } finally {
      db.close();
    }
  }

  /** Runs a command inside this home's namespace (or directly when it has none). */
  exec(cmd: string, args: string[], timeoutMs = 60_000, extraEnv: NodeJS.ProcessEnv = {}): Promise<Result> {
    const env = { ...this.env, ...extraEnv };
    return this.netns ? runProcess('ip', ['netns', 'exec', this.netns, cmd, ...args], { env }, timeoutMs) : runProcess(cmd, args, { env }, timeoutMs);
  }

  /** The CLI; `extraEnv` also reaches a daemon this command auto-starts (e.g. BANGER_CRASH_AT). */
  banger(args: string[], timeoutMs = 600_000, extraEnv: NodeJS.ProcessEnv = {}): Promise<Result> {
    return this.exec(process.execPath, [BANGER, ...args], timeoutMs, extraEnv);
  }

  /** The CLI as a child that keeps running (e.g. `vm logs -f`): its output as it comes, its end. */
  start(args: string[]): Running {
    const full = [process.execPath, BANGER, ...args];
    const [cmd, ...rest] = this.netns ? ['ip', 'netns', 'exec', this.netns, ...full] : full;
    return new Running(spawn(cmd as string, rest, { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  bangerd(args: string[], timeoutMs = 30_000): Promise<Result> {
    return this.exec(process.execPath, [BANGERD, ...args], timeoutMs);
  }

  /** Runs a CLI command that must succeed and returns its stdout. */
  async ok(args: string[]): Promise<string> {
    const r = await this.banger(args);
    if (r.code !== 0) throw new Error(`banger ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  }

  async json<T>(args: string[]): Promise<T> {
    return JSON.parse(await this.ok([...args, '--json'])) as T;
  }

  /** Live bangerd processes of this home, found by their environment (their argv does not name the home). */
  daemonPids(): number[] {
    const needle = `BANGER_HOME=${this.dir}`;
    const pids: number[] = [];
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const pid = Number(e);
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (!/daemon\/main\.js|bangerd\.js/.test(cmd)) continue;
        if (!readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(needle)) continue;
        if (isAlive(pid)) pids.push(pid);
      } catch {
        /* exited while we looked */
      }
    }
    return pids;
  }

  /**
   * Stops this home's daemons (SIGTERM, then SIGKILL) and every VMM started under it, removes the
   * directory and the namespace. Safe to call twice.
   */
  async destroy(): Promise<void> {
    const pids = this.daemonPids();
    for (const pid of pids) signal(pid, 'SIGTERM');
    const deadline = Date.now() + 5000;
    while (pids.some(isAlive) && Date.now() < deadline) await sleep(25);
    for (const pid of [...pids, ...(await pidsMentioning(this.dir))]) if (isAlive(pid)) signal(pid, 'SIGKILL');
    if (this.ownsDir) await rm(this.dir, { recursive: true, force: true });
    if (this.netns && this.ownsNetns) await runProcess('ip', ['netns', 'del', this.netns], {}, 10_000).catch(() => {});
  }
}

/**
 * A child process whose output is watched while it runs. `ip netns exec` execs the command, so a
 * signal sent to the child reaches the CLI itself.
 */
export class Running {
  stdout = '';
  stderr = '';
  /** Resolves when the process has exited and its output is all read. */
  readonly ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: Array<() => void> = [];
  private done = false;

  constructor(readonly child: ChildProcess) {
    const changed = () => {
      for (const w of this.waiters.splice(0)) w();
    };
    child.stdout?.on('data', (c: Buffer) => {
      this.stdout += c.toString();
      changed();
    });
    child.stderr?.on('data', (c: Buffer) => {
      this.stderr += c.toString();
    });
    this.ended = new Promise((resolve) =>
      child.on('close', (code, sig) => {
        this.done = true;
        changed();
        resolve({ code, signal: sig });
      }),
    );
  }

  get running(): boolean {
    return !this.done;
  }

  /**
   * Waits until stdout matches `re` (true) or the process ended without it (false). `timeoutMs`
   * only bounds a hang: it throws, naming what was awaited and what arrived.
   */
  async waitFor(re: RegExp, timeoutMs = 120_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (re.test(this.stdout)) return true;
      if (this.done) return false;
      if (Date.now() > deadline) throw new Error(`${re} never arrived within ${timeoutMs} ms; stdout:\n${this.stdout.slice(-2000)}\nstderr: ${this.stderr}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 1000);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Its exit; `timeoutMs` only bounds a hang: it throws, naming what the child printed. */
  async exit(timeoutMs = 120_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`still running after ${timeoutMs} ms; stdout:\n${this.stdout.slice(-2000)}\nstderr: ${this.stderr}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.ended, hang]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the child (SIGKILL) if it still runs; for cleanup. */
  async stop(): Promise<void> {
    if (!this.done) this.child.kill('SIGKILL');
    await this.ended;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** Alive and not a zombie (an orphaned daemon may linger as a zombie until init reaps it). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
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
  /** The Debian kernel package (.deb) kernelDir was extracted from, when the manifest has it. */
  kernelDeb?: string | undefined;
  /** The rootfs tree as a tarball (pushed to test registries as an OCI layer). */
  rootfsTar?: string | undefined;
  /** The rootfs with openssh-server purged and no apt sources. */
  rootfsNoSshd?: string | undefined;
  /** A flat apt repository (Packages, Release, .debs) with openssh-server and its whole dependency closure. */
  sshdRepo?: string | undefined;
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
  const kernelDeb = m.kernelDeb && existsSync(m.kernelDeb) ? m.kernelDeb : undefined;
  const rootfsTar = m.rootfsTar && existsSync(m.rootfsTar) ? m.rootfsTar : undefined;
  const rootfsNoSshd = m.rootfsNoSshd && existsSync(m.rootfsNoSshd) ? m.rootfsNoSshd : undefined;
  const sshdRepo = m.sshdRepo && existsSync(join(m.sshdRepo, 'Release')) ? m.sshdRepo : undefined;
  return { kernelDir, kernelVersion, kernel, rootfs, kernelDeb, rootfsTar, rootfsNoSshd, sshdRepo };
}

/**
 * A built banger tree the given user can read: the project itself when it can (e.g. a clone in
 * /opt or /work), else a root-owned copy under `dir` (a clone under root's 0700 home is not
 * readable by anyone else). The copy keeps root as owner: the helper and the supervisor run only
 * root's code.
 */
export async function treeReadableBy(uid: number, gid: number, dir: string): Promise<string> {
  const probe = await runProcess(
    'setpriv',
    [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', 'test', '-r', join(ROOT, 'dist', 'src', 'daemon', 'main.js')],
    {},
    10_000,
  );
  if (probe.code === 0) return ROOT;
  const tree = join(dir, 'tree');
  await mkdir(tree, { recursive: true, mode: 0o755 });
  for (const p of ['bin', 'dist', 'package.json', 'node_modules', 'agent', 'native', 'images']) {
    if (!existsSync(join(ROOT, p))) continue;
    const r = await runProcess('cp', ['-a', join(ROOT, p), join(tree, p)], {}, 300_000);
    if (r.code !== 0) throw new Error(`copying ${p} for uid ${uid} failed: ${r.stderr}`);
  }
  await runProcess('chmod', ['-R', 'a+rX', tree], {}, 120_000);
  return tree;
}
