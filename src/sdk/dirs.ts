/**
 * Directory transfer for `vm.files.upload/download`, loaded only when used (tar-stream and the
 * extractor stay off `import('banger')`). Like `banger vm cp` (src/cli/cp-host.ts), this runs in
 * the caller's process as the calling user: it packs host trees with archive/pack-tree.ts and
 * unpacks the guest's HOSTILE tar only with archive/safe-extract.ts. These archive imports are the
 * SDK's named exception in scripts/check-imports.mjs.
 */
import { randomBytes } from 'node:crypto';
import { lstat, readdir, readlink, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { BangerError } from '../api/errors.js';
import { guestPathProblem, splitGuestPath, tidyGuestPath } from '../api/files-wire.js';
import { packTree } from '../archive/pack-tree.js';
import { resolveInRoot, type SafeExtractOptions, safeExtract } from '../archive/safe-extract.js';
import type { BangerClient } from '../client/client.js';
import type { DownloadOptions } from './files.js';

const MAX_BYTES = 1024 ** 4;
const MAX_ENTRIES = 1_000_000;

/** The guest's tar is read as plain tar: no decompressor (no host tool) ever runs. */
const NO_RUNNER = {
  run: () => Promise.reject(new Error('no host tools in a download')),
  spawn: () => {
    throw new Error('no host tools in a download');
  },
} as unknown as SafeExtractOptions['runner'];

function checkGuestDir(vm: string, path: string): string {
  const problem = guestPathProblem(path) ?? (path.split('/').includes('..') ? 'has a ".." component' : undefined);
  if (problem)
    throw new BangerError('bad_request', `guest path ${vm}:${JSON.stringify(path.slice(0, 200))} ${problem}`, { fix: 'give an absolute path without ".."' });
  return tidyGuestPath(path);
}

export async function uploadTree(client: BangerClient, vm: string, hostDir: string, guestDir: string, signal?: AbortSignal): Promise<{ skipped: string[] }> {
  const st = await stat(hostDir).catch((e: NodeJS.ErrnoException) => {
    throw new BangerError(e.code === 'ENOENT' ? 'not_found' : 'bad_request', `cannot read ${hostDir}: ${e.code ?? e.message}`, { fix: 'check the host path' });
  });
  if (!st.isDirectory()) throw new BangerError('bad_request', `${hostDir} is not a directory`, { fix: 'write single files with files.write()' });
  const target = checkGuestDir(vm, guestDir);
  const skipped: string[] = [];
  // name '' packs the directory's contents: they land directly in the target directory.
  const archive = packTree(hostDir, { name: '', owners: false, followTop: true, onSkip: (p, why) => skipped.push(`${p} (${why})`) });
  const onAbort = () => archive.destroy(new BangerError('cancelled', `uploading ${hostDir} was aborted`));
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await client.archiveIn(vm, target, archive);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  return { skipped };
}

/** Every symlink of the copied tree must stay inside it: relative, and resolving under `root`. */
async function checkLinksStayInside(root: string, label: string): Promise<void> {
  const walk = async (dir: string): Promise<void> => {
    for (const ent of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.isSymbolicLink()) {
        const target = await readlink(p);
        const from = relative(root, dir).split('/').filter(Boolean);
        if (target.startsWith('/') || !(await resolveInRoot(root, from, target)))
          throw new BangerError('rejected_content', `${label}: symlink "${relative(root, p)}" -> "${target}" points out of the tree`, {
            fix: 'links out of a downloaded tree are not created on the host: download what they point at',
          });
      }
    }
  };
  await walk(root);
}

export async function downloadTree(client: BangerClient, vm: string, guestDir: string, hostDir: string, o: DownloadOptions): Promise<void> {
  const path = checkGuestDir(vm, guestDir);
  const { name } = splitGuestPath(path);
  if (!name) throw new BangerError('bad_request', `cannot download the guest's root directory`, { fix: 'name a directory below it' });
  const gst = await client.statFile(vm, path);
  if (gst.type !== 'dir')
    throw new BangerError('bad_request', `${vm}:${path} is not a directory (${gst.type})`, { fix: 'read single files with files.read()' });
  const final = resolve(hostDir);
  if (await lstat(final).catch(() => undefined))
    throw new BangerError('conflict', `${final} already exists`, { fix: 'download into a path that does not exist yet' });
  const parent = dirname(final);
  if (!(await stat(parent).catch(() => undefined))?.isDirectory())
    throw new BangerError('not_found', `${parent} is not an existing directory`, { fix: `create it first: mkdir -p ${parent}` });

  const label = `${vm}:${path}`;
  const staging = join(parent, `.banger-download-${randomBytes(6).toString('hex')}`);
  const archive = await client.archiveOut(vm, path);
  const onAbort = () => archive.stream.destroy(new BangerError('cancelled', `downloading ${label} was aborted`));
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    try {
      await safeExtract(archive.stream, {
        dest: staging,
        runner: NO_RUNNER,
        label,
        maxBytes: o.maxBytes ?? MAX_BYTES,
        maxEntries: o.maxEntries ?? MAX_ENTRIES,
        compression: 'none',
        owners: false,
        modeMask: process.umask(),
        ...(o.signal ? { signal: o.signal } : {}),
      });
    } catch (e) {
      archive.stream.destroy();
      if (o.signal?.aborted) throw new BangerError('cancelled', `downloading ${label} was aborted`, { cause: o.signal.reason });
      // The daemon's verdict (the guest's tar failed) explains a cut stream better than the extractor can.
      const verdict = await archive.done.then(
        () => undefined,
        (v: unknown) => v,
      );
      if (verdict instanceof BangerError && verdict.code !== 'unavailable') throw verdict;
      throw e;
    }
    await archive.done;
    const copied = join(staging, basename(name));
    if (dirname(copied) !== staging) throw new BangerError('bad_request', `${label}: "${name}" does not name an entry of the copied tree`);
    const cst = await lstat(copied).catch(() => undefined);
    if (!cst?.isDirectory() || cst.isSymbolicLink())
      throw new BangerError('rejected_content', `${label}: the guest's archive has no directory "${name}"`, { fix: 'retry; the guest sent something else' });
    await checkLinksStayInside(copied, label);
    await rename(copied, final);
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await rm(staging, { recursive: true, force: true });
  }
}
