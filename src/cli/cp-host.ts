/**
 * `banger vm cp`, host side: docker-cp semantics over the files API. Host → guest, this process
 * packs the source (src/archive/pack-tree.ts, links archived as links) and the guest's tar unpacks
 * it. Guest → host, the guest's tar stream is HOSTILE input: it is unpacked here, as the calling
 * user, only by src/archive/safe-extract.ts into a fresh staging directory beside the destination;
 * the copied tree is then checked (no symlink may point out of it: absolute targets would name
 * host paths once it leaves the staging tree) and moved into place by rename, never through a
 * link. These two archive imports are the CLI's named exception in scripts/check-imports.mjs.
 */
import { randomBytes } from 'node:crypto';
import { lstat, readdir, readlink, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { BangerError } from '../api/errors.js';
import type { GuestFileStat } from '../api/file-schemas.js';
import { guestPathProblem, splitGuestPath, tidyGuestPath } from '../api/files-wire.js';
import { packTree } from '../archive/pack-tree.js';
import { resolveInRoot, type SafeExtractOptions, safeExtract } from '../archive/safe-extract.js';
import type { BangerClient } from '../client/client.js';

export type CpEndpoint = { kind: 'host'; path: string } | { kind: 'guest'; vm: string; path: string };

const GUEST_HOME = '/root';
/** Bounds of a guest → host copy (the guest decides what it sends). */
export const CP_MAX_BYTES = 1024 ** 4;
/**
 * A million entries is far beyond any real tree one copies by hand (a Linux kernel checkout has
 * under 100,000); more is a guest flooding the user's disk with inodes and this process with
 * per-entry state (the extractor remembers every directory's mode and every symlink).
 */
export const CP_MAX_ENTRIES = 1_000_000;

/**
 * Why a guest path cannot be a `vm cp` endpoint, or undefined: guestPathProblem's checks plus no
 * `..` component (banger never resolves one: a source ending in `..` would name the receiving
 * directory itself once the copied entry is joined to the staging directory).
 */
export function cpGuestPathProblem(path: string): string | undefined {
  return guestPathProblem(path) ?? (path.split('/').includes('..') ? 'has a ".." component, which vm cp does not resolve' : undefined);
}

function checkGuestPath(vm: string, path: string): void {
  const problem = cpGuestPathProblem(path);
  if (problem)
    throw new BangerError('bad_request', `guest path ${vm}:${JSON.stringify(path.slice(0, 200))} ${problem}`, {
      fix: `write the path without "..", e.g. ${vm}:/root/dir (find it with: banger vm exec ${vm} -- realpath PATH)`,
    });
}

/**
 * `VM:PATH` is a guest path (relative ones are under /root, `VM:` alone is /root); anything
 * starting with `/`, `.` or `~`, or without a `VM:` prefix, is a host path (docker's rule).
 */
export function parseEndpoint(arg: string): CpEndpoint {
  const m = /^([a-zA-Z0-9][a-zA-Z0-9-]{0,62}):(.*)$/s.exec(arg);
  if (!m || /^[/.~]/.test(arg)) return { kind: 'host', path: arg };
  const rest = m[2] as string;
  const path = rest.startsWith('/') ? rest : rest === '' ? GUEST_HOME : `${GUEST_HOME}/${rest}`;
  const problem = cpGuestPathProblem(path);
  if (problem)
    throw new BangerError('bad_request', `guest path ${JSON.stringify(rest.slice(0, 200))} ${problem}`, {
      fix: 'write VM:/absolute/path, without ".." components',
    });
  return { kind: 'guest', vm: m[1] as string, path };
}

/** `dir/.` copies the directory's contents rather than the directory (docker's rule). */
const contentsOnly = (p: string) => /(^|\/)\.\/*$/.test(p);
const endsWithSlash = (p: string) => p.endsWith('/');

function notFoundIs(e: unknown): boolean {
  return e instanceof BangerError ? e.code === 'not_found' : (e as NodeJS.ErrnoException).code === 'ENOENT';
}

async function guestStat(client: BangerClient, vm: string, path: string): Promise<GuestFileStat | undefined> {
  try {
    return await client.statFile(vm, path);
  } catch (e) {
    if (notFoundIs(e)) return undefined;
    throw e;
  }
}

export interface CpOptions {
  /**
   * `-a` (docker cp's archive mode): keep the source's owners, and its permission bits unmasked.
   * Without it the receiving user owns everything and, guest → host, modes are masked by `umask`.
   * Setuid/setgid/sticky bits never come out of a guest, even with it.
   */
  archive: boolean;
  /** Guest → host without `archive`: bits cleared from every mode (default: this process's umask). */
  umask?: number;
  /** Guest → host bounds; CP_MAX_BYTES / CP_MAX_ENTRIES unless a test lowers them. */
  limits?: { maxBytes?: number; maxEntries?: number };
  /** Follow a symlink given as a host source (`-L`); links inside a tree are always copied as links. */
  followLink?: boolean;
}

