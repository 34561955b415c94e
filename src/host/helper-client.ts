import { lstatSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { BangerError, ERROR_CODES, type ErrorCode } from '../api/errors.js';
import { assertTrustedDir, HELPER_FIX, HELPER_SOCKET_DEFAULT, type HelperOp, MAX_RESPONSE_BYTES } from './helper-wire.js';
import type { NetPolicy } from './netplan.js';
import type { DoctorInfo, HostNetOps, Pinning } from './privileged.js';

export interface HelperOpsOptions {
  /** The helper's socket; default /run/banger-root/helper.sock. */
  socketPath?: string;
  /** Per request, connect to response; default 120 s (applyPolicy runs several host commands). */
  timeoutMs?: number;
  /** How long a helper that is not listening (being restarted) is waited for; default 10 s. */
  restartGraceMs?: number;
  /**
   * The network namespace the helper works in, when it is not the daemon's own (tests start the
   * helper under `ip netns exec`): only a label for the bridge claim's key, the helper is not told.
   */
  namespace?: string;
}

/** The helper was not listening (no socket, or nobody accepting): the request never left. */
class NotListening extends Error {
  constructor(readonly error: BangerError) {
    super(error.message);
  }
}

const PINNING = new Set(['nft', 'ebtables', 'none']);
const FIREWALL = new Set(['nft', 'iptables', 'none']);
const MODE = new Set(['root', 'sudo', 'helper', 'unavailable']);

const isStringList = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

/**
 * HostNetOps through the `bangerd-root` helper: what a daemon that is not root uses. Each call is
 * one connection carrying one request; the helper validates it, runs it with PrivilegedOps and
 * answers. Before connecting, the socket path is checked (a root-owned directory nobody else can
 * write to, a socket owned by this user: what the helper makes), so a socket planted by another
 * user is never spoken to.
 */
export class HelperOps implements HostNetOps {
  readonly socketPath: string;
  readonly namespace: string | undefined;
  private readonly timeoutMs: number;
  private readonly restartGraceMs: number;

  constructor(options: HelperOpsOptions = {}) {
    this.socketPath = options.socketPath ?? HELPER_SOCKET_DEFAULT;
    this.namespace = options.namespace;
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.restartGraceMs = options.restartGraceMs ?? 10_000;
  }

  /** Whether a helper socket this user may trust is there (compose.ts picks HelperOps on it); never throws. */
  static available(socketPath = HELPER_SOCKET_DEFAULT): boolean {
    try {
      HelperOps.checkSocket(socketPath);
      return true;
    } catch {
      return false;
    }
  }

  private static checkSocket(socketPath: string): void {
    try {
      assertTrustedDir(dirname(socketPath));
      const st = lstatSync(socketPath);
      const me = process.getuid?.();
      if (st.isSocket() && st.uid === 0 && me !== 0) {
        // The helper creates its socket root-owned and hands it to the owner right after listen():
        // a restarting helper, not yet ours to use (the directory is root's, so nobody else made it).
        throw new NotListening(new BangerError('unavailable', `the privileged helper is starting (${socketPath} is not handed over yet)`, { fix: HELPER_FIX }));
      }
      if (!st.isSocket() || st.uid !== me) {
        throw new BangerError(
          'precondition_failed',
          `refusing ${socketPath}: it is ${st.isSocket() ? `a socket owned by uid ${st.uid}` : 'not a socket'}, not the helper's socket for uid ${me}`,
          { fix: `start bangerd-root with --owner ${me} (see docs/privileges.md)` },
        );
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NotListening(new BangerError('unavailable', `the privileged helper is not running (${socketPath} does not exist)`, { fix: HELPER_FIX }));
      }
      throw e;
    }
  }

  /**
   * One request, one response; `{ok:false}` becomes the helper's BangerError. While the helper is
   * not there (its supervisor or systemd restarts it within seconds) the connection is retried for
   * `restartGraceMs`: nothing was sent, so a retry cannot run an operation twice.
   */
  async call(op: HelperOp, args: Record<string, unknown>): Promise<unknown> {
    const line = `${JSON.stringify({ op, args })}\n`;
    const deadline = Date.now() + this.restartGraceMs;
    for (;;) {
      try {
        HelperOps.checkSocket(this.socketPath);
        return this.answer(op, await this.exchange(op, line));
      } catch (e) {
        if (!(e instanceof NotListening) || Date.now() >= deadline) throw e instanceof NotListening ? e.error : e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private exchange(op: HelperOp, line: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let settled = false;
      const sock = connect({ path: this.socketPath });
      const finish = (err: Error | undefined, text?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        if (err) reject(err);
        else resolve(text ?? '');
      };
      const timer = setTimeout(
        () => finish(new BangerError('timeout', `the privileged helper did not answer ${op} within ${this.timeoutMs} ms`, { fix: HELPER_FIX })),
        this.timeoutMs,
      );
      sock.on('connect', () => sock.end(line));
      sock.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_RESPONSE_BYTES) {
          finish(new BangerError('internal', `the privileged helper's answer to ${op} exceeds ${MAX_RESPONSE_BYTES} bytes`));
          return;
        }
        chunks.push(c);
      });
      sock.on('end', () => finish(undefined, Buffer.concat(chunks).toString('utf8')));
      sock.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') {
          finish(new NotListening(new BangerError('unavailable', `the privileged helper is not running (${this.socketPath}: ${e.code})`, { fix: HELPER_FIX })));
        } else if (e.code === 'EPIPE' || e.code === 'ECONNRESET') {
          finish(
            new BangerError('unavailable', `the privileged helper closed the connection during ${op} (it refuses callers other than its owner)`, {
              fix: `check bangerd-root's log; it must run with --owner ${process.getuid?.()}`,
            }),
          );
        } else {
          finish(new BangerError('unavailable', `cannot reach the privileged helper at ${this.socketPath}: ${e.message}`, { fix: HELPER_FIX }));
        }
      });
    });
  }

  private answer(op: HelperOp, raw: string): unknown {
    if (!raw) {
      throw new BangerError('unavailable', `the privileged helper closed the connection without answering ${op} (it refuses callers other than its owner)`, {
        fix: `check bangerd-root's log; it must run with --owner ${process.getuid?.()}`,
      });
    }
    let res: { ok?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; fix?: unknown } };
    try {
      res = JSON.parse(raw);
    } catch {
      throw new BangerError('internal', `the privileged helper answered ${op} with something that is not JSON`);
    }
    if (res?.ok === true) return res.result;
    const err = res?.error;
    if (res?.ok === false && err && typeof err.message === 'string') {
      const code: ErrorCode = typeof err.code === 'string' && err.code in ERROR_CODES ? (err.code as ErrorCode) : 'internal';
      throw new BangerError(code, err.message, typeof err.fix === 'string' ? { fix: err.fix } : {});
    }
    throw new BangerError('internal', `the privileged helper answered ${op} with an unexpected shape`);
  }

  private bad(op: HelperOp): BangerError {
    return new BangerError('internal', `the privileged helper answered ${op} with a result of the wrong type`);
  }

  async doctorInfo(): Promise<DoctorInfo> {
    const r = (await this.call('doctorInfo', {})) as Partial<DoctorInfo> | null;
    if (!r || !MODE.has(r.mode as string) || typeof r.detail !== 'string' || !FIREWALL.has(r.firewall as string) || !PINNING.has(r.pinning as string)) {
      throw this.bad('doctorInfo');
    }
    // The helper runs as root; from the daemon's side the mode is "through the helper".
    return {
      mode: r.mode === 'root' ? 'helper' : 'unavailable',
      detail: `through bangerd-root at ${this.socketPath}: ${r.detail}`,
      firewall: r.firewall as DoctorInfo['firewall'],
      pinning: r.pinning as Pinning,
    };
  }

  async pinning(): Promise<Pinning> {
    const r = await this.call('pinning', {});
    if (!PINNING.has(r as string)) throw this.bad('pinning');
    return r as Pinning;
  }

  async ensureBridge(name: string, addressCidr: string): Promise<void> {
    await this.call('ensureBridge', { name, addressCidr });
  }

  async deleteBridge(name: string): Promise<void> {
    await this.call('deleteBridge', { name });
  }

  async createTap(name: string, bridge: string): Promise<void> {
    await this.call('createTap', { name, bridge });
  }

  async deleteTap(name: string, bridge: string): Promise<void> {
    await this.call('deleteTap', { name, bridge });
  }

  async listTaps(bridge: string): Promise<string[]> {
    const r = await this.call('listTaps', { bridge });
    if (!isStringList(r)) throw this.bad('listTaps');
    return r;
  }

  async routeVmDomain(bridge: string, dnsIp: string): Promise<boolean> {
    const r = await this.call('routeVmDomain', { bridge, dnsIp });
    if (typeof r !== 'boolean') throw this.bad('routeVmDomain');
    return r;
  }

  async unrouteVmDomain(bridge: string): Promise<void> {
    await this.call('unrouteVmDomain', { bridge });
  }

  async applyPolicy(spec: NetPolicy): Promise<void> {
    await this.call('applyPolicy', { policy: spec });
  }

  async removePolicy(bridge: string): Promise<void> {
    await this.call('removePolicy', { bridge });
  }

  async currentNatIps(bridge: string): Promise<string[]> {
    const r = await this.call('currentNatIps', { bridge });
    if (!isStringList(r)) throw this.bad('currentNatIps');
    return r;
  }
}
