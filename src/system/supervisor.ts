import { type ChildProcess, spawn } from 'node:child_process';
import type { ServiceOwner } from './units.js';

/**
 * banger's own supervisor for hosts without systemd (containers, CI): it runs the root helper as
 * root and bangerd as the owner, restarts either when it dies (with backoff), and on SIGTERM stops
 * both. It signals only its two children, never a process group: QEMU runs in its own session
 * (src/vmm/process.ts spawns it detached), so VMs outlive a stop exactly as under systemd's
 * KillMode=process.
 */

export interface ChildSpec {
  name: 'bangerd-root' | 'bangerd';
  argv: string[];
  env: Record<string, string>;
  cwd: string;
}

/** What `banger system start` hands the supervisor (its state file, readable by `system status`). */
export interface SupervisorSpec {
  owner: ServiceOwner;
  helperSocket: string;
  /** The helper program and its leading arguments (restart reuses it). */
  helper: string[];
  daemonSocket: string;
  children: ChildSpec[];
  /** Filled by the supervisor: its pid and its children's current pids. */
  pid?: number;
  pids?: Partial<Record<ChildSpec['name'], number>>;
}

/** Restart delay after `crashes` consecutive early exits: 1 s, doubling, 30 s at most. */
export function backoffMs(crashes: number): number {
  return Math.min(30_000, 1000 * 2 ** Math.max(0, crashes - 1));
}

/** A child that ran this long before dying starts its backoff over. */
const STABLE_MS = 60_000;

interface Running {
  spec: ChildSpec;
  proc?: ChildProcess;
  crashes: number;
  startedAt: number;
  timer?: NodeJS.Timeout;
  exited?: Promise<void>;
}

export class Supervisor {
  private readonly running: Running[];
  private stopping = false;

  constructor(
    specs: ChildSpec[],
    private readonly log: (line: string) => void,
    private readonly onPids: (pids: Partial<Record<ChildSpec['name'], number>>) => void,
    private readonly beforeStart: (name: ChildSpec['name']) => Promise<void> = async () => {},
  ) {
    this.running = specs.map((spec) => ({ spec, crashes: 0, startedAt: 0 }));
  }

  async start(): Promise<void> {
    for (const r of this.running) {
      this.launch(r);
      await this.beforeStart(r.spec.name);
    }
  }

  private pids(): Partial<Record<ChildSpec['name'], number>> {
    const out: Partial<Record<ChildSpec['name'], number>> = {};
    for (const r of this.running) if (r.proc?.pid && r.proc.exitCode === null && r.proc.signalCode === null) out[r.spec.name] = r.proc.pid;
    return out;
  }

  private launch(r: Running): void {
    if (this.stopping) return;
    const [cmd, ...args] = r.spec.argv as [string, ...string[]];
    r.startedAt = Date.now();
    // stdio: the supervisor's own (its log file). Not detached: the children stay in the
    // supervisor's session, but nothing here ever signals the group.
    const proc = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], env: r.spec.env, cwd: r.spec.cwd });
    r.proc = proc;
    r.exited = new Promise((resolve) => proc.once('close', () => resolve()));
    proc.once('spawn', () => {
      this.log(`${r.spec.name} started (pid ${proc.pid})`);
      this.onPids(this.pids());
    });
    proc.once('error', (e) => this.log(`${r.spec.name} could not start: ${e.message}`));
    proc.once('close', (code, signal) => {
      this.onPids(this.pids());
      if (this.stopping) {
        this.log(`${r.spec.name} stopped (${signal ?? `exit ${code}`})`);
        return;
      }
      r.crashes = Date.now() - r.startedAt >= STABLE_MS ? 1 : r.crashes + 1;
      const delay = backoffMs(r.crashes);
      this.log(`${r.spec.name} exited (${signal ?? `exit ${code}`}); restarting in ${delay / 1000}s`);
      r.timer = setTimeout(() => this.launch(r), delay);
    });
  }

  /** SIGTERM to the daemon first (it may still talk to the helper), then the helper; SIGKILL after `graceMs`. */
  async stop(graceMs = 30_000): Promise<void> {
    this.stopping = true;
    for (const r of [...this.running].reverse()) {
      if (r.timer) clearTimeout(r.timer);
      const proc = r.proc;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) continue;
      proc.kill('SIGTERM');
      const killer = setTimeout(() => {
        this.log(`${r.spec.name} did not stop within ${graceMs / 1000}s: SIGKILL`);
        proc.kill('SIGKILL');
      }, graceMs);
      await r.exited;
      clearTimeout(killer);
    }
  }
}