/** Host → guest. The guest's tar receives an archive whose top entry already carries the final name. */
export async function copyHostToGuest(client: BangerClient, src: string, vm: string, dst: string, o: CpOptions): Promise<void> {
  const st = await (o.followLink ? stat(src) : lstat(src)).catch((e: NodeJS.ErrnoException) => {
    throw new BangerError(e.code === 'ENOENT' ? 'not_found' : 'bad_request', `cannot read ${src}: ${e.code ?? e.message}`, { fix: 'check the host path' });
  });
  checkGuestPath(vm, dst);
  const isDir = st.isDirectory();
  const contents = isDir && contentsOnly(src);
  const target = tidyGuestPath(dst);
  const gst = await guestStat(client, vm, target);
  let into: string;
  let name: string;
  if (gst?.type === 'dir') {
    into = target;
    name = contents ? '' : basename(resolve(src));
  } else if (gst) {
    if (isDir)
      throw new BangerError('conflict', `cannot copy a directory onto ${vm}:${target}, which is not a directory`, { fix: 'name a directory or a new path' });
    ({ dir: into, name } = splitGuestPath(target));
  } else {
    if (endsWithSlash(dst) && !isDir)
      throw new BangerError('not_found', `destination directory ${vm}:${dst} does not exist`, {
        fix: `create it first: banger vm exec ${vm} -- mkdir -p ${dst}`,
      });
    ({ dir: into, name } = splitGuestPath(target));
    const parent = await guestStat(client, vm, into);
    if (parent?.type !== 'dir') throw new BangerError('not_found', `${vm}:${into} is not an existing directory`, { fix: 'create the parent directory first' });
  }
  if (!name && !contents) throw new BangerError('bad_request', `cannot copy onto ${vm}:${target}`, { fix: 'name a path below /' });
  const skipped: string[] = [];
  const archive = packTree(src, { name, owners: o.archive, followTop: !!o.followLink, onSkip: (p, why) => skipped.push(`${p} (${why})`) });
  await client.archiveIn(vm, into, archive, { sameOwner: o.archive });
  for (const s of skipped.slice(0, 20)) process.stderr.write(`warning: skipped ${s}\n`);
}

/** Decompression never runs: the guest's tar is read as plain tar ('none'). */
const NO_RUNNER = {
  run: () => Promise.reject(new Error('no host tools in vm cp')),
  spawn: () => {
    throw new Error('no host tools in vm cp');
  },
} as unknown as SafeExtractOptions['runner'];

/** Every symlink of the copied tree must stay inside it: relative, and resolving under `root`. */
async function checkLinksStayInside(root: string, label: string): Promise<void> {
  const refuse = (p: string, target: string, why: string) =>
    new BangerError('rejected_content', `${label}: symlink "${relative(root, p) || basename(p)}" -> "${target}" ${why}`, {
      fix: 'links out of a copied tree are not created on the host: copy what they point at, or archive the tree in the guest and inspect it',
    });
  const walk = async (dir: string): Promise<void> => {
    for (const ent of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.isSymbolicLink()) {
        const target = await readlink(p);
        if (target.startsWith('/')) throw refuse(p, target, 'is absolute (on the host it would name a host path)');
        const from = relative(root, dir).split('/').filter(Boolean);
        if (!(await resolveInRoot(root, from, target))) throw refuse(p, target, 'leaves the copied tree');
      }
    }
  };
  await walk(root);
}

/** Moves `from` to `to` by rename: new names land, directories merge, files and links are replaced (never written through). */
async function place(from: string, to: string): Promise<void> {
  const f = await lstat(from);
  const t = await lstat(to).catch(() => undefined);
  if (!t) return rename(from, to);
  if (t.isDirectory() && f.isDirectory()) {
    for (const c of await readdir(from)) await place(join(from, c), join(to, c));
    return;
  }
  if (t.isDirectory()) throw new BangerError('conflict', `cannot overwrite directory ${to} with a non-directory`, { fix: 'remove it or copy elsewhere' });
  if (f.isDirectory())
    throw new BangerError('conflict', `cannot overwrite ${to}, which is not a directory, with a directory`, { fix: 'remove it or copy elsewhere' });
  await rename(from, to);
}

