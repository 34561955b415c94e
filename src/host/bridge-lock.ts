import { connect, createServer, type Server } from 'node:net';
import { BangerError } from '../api/errors.js';
import { validateBridgeName } from './netplan.js';

/**
 * One daemon per bridge. Two daemons (two BANGER_HOMEs) configured with the same bridge_name would
 * fight over its TAPs and firewall tables, so the bridge is claimed with an abstract Unix socket
 * `\0banger-bridge:<netns>:<bridge>` held for the daemon's life:
 *
 * - abstract sockets are scoped to the network namespace, like the bridge itself (a daemon in a
 *   container or another namespace may own a bridge of the same name there);
 * - the kernel releases the name when the process dies, so a crash never leaves a stale lock;
 * - no file is involved, so nothing in /run needs root and nothing can be pre-created with a
 *   hostile owner. Another local user can bind the name first (a denial of service, reported as
 *   such); it gains nothing else, since the socket carries no data the daemon trusts.
 *
 * `netns` is the namespace banger's host commands run in (BANGER_NETNS, tests), which is part of
 * the name: the daemon process itself then stays in its own namespace.
 */
export class BridgeLock {
  private static readonly held = new Map<string, BridgeLock>();

  private constructor(
    readonly key: string,
    private readonly server: Server,
  ) {}

  static keyOf(bridge: string, netns?: string): string {
    validateBridgeName(bridge);
    return `\0banger-bridge:${netns ?? ''}:${bridge}`;
  }

  /** Claims `bridge` for this process (idempotent within the process); refuses it when another process holds it. */
  static async acquire(bridge: string, netns?: string): Promise<BridgeLock> {
    const key = BridgeLock.keyOf(bridge, netns);
    const mine = BridgeLock.held.get(key);
    if (mine) return mine;
    const server = createServer((s) => {
      s.on('error', () => {});
      s.end(`${process.pid}\n`);
    });
    server.on('error', () => {});
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path: key, exclusive: true }, () => resolve());
      });
    } catch (e) {
      server.close();
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
      const holder = await BridgeLock.holderPid(key);
      throw new BangerError(
        'conflict',
        `bridge ${bridge} is already used by another bangerd${holder ? ` (pid ${holder})` : ''}${netns ? ` in network namespace ${netns}` : ''}`,
        {
          fix: "each bangerd needs its own bridge: set a different `bridge_name` (and a non-overlapping `cidr`/`bridge_ip`) in this BANGER_HOME's config.toml, or stop the other daemon",
        },
      );
    }
    server.unref();
    const lock = new BridgeLock(key, server);
    BridgeLock.held.set(key, lock);
    return lock;
  }

  /** The pid the holder announces (digits only, bounded), or undefined. */
  private static holderPid(key: string): Promise<string | undefined> {
    return new Promise((resolve) => {
      let buf = '';
      const s = connect({ path: key });
      const done = (v: string | undefined) => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(1000, () => done(undefined));
      s.on('error', () => done(undefined));
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (buf.length > 16) done(undefined);
      });
      s.on('end', () => done(/^[0-9]{1,10}\n$/.test(buf) ? buf.trim() : undefined));
    });
  }

  release(): void {
    BridgeLock.held.delete(this.key);
    this.server.close();
  }
}
