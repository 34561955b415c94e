import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BANGER, BANGERD, type Result, ROOT, runProcess } from '../helpers/banger.js';

export { ROOT };

/**
 * One isolated banger home for integration tests: real CLI, real daemon, nothing shared with the
 * user's own banger or with other test files (they may run in parallel).
 */
export class Home {
  private constructor(readonly dir: string) {}

  /** Short path under /tmp: the socket path must fit in 108 bytes. */
  static async create(config?: string): Promise<Home> {
    const dir = await mkdtemp('/tmp/bg-');
    if (config !== undefined) {
      await mkdir(join(dir, 'config'), { recursive: true });
      await writeFile(join(dir, 'config', 'config.toml'), config);
    }
    return new Home(dir);
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

  banger(args: string[], timeoutMs = 30_000): Promise<Result> {
    return runProcess(process.execPath, [BANGER, ...args], { env: this.env }, timeoutMs);
  }

  bangerd(args: string[], timeoutMs = 30_000): Promise<Result> {
    return runProcess(process.execPath, [BANGERD, ...args], { env: this.env }, timeoutMs);
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

  /** Kills every daemon of this home (SIGTERM, then SIGKILL) and removes the directory. Safe to call twice. */
  async destroy(): Promise<void> {
    const pids = this.daemonPids();
    for (const pid of pids) signal(pid, 'SIGTERM');
    const deadline = Date.now() + 5000;
    while (pids.some(isAlive) && Date.now() < deadline) await sleep(25);
    for (const pid of pids) if (isAlive(pid)) signal(pid, 'SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
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

export async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export interface RawReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

/** A plain HTTP request over the daemon's socket, bypassing the client and the CLI. */
export function raw(socketPath: string, method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | number> = { ...headers };
    if (body !== undefined) {
      h['content-type'] = 'application/json';
      h['content-length'] = Buffer.byteLength(body);
    }
    const req = request({ socketPath, method, path, headers: h }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          /* kept as text */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export function buildInfoFile(): { version: string; commit: string; buildTime: string } {
  const path = join(ROOT, 'dist', 'build-info.json');
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm run build`);
  return JSON.parse(readFileSync(path, 'utf8'));
}
