import { createWriteStream, constants as fsc } from 'node:fs';
import { chmod, type FileHandle, lchown, link, lstat, mkdir, open, readlink, realpath, rm, symlink, unlink } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from '../host/runner.js';
import { byteLimit, type Compression, decompressor, sniffCompression } from './decompress.js';

export interface SafeExtractOptions {
  /** A directory that must not exist yet; created here, removed again on any failure. */
  dest: string;
  /** Runs the xz (and, on older Nodes, zstd) decompressor. */
  runner: CommandRunner;
  /** What the archive is, for messages ("linux-image-….deb data.tar.xz"). */
  label: string;
  /** Sum of the entries' sizes. */
  maxBytes: number;
  maxEntries: number;
  /** 'auto' (default) sniffs the magic bytes. */
  compression?: Compression | 'auto';
  signal?: AbortSignal | undefined;
  /**
   * Symlinks are kept by default: inside the tree they are guest paths (an absolute target means
   * the guest's root), and host code must resolve them with realPathUnder / open with
   * O_NOFOLLOW. `false` refuses every symlink entry, for archives the host consumes directly
   * (bundles: a manifest and a rootfs file, no links needed).
   */
  symlinks?: boolean;
  /**
   * Give every entry the uid/gid its header names (lchown: a link's own owner). Only a root
   * caller can; the default leaves everything to the extracting user. Setuid/setgid bits are
   * dropped either way.
   */
  owners?: boolean;
  /**
   * Permission bits cleared from every entry's mode, as a umask clears them (default 0: the
   * archive's bits, for trees banger builds from). `vm cp` passes the caller's umask, so a
   * hostile guest's 0777 cannot make the user's tree group- or world-writable.
   */
  modeMask?: number;
}

export interface ExtractStats {
  entries: number;
  bytes: number;
}

const FIX = 'the archive is corrupt or hostile: check where it comes from (catalog entry, URL, mirror) before retrying';

function rejected(label: string, entry: string, reason: string): BangerError {
  return new BangerError('rejected_content', `${label}: entry "${entry}" rejected: ${reason}`, { fix: FIX });
}

/**
 * Splits an archive path into safe components: no absolute paths, no `..`; `.` and empty
 * components are dropped. Returns [] for the archive root itself.
 */
export function safeComponents(label: string, name: string): string[] {
  if (name.startsWith('/')) throw rejected(label, name, 'absolute path');
  if (name.includes('\0')) throw rejected(label, name, 'NUL byte in the name');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw rejected(label, name, '".." path component');
  return parts;
}

const MAX_LINK_HOPS = 40;

/**
 * Resolves a symlink target the way the guest will: relative targets from the link's directory,
 * absolute ones from the root; symlinks already on disk inside the root are followed (so a chain
 * of individually harmless links cannot climb out). Returns the components, or undefined when
 * the target leaves the root.
 */
export async function resolveInRoot(root: string, fromDir: string[], target: string, hops = { n: 0 }): Promise<string[] | undefined> {
  const stack = target.startsWith('/') ? [] : [...fromDir];
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (stack.length === 0) return undefined;
      stack.pop();
      continue;
    }
    stack.push(part);
    const st = await lstat(join(root, ...stack)).catch(() => undefined);
    if (st?.isSymbolicLink()) {
      if (++hops.n > MAX_LINK_HOPS) return undefined;
      const next = await readlink(join(root, ...stack));
      stack.pop();
      const r = await resolveInRoot(root, stack, next, hops);
      if (!r) return undefined;
      stack.splice(0, stack.length, ...r);
    }
  }
  return stack;
}

/** Reads the first bytes of a stream and hands back a stream that still yields all of it. */
async function peek(input: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const chunks: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const r = await it.next();
    if (r.done) break;
    const c = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    chunks.push(c);
    have += c.length;
  }
  const head = Buffer.concat(chunks).subarray(0, n);
  async function* all() {
    yield* chunks;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { head, stream: Readable.from(all(), { objectMode: false }) };
}

/**
 * Extracts a (possibly compressed) tar stream into a new directory, refusing anything that could
 * write outside it or smuggle in what a kernel or rootfs tree never needs: absolute paths, `..`,
 * writes through symlinks, symlinks or hardlinks that leave the root, device nodes and FIFOs,
 * more bytes or entries than allowed. Owners are not kept (unless asked); setuid/setgid/sticky
 * bits are dropped, and `modeMask` bits cleared; every directory stays owner-writable so the tree can always be removed. On failure `dest` is removed.
 */
