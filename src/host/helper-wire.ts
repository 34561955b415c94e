import { lstatSync, type Stats } from 'node:fs';
import { dirname, isAbsolute, normalize } from 'node:path';
import { BangerError } from '../api/errors.js';

/**
 * What the `bangerd-root` helper (src/helper) and its client (HelperOps) share: the operation
 * names, the framing limits and the socket's default path, and the one check both make before
 * trusting a socket path. No zod here: the client side stays light.
 *
 * Framing: the client writes ONE newline-terminated JSON request `{op, args}` and shuts down its
 * write side; the helper reads until EOF (so a second request on the connection is seen, and
 * refused, before anything runs), answers one JSON line `{ok:true, result}` or
 * `{ok:false, error:{code, message, fix?}}`, and closes.
 */

export const HELPER_SOCKET_DEFAULT = '/run/banger-root/helper.sock';

/** The operations the helper executes: HostNetOps's methods, nothing else. */
export const HELPER_OPS = [
  'doctorInfo',
  'pinning',
  'ensureBridge',
  'deleteBridge',
  'createTap',
  'deleteTap',
  'listTaps',
  'routeVmDomain',
  'unrouteVmDomain',
  'applyPolicy',
  'removePolicy',
  'currentNatIps',
] as const;
export type HelperOp = (typeof HELPER_OPS)[number];

/**
 * Largest request: 1 MiB. applyPolicy carries every pin of the bridge (about 85 bytes each), so
 * this is about 12,000 running VMs on one bridge, far beyond one host.
 */
export const MAX_REQUEST_BYTES = 1024 * 1024;
/** Largest response (listTaps/currentNatIps lists, error messages). */
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;
/** Time a client has, from connecting, to send its whole request. */
export const REQUEST_RECEIVE_MS = 10_000;

export const HELPER_FIX = 'start bangerd-root (see docs/privileges.md)';

const describe = (st: Stats) => `owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`;

/**
 * Refuses a directory a non-root user could have put (or could swap) a socket in: `dir` itself must
 * be a real directory (no symlink), owned by root and writable by nobody else; each ancestor must
 * be root-owned and a real directory, writable by others only when sticky (/tmp: root's entries
 * in it cannot be renamed by anyone else). Returns nothing; throws BangerError('precondition_failed').
 */
export function assertTrustedDir(dir: string): void {
  if (!isAbsolute(dir)) throw new BangerError('bad_request', `socket directory ${JSON.stringify(dir)} is not an absolute path`);
  const path = normalize(dir);
  const chain: string[] = [];
  for (let p = path; ; p = dirname(p)) {
    chain.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of chain) {
    let st: Stats;
    try {
      st = lstatSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw e;
      throw new BangerError('precondition_failed', `cannot inspect ${p}: ${(e as Error).message}`);
    }
    const last = p === path;
    const writableByOthers = (st.mode & 0o022) !== 0;
    const sticky = (st.mode & 0o1000) !== 0;
    if (!st.isDirectory() || st.uid !== 0 || (writableByOthers && (last || !sticky))) {
      throw new BangerError(
        'precondition_failed',
        `refusing the helper socket directory ${path}: ${p} is ${st.isSymbolicLink() ? 'a symlink' : st.isDirectory() ? `a directory (${describe(st)})` : 'not a directory'}; it must be a root-owned directory ${last ? 'writable by root only' : 'not writable by others (unless sticky)'}`,
        { fix: `remove ${p} or fix its owner and mode (root, 0755), then restart bangerd-root` },
      );
    }
  }
}
