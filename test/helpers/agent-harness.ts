/**
 * A TEST HARNESS around the real guest agent binary (agent/build/banger-agent) running on this
 * host, no VM: the harness listens on a control Unix socket and N data Unix sockets, and the agent
 * connects to them (`--device` and `--data`), as it would to QEMU's virtio-serial ports. It is not
 * the product client (that is src/guest/'s): it speaks the wire protocol of docs/processes.md as
 * plainly as possible so tests can also send what a correct client never would.
 *
 * Each harness has its own temp `--procs-dir` and, when a cgroup v2 hierarchy is writable, its own
 * temp cgroup root (removed, after killing what is left in it, by close()); otherwise `none`.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { encodeData, encodeFrame, type Frame, FrameDecoder } from '../../src/guest/agent-frames.js';

/** The package root: the first parent holding agent/Makefile (works from src and from dist). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'agent', 'Makefile'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('agent/Makefile not found above the test');
    dir = up;
  }
  return dir;
}

export const AGENT_BINARY = join(packageRoot(), 'agent', 'build', 'banger-agent');

export function ensureAgentBuilt(): void {
  if (!existsSync(AGENT_BINARY)) execFileSync('make', ['-s', '-C', dirname(dirname(AGENT_BINARY))], { stdio: 'inherit' });
}

/** The mount point of the cgroup v2 hierarchy, or null. */
export function cgroup2Mount(): string | null {
  try {
    for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, mountPoint, fsType] = line.split(' ');
      if (fsType === 'cgroup2' && mountPoint) return mountPoint;
    }
  } catch {
    /* no /proc/mounts: no cgroups */
  }
  return null;
}

/** A fresh cgroup directory for one harness, or null when cgroup v2 is missing or not writable (not root). */
function makeTestCgroup(): string | null {
  const mount = cgroup2Mount();
  if (!mount) return null;
  const dir = join(mount, `banger-test-${randomBytes(4).toString('hex')}`);
  try {
    mkdirSync(dir);
    return dir;
  } catch {
    return null;
  }
}

/** Kills everything in a cgroup subtree and removes it (children first). */
function removeCgroupTree(dir: string): void {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeCgroupTree(join(dir, e.name));
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
  } catch {
    /* an old kernel without cgroup.kill: the processes were killed by their supervisors */
  }
  for (let i = 0; i < 50; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch {
      execFileSync('sleep', ['0.1']);
    }
  }
}

export class AgentCallError extends Error {}

/** One JSON-lines control connection from the agent. */
class ControlLink {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, (reply: Record<string, unknown>) => void>();
  readonly badLines: string[] = [];

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('utf8');
      for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        let reply: Record<string, unknown>;
        try {
          reply = JSON.parse(line) as Record<string, unknown>;
        } catch {
          this.badLines.push(line.slice(0, 200)); // not JSON: kept for the failure message of the call that waits
          continue;
        }
        const done = this.pending.get(reply.id as number);
        this.pending.delete(reply.id as number);
        done?.(reply);
      }
    });
    socket.on('error', () => {});
  }

  request(method: string, params?: unknown): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    const line = JSON.stringify(params === undefined ? { id, method } : { id, method, params });
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.socket.write(`${line}\n`);
    });
  }
}

export interface SessionResult {
  /** The R frame's JSON. */
  result: Record<string, unknown>;
  stdout: Buffer;
  stderr: Buffer;
  /** D frames of stream 0 (file content, tar stream). */
  data: Buffer;
}

export interface SessionControl {
  /** Sends a raw frame (or raw bytes) on the session's port. */
  send(bytes: Buffer): void;
  cancel(): void;
  /** Bytes received so far per stream. */
  received: { stdout: number; stderr: number; data: number };
}

export interface SessionOptions {
  /** Which data port (default 0). */
  port?: number;
  /** Sent as D frames of stream 0, then E. */
  stdin?: Buffer;
  /** Do not send E after stdin (an attach that keeps stdin open). */
  noEof?: boolean;
  /** Raw bytes written before the S frame (garbage, leftovers of an older session). */
  before?: Buffer;
  /** Called on every D frame; may cancel or send more. */
  onData?: (stream: number, data: Buffer, ctl: SessionControl) => void;
  /** Called once A arrived. */
  onAccepted?: (ctl: SessionControl) => void;
  timeoutMs?: number;
}

/** One data port: the agent's worker connects to it (and reconnects when it drops). */
export class DataPort {
  socket: net.Socket | null = null;
  /** The last frames that arrived outside any session (at most 16), e.g. the reopen announcement. */
  readonly idleFrames: Frame[] = [];
  private waiters: Array<() => void> = [];
  private onFrame: ((frame: Frame) => void) | null = null;
  private decoder = new FrameDecoder();
  readonly server: net.Server;

