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
    // The helper (root) writes to the supervisor's own log file. bangerd runs as the owner: it gets
    // pipes, never a descriptor of root's log (which it could truncate, forge helper lines in, or
    // fill), and what it prints is relayed line by line, cleaned, prefixed and capped.
    // Not detached: the children stay in the supervisor's session, but nothing signals the group.
    const trusted = r.spec.name === 'bangerd-root';
    const proc = spawn(cmd, args, { stdio: ['ignore', trusted ? 'inherit' : 'pipe', trusted ? 'inherit' : 'pipe'], env: r.spec.env, cwd: r.spec.cwd });
    if (!trusted) relayLines(proc, r.spec.name, this.log);
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

/** Per launch of an untrusted child: what its output may add to the supervisor's log. */
export const RELAY_MAX_BYTES = 8 * 1024 * 1024;
const RELAY_LINE_MAX = 2000;

/** Relays a child's stdout/stderr into `log` as `<name>: <line>`: control characters replaced, lines cut, total capped. */
export function relayLines(proc: ChildProcess, name: string, log: (line: string) => void, maxBytes = RELAY_MAX_BYTES): void {
  let budget = maxBytes;
  let said = false;
  for (const stream of [proc.stdout, proc.stderr]) {
    let carry = '';
    stream?.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (carry + chunk).split('\n');
      carry = (lines.pop() ?? '').slice(0, RELAY_LINE_MAX);
      for (const l of lines) {
        // Counted per line, so one large chunk cannot overshoot the cap.
        budget -= l.length + 1;
        if (budget < 0) {
          if (!said) log(`${name}: more than ${maxBytes} bytes of output since its start: the rest is dropped`);
          said = true;
          return;
        }
        log(`${name}: ${l.slice(0, RELAY_LINE_MAX).replace(/[\u0000-\u001f\u007f-\u009f]/g, '?')}`);
      }
    });
  }
}
