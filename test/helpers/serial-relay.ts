/**
 * A FAKE of QEMU's virtio-serial socket chardevs, for driving the real agent binary on this host
 * through the product's host client (src/guest/): per port, the host side listens where QEMU's
 * socket would be (`agent.sock`, `agent-data-K.sock`) and the agent connects to a guest side
 * (`guest/…`), as it opens its virtio port. Bytes are relayed with flow control both ways; the
 * host disconnecting makes the agent's read see EOF (as in a guest); the agent reconnecting keeps
 * the host's connection (as QEMU does). Host bytes sent while no agent is connected are held
 * (bounded) until it connects.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_BINARY, ensureAgentBuilt } from './agent-harness.js';

const MAX_HELD = 4 * 1024 * 1024;

class RelayPort {
  guest: net.Socket | null = null;
  host: net.Socket | null = null;
  private held: Buffer[] = [];
  private heldBytes = 0;
  readonly guestServer: net.Server;
  readonly hostServer: net.Server;
  hostConnections = 0;

  constructor(
    readonly guestPath: string,
    readonly hostPath: string,
  ) {
    this.guestServer = net.createServer((s) => {
      this.guest?.destroy();
      this.guest = s;
      s.on('error', () => {});
      s.on('data', (d: Buffer) => {
        // No host connected: the guest's bytes are lost (as on a virtio port nobody opened).
        if (this.host && !this.host.write(d)) {
          s.pause();
          this.host.once('drain', () => s.resume());
        }
      });
      s.on('close', () => {
        if (this.guest === s) this.guest = null;
      });
      for (const b of this.held.splice(0)) s.write(b);
      this.heldBytes = 0;
    });
    this.hostServer = net.createServer((s) => {
      this.host?.destroy();
      this.host = s;
      this.hostConnections++;
      s.on('error', () => {});
      s.on('data', (d: Buffer) => {
        if (!this.guest) {
          if (this.heldBytes + d.length <= MAX_HELD) {
            this.held.push(d);
            this.heldBytes += d.length;
          }
          return;
        }
        if (!this.guest.write(d)) {
          s.pause();
          this.guest.once('drain', () => s.resume());
        }
      });
      s.on('close', () => {
        if (this.host !== s) return;
        this.host = null;
        // The guest's read of the port sees the host leave.
        this.guest?.destroy();
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.guestServer.listen(this.guestPath, r));
    await new Promise<void>((r) => this.hostServer.listen(this.hostPath, r));
  }

  close(): void {
    this.guest?.destroy();
    this.host?.destroy();
    this.guestServer.close();
    this.hostServer.close();
  }
}

/** The real agent behind fake virtio-serial ports: `agentSocket` is what a VmmHandle would name. */
export class RelayedAgent {
  private agent: ChildProcess | null = null;
  log = '';
  private constructor(
    readonly dir: string,
    readonly control: RelayPort,
    readonly data: RelayPort[],
  ) {}

  get agentSocket(): string {
    return this.control.hostPath;
  }
  get procsDir(): string {
    return join(this.dir, 'procs');
  }

  static async start(dataPorts = 4): Promise<RelayedAgent> {
    ensureAgentBuilt();
    const dir = await mkdtemp(join(tmpdir(), 'banger-relay-'));
    await mkdir(join(dir, 'guest'));
    const control = new RelayPort(join(dir, 'guest', 'agent.sock'), join(dir, 'agent.sock'));
    const data = Array.from({ length: dataPorts }, (_, k) => new RelayPort(join(dir, 'guest', `data-${k}.sock`), join(dir, `agent-data-${k}.sock`)));
    for (const p of [control, ...data]) await p.listen();
    const r = new RelayedAgent(dir, control, data);
    r.spawn();
    return r;
  }

  private spawn(): void {
    const args = ['--device', this.control.guestPath, '--procs-dir', this.procsDir, '--cgroup-root', 'none'];
    for (const p of this.data) args.push('--data', p.guestPath);
    const child = spawn(AGENT_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (d: Buffer) => {
      this.log = (this.log + d.toString()).slice(-32 * 1024);
    });
    this.agent = child;
  }

  /** SIGKILL the agent and start a new one on the same ports (supervised processes live on). */
  async restartAgent(): Promise<void> {
    await this.killAgent();
    this.spawn();
  }

  private async killAgent(): Promise<void> {
    const child = this.agent;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
  }

  /** Kills the agent and every process it started (the process groups named in `sup`), removes the dirs. */
  async close(): Promise<void> {
    await this.killAgent();
    if (existsSync(this.procsDir)) {
      for (const id of readdirSync(this.procsDir)) {
        try {
          if (existsSync(join(this.procsDir, id, 'status'))) continue;
          const [sup, child] = readFileSync(join(this.procsDir, id, 'sup'), 'utf8')
            .split(' ')
            .map(Number);
          if (child) process.kill(-child, 'SIGKILL');
          if (sup) process.kill(sup, 'SIGKILL');
        } catch {
          /* gone already */
        }
      }
    }
    for (const p of [this.control, ...this.data]) p.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}
