/**
 * Packs a host file or directory tree into a tar stream (tar-stream, no host tool), read at the
 * consumer's pace: `vm cp` host → guest and `[[file_sync]]` build their archives with it. The
 * walk never follows a symlink inside the tree (links are archived as links, read with lstat and
 * opened O_NOFOLLOW); sockets, FIFOs and devices are skipped and reported; hardlinked files are
 * archived as separate copies.
 */
import { once } from 'node:events';
import { constants as fsc, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';

type TarHeader = Parameters<tar.Pack['entry']>[0];

import { BangerError } from '../api/errors.js';

export interface PackTreeOptions {
  /** The archive name of `src` itself; '' archives a directory's contents without a top entry. */
  name: string;
  /** Follow a symlink at `src` itself (file_sync: dotfiles are often links). Never inside the tree. */
  followTop?: boolean;
  /** Record each entry's uid/gid (a root sender whose receiver keeps owners); else 0:0. */
  owners?: boolean;
  /** Permission bits for every regular file (file_sync's `mode`); directories and links keep theirs. */
  fileMode?: number;
  /** Called for each entry left out (socket, FIFO, device). */
  onSkip?: (path: string, why: string) => void;
  /** Refuses trees with more entries than this (default 10 million). */
  maxEntries?: number;
}

const CHUNK = 256 * 1024;

/** Writes `size` bytes of the open file into the entry (zero padding if it shrank, cut if it grew). */
async function copyInto(entry: NodeJS.WritableStream, fh: import('node:fs/promises').FileHandle, size: number): Promise<void> {
  let left = size;
  while (left > 0) {
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, left));
    const { bytesRead } = await fh.read(buf, 0, buf.length, null);
    const chunk = bytesRead === 0 ? buf.fill(0) : buf.subarray(0, bytesRead);
    left -= chunk.length;
    if (!entry.write(chunk)) await once(entry as unknown as NodeJS.EventEmitter, 'drain');
  }
}

export function packTree(src: string, opts: PackTreeOptions): Readable {
  const pack = tar.pack();
  const maxEntries = opts.maxEntries ?? 10_000_000;
  let entries = 0;

  const header = (name: string, st: Stats, extra: Partial<TarHeader>): TarHeader => ({
    name,
    mode: st.mode & 0o7777,
    mtime: st.mtime,
    uid: opts.owners ? st.uid : 0,
    gid: opts.owners ? st.gid : 0,
    ...extra,
  });

  const emit = (h: TarHeader, body?: (entry: NodeJS.WritableStream) => Promise<void>): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (++entries > maxEntries) return reject(new BangerError('payload_too_large', `${src} has more than ${maxEntries} entries`));
      const entry = pack.entry(h, (err) => (err ? reject(err) : resolve())) as unknown as NodeJS.WritableStream & { destroy(e?: Error): void };
      if (body)
        body(entry).then(
          () => entry.end(),
          (e) => {
            entry.destroy(e);
            reject(e);
          },
        );
    });

  const add = async (abs: string, name: string, st: Stats): Promise<void> => {
    if (st.isDirectory()) {
      if (name) await emit(header(`${name}/`, st, { type: 'directory' }));
      for (const child of (await readdir(abs)).sort()) {
        const childAbs = join(abs, child);
        const cst = await lstat(childAbs).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
        if (cst) await add(childAbs, name ? `${name}/${child}` : child, cst); // vanished meanwhile: skipped
      }
    } else if (st.isSymbolicLink()) {
      await emit(header(name, st, { type: 'symlink', linkname: await readlink(abs) }));
    } else if (st.isFile()) {
      // O_NOFOLLOW: a file swapped for a link since the lstat is refused, never followed.
      const fh = await open(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
      try {
        const fst = await fh.stat();
        if (!fst.isFile()) throw new BangerError('conflict', `${abs} changed while being archived`, { fix: 'retry' });
        const mode = opts.fileMode ?? fst.mode & 0o7777;
        await emit(header(name, fst, { type: 'file', size: fst.size, mode }), (entry) => copyInto(entry, fh, fst.size));
      } finally {
        await fh.close();
      }
    } else {
      opts.onSkip?.(abs, st.isSocket() ? 'a socket' : st.isFIFO() ? 'a FIFO' : 'a device node');
    }
  };

  void (async () => {
    const st = opts.followTop ? await stat(src) : await lstat(src);
    if (!opts.name && !st.isDirectory()) throw new BangerError('bad_request', `${src} is not a directory`);
    await add(src, opts.name, st);
    pack.finalize();
  })().catch((e) => pack.destroy(e));
  // A Node stream (tar-stream's are streamx): pipe/unpipe/pipeline behave as callers expect.
  return Readable.from(pack as AsyncIterable<Buffer>, { objectMode: false });
}