/** Guest → host, docker semantics for an existing directory, a new name, or a file replaced. */
export async function copyGuestToHost(client: BangerClient, vm: string, src: string, dst: string, o: CpOptions): Promise<void> {
  checkGuestPath(vm, src);
  if (o.archive && process.getuid?.() !== 0)
    throw new BangerError('bad_request', `-a keeps the guest's owners, which only root can set on the host`, {
      fix: 'copy without -a (the files become yours), or run the copy as root',
    });
  const path = tidyGuestPath(src);
  const { name } = splitGuestPath(path);
  if (!name) throw new BangerError('bad_request', `cannot copy the guest's root directory`, { fix: `name a directory below it, e.g. ${vm}:/root` });
  const contents = contentsOnly(src);
  const gst = await client.statFile(vm, path);
  if (gst.type === 'symlink')
    throw new BangerError('bad_request', `${vm}:${path} is a symlink (to ${gst.linkTarget ?? '?'}); banger copies no link out of a guest on its own`, {
      fix: 'copy the path it points at',
    });
  if (gst.type === 'other') throw new BangerError('bad_request', `${vm}:${path} is not a file or directory`);
  const isDir = gst.type === 'dir';

  const hst = await stat(dst).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  let receiving: string;
  let final: string;
  if (hst?.isDirectory()) {
    receiving = dst;
    final = contents && isDir ? dst : join(dst, name);
  } else if (hst) {
    if (isDir) throw new BangerError('conflict', `cannot copy a directory onto ${dst}, which is not a directory`, { fix: 'name a directory or a new path' });
    receiving = dirname(resolve(dst));
    final = resolve(dst);
  } else {
    if (endsWithSlash(dst) && !isDir)
      throw new BangerError('not_found', `destination directory ${dst} does not exist`, { fix: `create it first: mkdir -p ${dst}` });
    receiving = dirname(resolve(dst));
    final = resolve(dst);
    const parent = await stat(receiving).catch(() => undefined);
    if (!parent?.isDirectory())
      throw new BangerError('not_found', `${receiving} is not an existing directory`, { fix: `create it first: mkdir -p ${receiving}` });
  }

  const label = `${vm}:${path}`;
  const staging = join(receiving, `.banger-cp-${randomBytes(6).toString('hex')}`);
  const archive = await client.archiveOut(vm, path);
  try {
    try {
      await safeExtract(archive.stream, {
        dest: staging,
        runner: NO_RUNNER,
        label,
        maxBytes: o.limits?.maxBytes ?? CP_MAX_BYTES,
        maxEntries: o.limits?.maxEntries ?? CP_MAX_ENTRIES,
        compression: 'none',
        owners: o.archive,
        modeMask: o.archive ? 0 : (o.umask ?? process.umask()),
      });
    } catch (e) {
      archive.stream.destroy();
      // A failure the daemon reported (the guest's tar failed) explains a cut stream better than the extractor can.
      const verdict = await archive.done.then(
        () => undefined,
        (v: unknown) => v,
      );
      if (verdict instanceof BangerError && verdict.code !== 'unavailable') throw verdict;
      throw e;
    }
    await archive.done;
    const copied = join(staging, name);
    // The copied entry is a child of the staging directory, never the staging directory or its
    // parent (the receiving directory): place() must only ever move what the guest sent.
    if (name === '.' || name === '..' || dirname(copied) !== staging)
      throw new BangerError('bad_request', `${label}: "${name}" does not name an entry of the copied tree`, { fix: 'name the file or directory itself' });
    const cst = await lstat(copied).catch(() => undefined);
    if (!cst)
      throw new BangerError('rejected_content', `${label}: the guest's archive has no entry "${name}"`, { fix: 'retry; the guest sent something else' });
    if (cst.isDirectory() !== isDir || cst.isSymbolicLink())
      throw new BangerError('rejected_content', `${label}: the guest's archive holds a different kind of entry than the guest reported`);
    if (isDir) await checkLinksStayInside(copied, label);
    if (contents && isDir && final === dst) {
      for (const c of await readdir(copied)) await place(join(copied, c), join(final, c));
    } else await place(copied, final);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** `vm cp SRC DST`: exactly one side is `VM:PATH`. */
export async function runCp(client: BangerClient, srcArg: string, dstArg: string, o: { followLink?: boolean; archive?: boolean }): Promise<void> {
  const src = parseEndpoint(srcArg);
  const dst = parseEndpoint(dstArg);
  const archive = !!o.archive;
  if (src.kind === 'host' && dst.kind === 'guest') return copyHostToGuest(client, src.path, dst.vm, dst.path, { archive, followLink: !!o.followLink });
  if (src.kind === 'guest' && dst.kind === 'host') return copyGuestToHost(client, src.vm, src.path, dst.path, { archive });
  throw new BangerError('bad_request', src.kind === 'host' ? 'neither side is a VM path' : 'both sides are VM paths', {
    fix: 'banger vm cp HOST_PATH VM:PATH, or banger vm cp VM:PATH HOST_PATH',
  });
}
