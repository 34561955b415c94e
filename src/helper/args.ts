import { execFileSync } from 'node:child_process';
import { isAbsolute } from 'node:path';
import { BangerError } from '../api/errors.js';
import { HELPER_SOCKET_DEFAULT } from '../host/helper-wire.js';
import { validateBridgeName } from '../host/netplan.js';

export const USAGE = `usage: bangerd-root --owner USER|UID [--socket PATH] [--bridge NAME]...

banger's privileged helper: runs as root and performs the closed list of host-network
operations (banger's bridge, its TAPs, its firewall tables, *.vm resolver routing) for
the one unprivileged user bangerd runs as. See docs/privileges.md.

  --owner USER|UID   the user bangerd runs as: the only caller served, and the owner
                     of the TAPs created (its QEMU opens them). Never root.
  --socket PATH      the socket (default ${HELPER_SOCKET_DEFAULT}); its directory is
                     created root-owned 0755, the socket is the owner's, mode 0600.
  --bridge NAME      only manage this bridge (repeatable); default: any banger* bridge.`;

export interface HelperArgs {
  owner: string;
  socket: string;
  bridges: string[];
}

export const USAGE_FIX = 'bangerd-root --help';
const usage = (message: string) => new BangerError('bad_request', message, { fix: USAGE_FIX });

export function parseArgs(argv: readonly string[]): HelperArgs | 'help' | 'version' {
  let owner: string | undefined;
  let socket = HELPER_SOCKET_DEFAULT;
  const bridges: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--help' || a === '-h') return 'help';
    if (a === '--version' || a === '-V') return 'version';
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === '') throw usage(`${flag} needs a value`);
      return v;
    };
    if (flag === '--owner') owner = value();
    else if (flag === '--socket') socket = value();
    else if (flag === '--bridge') bridges.push(validateBridgeName(value()));
    else throw usage(`unknown argument ${JSON.stringify(a)}`);
  }
  if (owner === undefined) throw usage('--owner is required: the user bangerd runs as');
  if (!isAbsolute(socket)) throw usage(`--socket ${JSON.stringify(socket)} must be an absolute path`);
  return { owner, socket, bridges };
}

const USER_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;

/** USER or UID → uid (a name through NSS, `getent passwd`); root is refused. */
export function resolveOwner(owner: string): number {
  let uid: number;
  if (/^[0-9]{1,10}$/.test(owner)) {
    uid = Number(owner);
  } else {
    if (!USER_RE.test(owner)) throw usage(`--owner ${JSON.stringify(owner)} is not a user name or uid`);
    let entry = '';
    try {
      entry = execFileSync('getent', ['passwd', owner], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 });
    } catch {
      throw new BangerError('not_found', `no user ${JSON.stringify(owner)} on this host`, { fix: 'create the user bangerd runs as, or pass its uid' });
    }
    uid = Number(entry.split(':')[2]);
  }
  if (!Number.isInteger(uid) || uid < 0 || uid > 2 ** 32 - 2) throw usage(`--owner ${JSON.stringify(owner)} is not a valid uid`);
  if (uid === 0) {
    throw new BangerError('bad_request', 'the owner cannot be root: a daemon running as root does its host networking itself', {
      fix: 'pass the unprivileged user bangerd runs as',
    });
  }
  return uid;
}
