import { connect, type Socket } from 'node:net';
import { VmmError } from '../driver.js';

const MAX_LINE = 1024 * 1024;

/**
 * Minimal QMP client: greeting, capabilities negotiation, then one command at a time with
 * id correlation. Asynchronous events are ignored. One short-lived connection per use: QMP
 * accepts a new client once the previous one disconnected.
 */
export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private greeted!: Promise<void>;

  private constructor(private readonly socket: Socket) {}

  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = connect(path);
    const client = new QmpClient(socket);
    let onGreeting!: () => void;
    client.greeted = new Promise<void>((resolve) => {
      onGreeting = resolve;
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => client.onData(chunk, onGreeting));
    socket.on('error', (e) => client.failAll(e));
    socket.on('close', () => client.failAll(new Error('QMP connection closed')));
    const timer = setTimeout(() => socket.destroy(new Error(`QMP on ${path} did not greet within ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        client.greeted.then(resolve, reject);
      });
      await client.execute('qmp_capabilities');
    } catch (e) {
      socket.destroy();
      throw new VmmError(`cannot talk to QEMU's QMP socket ${path}: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VmmError(`QMP ${command} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string, onGreeting: () => void): void {
    this.buf += chunk;
    if (this.buf.length > MAX_LINE) {
      this.socket.destroy(new Error('QMP message too large'));
      return;
    }
    let nl = this.buf.indexOf('\n');
    while (nl >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      nl = this.buf.indexOf('\n');
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) onGreeting();
      const id = typeof msg.id === 'string' ? msg.id : undefined;
      if (!id) continue;
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      if ('error' in msg) {
        const err = msg.error as { desc?: string; class?: string };
        p.reject(new VmmError(`QMP error: ${err.desc ?? err.class ?? 'unknown'}`));
      } else p.resolve(msg.return);
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}
