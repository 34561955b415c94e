import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { BangerError, toBangerError } from '../api/errors.js';
import { assertTrustedDir, MAX_REQUEST_BYTES, REQUEST_RECEIVE_MS } from '../host/helper-wire.js';
import type { HostNetOps } from '../host/privileged.js';
import type { PeerCred } from './peercred.js';
import { checkScope, execute, parseRequest, type Scope } from './protocol.js';

export interface HelperServerOptions {
  socketPath: string;
  /** The one uid whose connections are served (the user bangerd runs as). */
  ownerUid: number;
  ops: HostNetOps;
  scope: Scope;
  /** Reads SO_PEERCRED of an accepted connection (banger-peercred). */
  peerCred: (sock: Socket) => Promise<PeerCred>;
  /** One line per request or refusal (stderr). */
  log: (line: string) => void;
  /** Connections served at once; more are closed at accept. */
  maxConnections?: number;
  /** Time from accept to the whole request (peer check included); default REQUEST_RECEIVE_MS. */
  receiveMs?: number;
}

/** Control characters (C0, DEL, C1) out of anything a caller sent before it reaches the log. */
export function clean(text: string, max = 200): string {
  const s = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/**
 * The helper's socket and its connections: each connection's peer is authenticated by SO_PEERCRED
 * before a byte is read; then one request (a line, then EOF), validated whole, executed, answered.
 * The helper holds no per-VM state: starting and stopping it changes nothing on the host.
 */
export class HelperServer {
  private server: Server | undefined;
  private active = 0;
  private socketIno: number | undefined;

  constructor(private readonly o: HelperServerOptions) {}

  /** Connections being served (authenticating, receiving or executing). */
  get inFlight(): number {
    return this.active;
  }

  /** Creates the socket directory (root, 0755) or checks it, then listens; the socket ends up owner-owned, 0600. */
  async listen(): Promise<void> {
    const path = this.o.socketPath;
    const dir = dirname(path);
    try {
      assertTrustedDir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      assertTrustedDir(dirname(dir));
      mkdirSync(dir, { mode: 0o755 });
      chmodSync(dir, 0o755); // the umask may have narrowed it; the owner must reach the socket
      assertTrustedDir(dir);
    }
    await this.removeStaleSocket(path);
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => this.serve(sock));
    server.maxConnections = this.o.maxConnections ?? 32;
    // Created 0600 root-owned (umask), so nobody else can connect before the chown below.
    const umask = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path, exclusive: true }, () => resolve());
      });
    } finally {
      process.umask(umask);
    }
    server.on('error', (e) => this.o.log(`server error: ${clean(e.message)}`));
    chownSync(path, this.o.ownerUid, -1);
    chmodSync(path, 0o600);
    this.socketIno = lstatSync(path).ino;
    this.server = server;
  }

  /** A socket left by a helper that died is removed; one a live helper listens on is refused. */
  private async removeStaleSocket(path: string): Promise<void> {
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    if (!st.isSocket()) {
      throw new BangerError('precondition_failed', `${path} exists and is not a socket`, { fix: `remove ${path}, then start bangerd-root again` });
    }
    const live = await new Promise<boolean>((resolve) => {
      const c = connect({ path });
      c.on('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (live) {
      throw new BangerError('conflict', `another bangerd-root is already listening on ${path}`, { fix: 'stop it first (systemctl stop bangerd-root)' });
    }
    unlinkSync(path);
  }

  /** Stops accepting, lets requests in flight finish (at most `graceMs`), removes the socket. Touches no link or rule. */
  async close(graceMs = 30_000): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.close();
    try {
      if (lstatSync(this.o.socketPath).ino === this.socketIno) unlinkSync(this.o.socketPath);
    } catch {
      /* already gone */
    }
    const until = Date.now() + graceMs;
    while (this.active > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  }

  private async serve(sock: Socket): Promise<void> {
    this.active++;
    sock.on('error', () => {});
    // Authentication and the whole request must arrive within this; execution is not bounded by it.
    const receiving = setTimeout(() => {
      this.o.log('refused a connection: no complete request in time');
      sock.destroy();
    }, this.o.receiveMs ?? REQUEST_RECEIVE_MS);
    try {
      let peer: PeerCred;
      try {
        peer = await this.o.peerCred(sock);
      } catch (e) {
        this.o.log(`refused a connection: cannot read its peer credentials: ${clean((e as Error).message)}`);
        sock.destroy();
        return;
      }
      if (sock.destroyed) return; // the receive deadline passed while the peer was being identified
      const who = `peer uid=${peer.uid} pid=${peer.pid}`;
      if (peer.uid !== this.o.ownerUid) {
        this.o.log(`refused ${who}: only uid ${this.o.ownerUid} may use this helper`);
        sock.destroy();
        return;
      }
      const body = await readRequest(sock);
      clearTimeout(receiving);
      if (body === undefined) return; // destroyed by the deadline or the peer
      let op = '?';
      try {
        if (body.tooBig) {
          throw new BangerError('payload_too_large', `request larger than ${MAX_REQUEST_BYTES} bytes`, { fix: 'send fewer pins per policy' });
        }
        const nl = body.text.indexOf('\n');
        if (nl < 0) throw new BangerError('bad_request', 'the request must be one line ending with a newline');
        if (nl !== body.text.length - 1) {
          throw new BangerError('bad_request', 'one request per connection: data after the first request, nothing was executed', {
            fix: 'open a new connection for each request',
          });
        }
        const req = parseRequest(body.text.slice(0, nl));
        op = req.op;
        checkScope(req, this.o.scope);
        const result = await execute(req, this.o.ops);
        this.o.log(`op=${op} ${who} ok`);
        await respond(sock, { ok: true, result: result ?? null });
      } catch (e) {
        const err = toBangerError(e);
        this.o.log(`op=${clean(op, 64)} ${who} error ${err.code}: ${clean(err.message)}`);
        await respond(sock, { ok: false, error: { code: err.code, message: err.message, ...(err.fix ? { fix: err.fix } : {}) } });
      }
    } finally {
      clearTimeout(receiving);
      this.active--;
    }
  }
}

/** Everything the client sent until it shut down its write side; past the bound, the rest is read and dropped. */
function readRequest(sock: Socket): Promise<{ text: string; tooBig: boolean } | undefined> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve(undefined);
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    sock.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST_BYTES) {
        tooBig = true;
        chunks.length = 0;
      } else chunks.push(c);
    });
    sock.on('end', () => resolve({ text: tooBig ? '' : Buffer.concat(chunks).toString('utf8'), tooBig }));
    sock.on('close', () => resolve(undefined));
    sock.resume();
  });
}

function respond(sock: Socket, body: unknown): Promise<void> {
  return new Promise((resolve) => {
    if (sock.destroyed) return resolve();
    sock.end(`${JSON.stringify(body)}\n`, () => resolve());
    sock.on('close', () => resolve());
  });
}
