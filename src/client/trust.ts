import type { Stats } from 'node:fs';
import { dirname } from 'node:path';
import { BangerError } from '../api/errors.js';
import type { Vm } from '../api/schemas.js';
import { DNS_LABEL, dnsLabelProblem } from '../util/ids.js';

// Through getBuiltinModule, not `import`: on the CLI's start-up path (see config/layout.ts).
const { lstatSync } = process.getBuiltinModule('node:fs');

/**
 * What the client checks before it believes anything on the other end of the socket path. The
 * runtime dir may live in /tmp (no XDG_RUNTIME_DIR), where another local user can create
 * `/tmp/banger-<uid>` first and answer as a fake daemon. No zod here: this is on the CLI's
 * start-up path.
 */

const myUid = (): number | undefined => process.getuid?.();

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function untrusted(socketPath: string, why: string, fix: string): BangerError {
  return new BangerError('precondition_failed', `refusing to talk to ${socketPath}: ${why}; another local user could be impersonating bangerd`, { fix });
}

/**
 * Throws unless `socketPath` is safe to connect to: its directory is a real directory owned by
 * the caller with no group/other permissions, every directory above it is owned by root or the
 * caller and, when others may write to it, sticky (so nobody else can rename the runtime dir
 * away and put theirs in its place), and the socket itself (when present) is a socket owned by
 * the caller. A missing directory or socket passes: nothing listens, and the daemon started
 * next creates them privately (and refuses a squatted directory itself).
 */
export function assertTrustedSocket(socketPath: string): void {
  const uid = myUid();
  if (uid === undefined) return; // no uids on this platform
  const dir = dirname(socketPath);
  const st = lstatOrUndefined(dir);
  if (!st) return;
  const fixDir = `remove ${dir} (it is not banger's) or set XDG_RUNTIME_DIR or BANGER_HOME to a directory you own, then retry`;
  if (st.isSymbolicLink()) throw untrusted(socketPath, `${dir} is a symlink`, fixDir);
  if (!st.isDirectory()) throw untrusted(socketPath, `${dir} is not a directory`, fixDir);
  if (st.uid !== uid) throw untrusted(socketPath, `${dir} is owned by uid ${st.uid}, not by you (uid ${uid})`, fixDir);
  if ((st.mode & 0o077) !== 0) {
    throw untrusted(
      socketPath,
      `${dir} has mode ${(st.mode & 0o7777).toString(8)}: others may use it`,
      `if ${dir} is yours, make it private: chmod 700 ${dir}; else remove it`,
    );
  }
  for (let a = dirname(dir); ; a = dirname(a)) {
    const ast = lstatSync(a);
    if (ast.isSymbolicLink()) {
      // A link above the runtime dir is fine when it is root's or ours (e.g. /var/run -> /run).
      if (ast.uid !== 0 && ast.uid !== uid) throw untrusted(socketPath, `${a} is a symlink owned by uid ${ast.uid}`, fixDir);
    } else {
      if (ast.uid !== 0 && ast.uid !== uid) throw untrusted(socketPath, `${a} (above the runtime dir) is owned by uid ${ast.uid}`, fixDir);
      if ((ast.mode & 0o022) !== 0 && (ast.mode & 0o1000) === 0) {
        throw untrusted(socketPath, `${a} (above the runtime dir) is writable by others and not sticky`, fixDir);
      }
    }
    if (a === dirname(a)) break;
  }
  const sock = lstatOrUndefined(socketPath);
  if (!sock) return;
  const fixSock = `stop whatever listens there, remove ${socketPath}, and retry`;
  if (sock.isSymbolicLink()) throw untrusted(socketPath, 'it is a symlink', fixSock);
  if (!sock.isSocket()) throw untrusted(socketPath, 'it is not a socket', fixSock);
  if (sock.uid !== uid) throw untrusted(socketPath, `the socket is owned by uid ${sock.uid}, not by you (uid ${uid})`, fixSock);
}

/** Printable form of a name the daemon sent (for messages about a bad one). */
const shown = (s: unknown) => JSON.stringify(typeof s === 'string' ? s.slice(0, 80) : s);

/**
 * A VM name from a response: the daemon only creates DNS labels (the same check, src/util/ids.ts),
 * so anything else (`-oProxyCommand=…`, spaces, control characters) means the answer is not
 * from a sane daemon, and the name must not reach ssh's argv, a path or the terminal.
 */
export function checkVmName(name: unknown): string {
  if (typeof name === 'string' && DNS_LABEL.test(name)) return name;
  const problem = typeof name === 'string' ? dnsLabelProblem(name) : 'is not a string';
  throw new BangerError('rejected_content', `the daemon returned a VM name ${shown(name)} that ${problem ?? 'is not a DNS label'}`, {
    fix: 'the process answering on the socket is not a trustworthy bangerd: check `banger daemon status` and who owns the runtime dir',
  });
}

/** Checks the fields of a VM record the CLI uses in argv, paths or ssh host names. */
export function checkVm<T extends Pick<Vm, 'name'>>(v: T): T {
  checkVmName(v?.name);
  return v;
}
