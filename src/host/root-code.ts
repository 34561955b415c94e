import { lstatSync, readdirSync, realpathSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import { BangerError } from '../api/errors.js';

/**
 * Code root runs must be code only root can change. bangerd-root and the split layout's supervisor
 * run banger's own files (bin/, dist/, node_modules/, native/build/) and a node binary as root: if
 * the owner (or anyone but root) could write any of them, or rename any directory on the way to
 * them, the next start — or the next connection, which runs native/build/banger-peercred — would
 * run their code as root. So before running as root: every directory from / down to each path is
 * root-owned and writable by nobody else (a sticky one such as /tmp is fine: root's entries in it
 * cannot be renamed by others), and every entry below each path is root-owned and not writable by
 * group or others. Symlinks are not followed inside the trees (a link root created is root's).
 */

export const MAX_ENTRIES = 500_000;

const mode = (st: Stats) => (st.mode & 0o7777).toString(8).padStart(4, '0');

function refuse(what: string, path: string, why: string): never {
  throw new BangerError('precondition_failed', `refusing to run ${what} as root: ${path} ${why}`, {
    fix: 'install banger where only root can write (e.g. `sudo git clone … /opt/banger && cd /opt/banger && sudo npm ci && sudo npm run build`), readable by the owner, and start it from there',
  });
}

/** Every directory from / to `path` (resolved) is root's and not writable by others unless sticky. */
export function assertRootOwnedAncestors(path: string, what: string): string {
  let real: string;
  try {
    real = realpathSync(path);
  } catch (e) {
    throw new BangerError('missing_dependency', `${what}: ${path} cannot be resolved (${(e as Error).message})`, { fix: 'build banger (npm run build)' });
  }
  for (let p = dirname(real); ; p = dirname(p)) {
    const st = lstatSync(p);
    const othersWrite = (st.mode & 0o022) !== 0;
    if (st.uid !== 0 || (othersWrite && (st.mode & 0o1000) === 0)) {
      refuse(what, p, `(owner uid ${st.uid}, mode ${mode(st)}) is a directory on the way to ${real} that someone other than root can change`);
    }
    if (dirname(p) === p) break;
  }
  return real;
}

/** `path` and everything below it (not following links) is root's and writable by root only. */
export function assertRootOwnedTree(path: string, what: string, budget = { left: MAX_ENTRIES }): void {
  const real = assertRootOwnedAncestors(path, what);
  const walk = (p: string): void => {
    if (--budget.left < 0) refuse(what, path, `has more than ${MAX_ENTRIES} entries to check`);
    const st = lstatSync(p);
    if (st.uid !== 0) refuse(what, p, `is owned by uid ${st.uid}, not root`);
    if (!st.isSymbolicLink() && (st.mode & 0o022) !== 0) refuse(what, p, `is writable by group or others (mode ${mode(st)})`);
    if (st.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e));
  };
  walk(real);
}

/** What banger runs as root from its install tree: checked before the helper or the supervisor starts. */
export const ROOT_CODE_PATHS = ['bin', 'dist', 'node_modules', 'native/build', 'package.json'] as const;

/** The node binary and banger's install tree (the parts of ROOT_CODE_PATHS present) may be run as root. */
export function assertRootCode(treeRoot: string, nodePath: string, what: string): void {
  const node = assertRootOwnedAncestors(nodePath, what);
  const st = lstatSync(node);
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) refuse(what, node, `(owner uid ${st.uid}, mode ${mode(st)}) must be root's and writable by root only`);
  const budget = { left: MAX_ENTRIES };
  for (const p of ROOT_CODE_PATHS) {
    const full = join(treeRoot, p);
    try {
      lstatSync(full);
    } catch {
      continue; // not part of this install (e.g. a tree without native/ yet)
    }
    assertRootOwnedTree(full, what, budget);
  }
}
