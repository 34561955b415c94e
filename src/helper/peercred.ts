import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../api/errors.js';

/** The peer of a Unix socket as the kernel recorded it at connect (SO_PEERCRED). */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** native/build/banger-peercred, from dist/src/helper/peercred.js (built by scripts/build.mjs). */
export const PEERCRED_BIN = fileURLToPath(new URL('../../../native/build/banger-peercred', import.meta.url));

const ID_MAX = 2 ** 32 - 2; // (uid_t)-1 is "no id", never a caller
const LINE_RE = /^(0|[1-9][0-9]{0,9}) (0|[1-9][0-9]{0,9}) (0|[1-9][0-9]{0,9})\n$/;

/** banger-peercred's output, exactly "<pid> <uid> <gid>\n" with ids in range; anything else throws. */
export function parsePeercred(out: string): PeerCred {
  const m = LINE_RE.exec(out);
  const [pid, uid, gid] = m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [Number.NaN, Number.NaN, Number.NaN];
  if (!m || pid > 2 ** 31 - 1 || uid > ID_MAX || gid > ID_MAX) {
    throw new BangerError('internal', `unexpected banger-peercred output ${JSON.stringify(out.slice(0, 80))}`);
  }
  return { pid, uid, gid };
}

/**
 * The binary runs as root for every connection: it must be root's and writable by root only, so
 * nobody else can replace what the helper executes.
 */
export function assertPeercredBinary(path = PEERCRED_BIN): void {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch {
    throw new BangerError('missing_dependency', `${path} is missing`, { fix: 'build banger (npm run build: it compiles native/banger-peercred.c)' });
  }
  if (!st.isFile() || st.uid !== 0 || (st.mode & 0o022) !== 0) {
    throw new BangerError('precondition_failed', `refusing to run ${path}: it must be a root-owned file writable by root only`, {
      fix: `chown root:root ${path} && chmod 0755 ${path}`,
    });
  }
}

/** Reads the peer's credentials of an accepted Unix socket connection (the socket is lent to the tool as fd 3). */
export function peerCred(sock: Socket, options: { bin?: string; timeoutMs?: number } = {}): Promise<PeerCred> {
  return new Promise((resolve, reject) => {
    const child = spawn(options.bin ?? PEERCRED_BIN, [], { stdio: ['ignore', 'pipe', 'pipe', sock], env: {} });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 5000);
    child.stdout?.setEncoding('utf8').on('data', (c: string) => {
      if (out.length < 256) out += c;
    });
    child.stderr?.setEncoding('utf8').on('data', (c: string) => {
      if (err.length < 512) err += c;
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new BangerError('internal', `cannot run banger-peercred: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) {
        reject(new BangerError('internal', `banger-peercred failed (${signal ?? `exit ${code}`}): ${err.trim().slice(0, 200)}`));
        return;
      }
      try {
        resolve(parsePeercred(out));
      } catch (e) {
        reject(e);
      }
    });
  });
}