export async function safeExtract(input: Readable, opts: SafeExtractOptions): Promise<ExtractStats> {
  const root = resolve(opts.dest);
  await mkdir(dirname(root), { recursive: true });
  try {
    await mkdir(root, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new BangerError('internal', `extraction target ${root} already exists`);
    throw e;
  }
  try {
    return await extractInto(input, root, opts);
  } catch (e) {
    await rm(root, { recursive: true, force: true });
    if (opts.signal?.aborted) throw new BangerError('cancelled', `extraction of ${opts.label} was cancelled`);
    if (e instanceof BangerError) throw e;
    throw new BangerError('rejected_content', `${opts.label}: cannot extract: ${(e as Error).message}`, { fix: FIX });
  }
}

async function extractInto(input: Readable, root: string, opts: SafeExtractOptions): Promise<ExtractStats> {
  const label = opts.label;
  let kind = opts.compression ?? 'auto';
  let source = input;
  if (kind === 'auto') {
    const p = await peek(input, 6);
    kind = sniffCompression(p.head);
    source = p.stream;
  }
  const extract = tar.extract();
  // Decompressed bytes are bounded too: headers and padding are small next to the content limit.
  const piping = pipeline(
    source,
    decompressor(kind, opts.runner),
    byteLimit(opts.maxBytes + (opts.maxEntries + 16) * 1024 + 1024 * 1024, label),
    extract,
    opts.signal ? { signal: opts.signal } : {},
  );
  piping.catch(() => {}); // the loop below sees the same error through the extract stream
  let entries = 0;
  let bytes = 0;
  // Setuid, setgid and sticky never survive (0o777), whatever the mask.
  const keptBits = 0o777 & ~(opts.modeMask ?? 0);
  const dirModes = new Map<string, number>();
  const symlinks: Array<{ parts: string[]; target: string }> = [];

  /** Creates the parent directories of an entry, refusing to go through anything that is not a real directory. */
  const ensureParents = async (name: string, parts: string[]) => {
    for (let i = 1; i < parts.length; i++) {
      const p = join(root, ...parts.slice(0, i));
      const st = await lstat(p).catch(() => undefined);
      if (!st) await mkdir(p, { mode: 0o755 });
      else if (st.isSymbolicLink()) throw rejected(label, name, `would be written through the symlink "${parts.slice(0, i).join('/')}"`);
      else if (!st.isDirectory()) throw rejected(label, name, `"${parts.slice(0, i).join('/')}" is not a directory`);
    }
  };
  /** Makes room for a non-directory entry: an earlier file or link of the same name is replaced (tar semantics). */
  const clearTarget = async (name: string, abs: string) => {
    const st = await lstat(abs).catch(() => undefined);
    if (!st) return;
    if (st.isDirectory()) throw rejected(label, name, 'replaces a directory');
    await unlink(abs);
  };

  for await (const entry of extract) {
    const h = entry.header;
    const name = h.name;
    if (++entries > opts.maxEntries) throw rejected(label, name, `more than ${opts.maxEntries} entries`);
    const parts = safeComponents(label, name);
    const abs = join(root, ...parts);
    const type = h.type ?? 'file';
    switch (type) {
      case 'file':
      case 'contiguous-file': {
        if (parts.length === 0) throw rejected(label, name, 'a file at the archive root');
        bytes += h.size ?? 0;
        if (bytes > opts.maxBytes) throw rejected(label, name, `content exceeds the limit of ${opts.maxBytes} bytes`);
        await ensureParents(name, parts);
        await clearTarget(name, abs);
        // O_EXCL: never follows a symlink placed there in between.
        await pipeline(entry, createWriteStream(abs, { flags: 'wx', mode: 0o600 }));
        await chmod(abs, (h.mode ?? 0o644) & keptBits);
        if (opts.owners) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
        continue;
      }
      case 'directory': {
        if (parts.length > 0) {
          await ensureParents(name, parts);
          const st = await lstat(abs).catch(() => undefined);
          if (!st) await mkdir(abs, { mode: 0o700 });
          else if (!st.isDirectory()) throw rejected(label, name, 'a directory over an existing file or symlink');
          dirModes.set(abs, ((h.mode ?? 0o755) & keptBits) | 0o700);
          if (opts.owners) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
        }
        break;
      }
      case 'symlink': {
        if (opts.symlinks === false) throw rejected(label, name, 'symlinks are not allowed in this archive');
        if (parts.length === 0) throw rejected(label, name, 'a symlink at the archive root');
        const target = h.linkname ?? '';
        if (!target) throw rejected(label, name, 'symlink without a target');
        if (!(await resolveInRoot(root, parts.slice(0, -1), target))) throw rejected(label, name, `symlink target "${target}" leaves the archive root`);
        await ensureParents(name, parts);
        await clearTarget(name, abs);
        await symlink(target, abs);
        if (opts.owners) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
        symlinks.push({ parts, target });
        break;
      }
      case 'link': {
        if (parts.length === 0) throw rejected(label, name, 'a hardlink at the archive root');
        const target = h.linkname ?? '';
        let tparts: string[] = [];
        try {
          tparts = safeComponents(label, target);
        } catch {
          /* reported below */
        }
        if (tparts.length === 0) throw rejected(label, name, `hardlink target "${target}" is outside the archive`);
        // The target must be a regular file extracted earlier, reached without symlinks.
        let cur = root;
        for (const [i, p] of tparts.entries()) {
          cur = join(cur, p);
          const st = await lstat(cur).catch(() => undefined);
          if (!st) throw rejected(label, name, `hardlink target "${target}" does not exist in the archive`);
          if (st.isSymbolicLink()) throw rejected(label, name, `hardlink target "${target}" goes through a symlink`);
          if (i === tparts.length - 1 && !st.isFile()) throw rejected(label, name, `hardlink target "${target}" is not a regular file`);
        }
        await ensureParents(name, parts);
        await clearTarget(name, abs);
        await link(cur, abs);
        break;
      }
      case 'character-device':
      case 'block-device':
        throw rejected(label, name, 'device node');
      case 'fifo':
        throw rejected(label, name, 'FIFO');
      default:
        throw rejected(label, name, `unsupported entry type "${type}"`);
    }
    entry.resume();
  }
  await piping;
  // Re-check every symlink against the final tree: a later entry cannot have turned one into an escape.
  for (const s of symlinks) {
    if (!(await resolveInRoot(root, s.parts.slice(0, -1), s.target)))
      throw rejected(label, s.parts.join('/'), `symlink target "${s.target}" leaves the archive root`);
  }
  // Directory modes last (deepest first), so a read-only directory did not block its own content.
  for (const [dir, mode] of [...dirModes].sort((a, b) => b[0].length - a[0].length)) await chmod(dir, mode);
  await chmod(root, 0o755);
  return { entries, bytes };
}

// ---- consuming extracted (or otherwise untrusted) trees on the host ------------------------

/** True when `path` is `root` itself or lies below it (both absolute and normalised). */
export function isUnder(root: string, path: string): boolean {
  const r = resolve(root);
  const p = resolve(path);
  return p === r || p.startsWith(r.endsWith(sep) ? r : `${r}${sep}`);
}

/**
 * The real path of `path`, which must stay under `root` once every symlink (final or
 * intermediate) is resolved: an archive's `lib -> /lib` or `vmlinuz -> /etc/shadow` is a guest
 * path, never a host one. Links inside the tree (`vmlinuz -> vmlinuz-6.1`) are fine.
 */
export async function realPathUnder(root: string, path: string, what: string): Promise<string> {
  const realRoot = await realpath(root);
  let real: string;
  try {
    real = await realpath(path);
  } catch (e) {
    throw new BangerError('rejected_content', `${what} ${path} cannot be resolved: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      fix: 'a symlink in the kernel tree points at something that does not exist inside it; fix the archive or directory',
    });
  }
  if (!isUnder(realRoot, real)) {
    throw new BangerError('rejected_content', `${what} ${relative(root, path) || path} leads outside ${root} (to ${real}) through a symlink`, {
      fix: 'symlinks in a kernel archive or directory are guest paths and are never followed out of it on the host: ship the real file in the tree',
    });
  }
  return real;
}

/**
 * Opens an existing regular file for reading without following a symlink in its last component
 * (O_NOFOLLOW), and checks on the open descriptor that it is a regular file (not a FIFO, device
 * or directory). Use with a path whose directories are trusted or checked (realPathUnder).
 */
export async function openRegularNoFollow(path: string, what = 'file'): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') {
      throw new BangerError('rejected_content', `${what} ${path} is a symlink; banger does not follow it`, { fix: 'replace the symlink by the real file' });
    }
    throw new BangerError('rejected_content', `cannot open ${what} ${path}: ${code ?? (e as Error).message}`, { fix: 'check the file exists and is readable' });
  }
  const st = await fh.stat();
  if (!st.isFile()) {
    await fh.close();
    throw new BangerError('rejected_content', `${what} ${path} is not a regular file`, { fix: 'give a regular file' });
  }
  return { fh, size: st.size };
}

/** Reads a regular file (no symlink, no FIFO or device) whole, refusing more than `maxBytes`. */
export async function readRegularNoFollow(path: string, maxBytes: number, what = 'file'): Promise<Buffer> {
  const { fh, size } = await openRegularNoFollow(path, what);
  try {
    if (size > maxBytes)
      throw new BangerError('rejected_content', `${what} ${path} is ${size} bytes, more than the limit of ${maxBytes}`, { fix: 'check the file' });
    const buf = Buffer.alloc(size);
    let off = 0;
    while (off < size) {
      const { bytesRead } = await fh.read(buf, off, size - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

/**
 * Copies a regular file (opened with O_NOFOLLOW, checked on the descriptor) to `dest`, which must
 * not exist yet (O_EXCL: never written through a link placed there). Returns the bytes copied.
 */
export async function copyRegularNoFollow(src: string, dest: string, what = 'file', mode = 0o644): Promise<number> {
  const { fh } = await openRegularNoFollow(src, what);
  let out: FileHandle | undefined;
  try {
    out = await open(dest, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
    const buf = Buffer.alloc(1024 * 1024);
    let total = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      let w = 0;
      while (w < bytesRead) w += (await out.write(buf, w, bytesRead - w)).bytesWritten;
      total += bytesRead;
    }
    return total;
  } finally {
    await out?.close();
    await fh.close();
  }
}