  constructor(readonly path: string) {
    this.server = net.createServer((socket) => {
      this.socket?.destroy();
      this.socket = socket;
      this.decoder = new FrameDecoder();
      socket.on('data', (chunk: Buffer) => {
        for (const frame of this.decoder.push(chunk)) {
          if (this.onFrame) this.onFrame(frame);
          else if (this.idleFrames.push(frame) > 16) this.idleFrames.shift();
        }
      });
      socket.on('error', () => {});
      socket.on('close', () => {
        if (this.socket === socket) this.socket = null;
      });
      for (const w of this.waiters.splice(0)) w();
    });
  }

  async connected(timeoutMs: number): Promise<net.Socket> {
    const deadline = Date.now() + timeoutMs;
    while (!this.socket || this.socket.destroyed) {
      if (Date.now() > deadline) throw new Error(`the agent did not connect to data port ${this.path}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), sleep(100)]);
    }
    return this.socket;
  }

  async session(request: Record<string, unknown>, opts: SessionOptions): Promise<SessionResult> {
    const socket = await this.connected(opts.timeoutMs ?? 30_000);
    const nonce = randomBytes(8).toString('hex');
    const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], data: [] as Buffer[] };
    const ctl: SessionControl = {
      send: (bytes) => socket.write(bytes),
      cancel: () => socket.write(encodeFrame('C')),
      received: { stdout: 0, stderr: 0, data: 0 },
    };
    return new Promise<SessionResult>((resolve, reject) => {
      let accepted = false;
      const finish = (error: Error | null, value?: SessionResult) => {
        clearTimeout(timer);
        socket.off('close', onClose);
        this.onFrame = null;
        if (error) reject(error);
        else resolve(value as SessionResult);
      };
      const timer = setTimeout(
        () => finish(new Error(`session ${JSON.stringify(request)} did not end within ${opts.timeoutMs ?? 30_000} ms`)),
        opts.timeoutMs ?? 30_000,
      );
      const onClose = () => finish(new Error('the agent closed the data port mid-session'));
      socket.once('close', onClose);
      const json = (frame: Frame): Record<string, unknown> => {
        try {
          return JSON.parse(frame.payload.toString()) as Record<string, unknown>;
        } catch {
          throw new Error(`the agent sent a ${frame.type} frame that is not JSON: ${frame.payload.toString().slice(0, 200)}`);
        }
      };
      this.onFrame = (frame) => {
        try {
          if (!accepted) {
            if (frame.type === 'A' && json(frame).nonce === nonce) {
              accepted = true;
              opts.onAccepted?.(ctl);
              if (opts.stdin) for (const f of encodeData(opts.stdin, 0)) socket.write(f);
              if (opts.stdin && !opts.noEof) socket.write(encodeFrame('E'));
            }
            return; // anything before our A belongs to an older session
          }
          if (frame.type === 'D') {
            const key = frame.stream === 1 ? 'stdout' : frame.stream === 2 ? 'stderr' : 'data';
            out[key].push(frame.payload);
            ctl.received[key] += frame.payload.length;
            opts.onData?.(frame.stream, frame.payload, ctl);
          } else if (frame.type === 'R') {
            finish(null, {
              result: json(frame),
              stdout: Buffer.concat(out.stdout),
              stderr: Buffer.concat(out.stderr),
              data: Buffer.concat(out.data),
            });
          }
        } catch (error) {
          finish(error as Error);
        }
      };
      if (opts.before) socket.write(opts.before);
      socket.write(encodeFrame('S', JSON.stringify({ nonce, ...request })));
    });
  }
}

export interface AgentHarnessOptions {
  /** Data ports (default 2). */
  dataPorts?: number;
  /** false: `--cgroup-root none` even when cgroups are writable. */
  cgroups?: boolean;
}

export class AgentHarness {
  private agent: ChildProcess | null = null;
  private control: ControlLink | null = null;
  private controlWaiters: Array<() => void> = [];
  private controlServer: net.Server | null = null;
  readonly ports: DataPort[] = [];
  /** What the agent printed on stderr (its log), for failure messages. */
  log = '';

  private constructor(
    readonly dir: string,
    readonly procsDir: string,
    /** The cgroup root given to the agent, or null for `none`. */
    readonly cgroupRoot: string | null,
  ) {}

  static async start(opts: AgentHarnessOptions = {}): Promise<AgentHarness> {
    ensureAgentBuilt();
    const dir = await mkdtemp(join(tmpdir(), 'banger-agent-'));
    const procsDir = join(dir, 'procs');
    const h = new AgentHarness(dir, procsDir, opts.cgroups === false ? null : makeTestCgroup());
    h.controlServer = net.createServer((socket) => {
      h.control?.socket.destroy();
      h.control = new ControlLink(socket);
      socket.on('close', () => {
        if (h.control?.socket === socket) h.control = null;
      });
      for (const w of h.controlWaiters.splice(0)) w();
    });
    await new Promise<void>((resolve) => h.controlServer!.listen(join(dir, 'agent.sock'), resolve));
    for (let k = 0; k < (opts.dataPorts ?? 2); k++) {
      const port = new DataPort(join(dir, `agent-data-${k}.sock`));
      await new Promise<void>((resolve) => port.server.listen(port.path, resolve));
      h.ports.push(port);
    }
    h.spawnAgent();
    await h.call('ping');
    return h;
  }

  get args(): string[] {
    const args = ['--device', join(this.dir, 'agent.sock'), '--procs-dir', this.procsDir, '--cgroup-root', this.cgroupRoot ?? 'none'];
    for (const p of this.ports) args.push('--data', p.path);
    return args;
  }

  get pid(): number | undefined {
    return this.agent?.pid;
  }

  private spawnAgent(): void {
    const child = spawn(AGENT_BINARY, this.args, { stdio: ['ignore', 'ignore', 'pipe'] });
    // a test runner that exits without close() must not leave an agent behind (its workers die with it)
    const reap = () => child.kill('SIGKILL');
    process.once('exit', reap);
    child.once('exit', () => process.off('exit', reap));
    child.stderr!.on('data', (d: Buffer) => {
      this.log += d.toString();
      if (this.log.length > 64 * 1024) this.log = this.log.slice(-32 * 1024);
    });
    this.agent = child;
  }

  /** The raw reply `{id, ok, result|error}`. */
  async request(method: string, params?: unknown, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (!this.control) {
      if (Date.now() > deadline) throw new Error(`the agent did not connect its control channel; log:\n${this.log}`);
      await Promise.race([new Promise<void>((r) => this.controlWaiters.push(r)), sleep(100)]);
    }
    const reply = this.control.request(method, params);
    const timeout = sleep(Math.max(1, deadline - Date.now())).then(() => {
      throw new Error(`${method} got no reply within ${timeoutMs} ms; log:\n${this.log}`);
    });
    return Promise.race([reply, timeout]);
  }

  /** The result of a successful call; AgentCallError with the agent's message otherwise. */
  async call<T = Record<string, unknown>>(method: string, params?: unknown, timeoutMs?: number): Promise<T> {
    const reply = await this.request(method, params, timeoutMs);
    if (reply.ok !== true) throw new AgentCallError(String(reply.error));
    return reply.result as T;
  }

  /** One data-channel session: S with a fresh nonce, wait for A, collect D frames until R. */
  session(request: Record<string, unknown>, opts: SessionOptions = {}): Promise<SessionResult> {
    const port = this.ports[opts.port ?? 0];
    if (!port) throw new Error(`no data port ${opts.port}`);
    return port.session(request, opts);
  }

  /** The raw socket of a data port (for garbage and disconnect tests). */
  async portSocket(k = 0): Promise<net.Socket> {
    const port = this.ports[k];
    if (!port) throw new Error(`no data port ${k}`);
    return port.connected(10_000);
  }

  /** Polls proc.show until the process is no longer running. */
  async waitExit(id: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.call('proc.show', { id });
      if (info.state !== 'running') return info;
      if (Date.now() > deadline) throw new Error(`process ${id} still running after ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  private async killAgent(): Promise<void> {
    const child = this.agent;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await exited;
  }

  /** Kills the agent (SIGKILL: no goodbye) and starts a new one on the same sockets and directories. */
  async restartAgent(): Promise<void> {
    await this.killAgent();
    this.control?.socket.destroy();
    this.control = null;
    for (const p of this.ports) {
      p.socket?.destroy();
      p.socket = null;
    }
    this.spawnAgent();
    await this.call('ping');
  }

  async stopAgent(): Promise<void> {
    await this.killAgent();
  }

  /** Kills the agent and every process it started (cgroup kill, then the process groups named in `sup`), removes the dirs. */
  async close(): Promise<void> {
    await this.killAgent();
    this.control?.socket.destroy();
    for (const p of this.ports) {
      p.socket?.destroy();
      p.server.close();
    }
    this.controlServer?.close();
    if (existsSync(this.procsDir)) {
      for (const id of readdirSync(this.procsDir)) {
        if (existsSync(join(this.procsDir, id, 'status'))) continue; // ended: its pids may belong to others now
        try {
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
    if (this.cgroupRoot) removeCgroupTree(this.cgroupRoot);
    await rm(this.dir, { recursive: true, force: true });
  }
}
