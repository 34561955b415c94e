import {
  chmodSync,
  chownSync,
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { posix } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { BangerError } from '../api/errors.js';
import { memoryBudgetOf } from '../host/scratch.js';

/** A device node or fifo: mkfs.ext4 -d cannot be fed them unprivileged, so they are made with debugfs afterwards. */
export interface SpecialNode {
  type: 'char' | 'block' | 'fifo';
  major: number;
  minor: number;
  mode: number;
  uid: number;
  gid: number;
}

export interface Owner {
  uid: number;
  gid: number;
  mode: number;
}

/**
 * What the flattened tree could not carry by itself, keyed by path relative to the root:
 * ownership (when not running as root, every file belongs to us on disk) and special nodes.
 */
export class RootfsLedger {
  readonly owners = new Map<string, Owner>();
  readonly specials = new Map<string, SpecialNode>();
  entries = 0;
  /** Bytes of regular-file content (hardlinks counted once). */
  bytes = 0;
  /**
   * What unpacking has put in the tree's backing store so far: every file's content rounded up to
   * pages plus a fixed cost per entry. Only grows (a whiteout does not give memory back to the count).
   */
  treeBytes = 0;

  forget(rel: string): void {
    const prefix = `${rel}/`;
    for (const m of [this.owners, this.specials] as Map<string, unknown>[]) {
      m.delete(rel);
      for (const k of m.keys()) if (k.startsWith(prefix)) m.delete(k);
    }
  }
}

export interface ApplyOptions {
  /** Staging directory the image is assembled in (private to this pull). */
  root: string;
  /** chown files on disk (needs root); otherwise ownership is recorded in the ledger. */
  chownOnDisk: boolean;
  maxEntries: number;
  maxBytes: number;
  /**
   * The most the tree may hold in its backing store (`RootfsLedger.treeBytes`): the budget of a
   * memory-backed tree. Defaults to `memoryBudgetOf(root)` (none for a tree on disk). Past it,
   * unpacking stops with a `TreeOverBudget` before writing the entry that would cross it.
   */
  maxTreeBytes?: number;
  /** Names the layer in errors. */
  label: string;
}

/** The tree outgrew the memory it was given: the caller may start again on disk. */
export class TreeOverBudget extends BangerError {
  constructor(
    label: string,
    readonly budget: number,
  ) {
    super('rejected_content', `${label}: the unpacked image outgrew the ${Math.round(budget / 1048576)} MiB of memory set aside for it`, {
      fix: 'free some memory, or check the image: its layers inflate far beyond their compressed size',
    });
    this.name = 'TreeOverBudget';
  }
}

const PAGE = 4096;
/** What one entry costs a tmpfs besides its content (inode, dentry), rounded up. */
const ENTRY_COST = 1024;

const MAX_SYMLINK_HOPS = 40;
/** Linux limits: a name component (NAME_MAX), a symlink target (PATH_MAX - 1); whole entry names get room for the root's own path. */
const MAX_COMPONENT = 255;
const MAX_LINK_TARGET = 4095;
const MAX_NAME = 3072;

/** Why a name cannot be made on the host, if it cannot. */
function badName(name: string, comps: string[]): string | undefined {
  if (name.includes('\0')) return 'has a NUL byte in its name';
  if (Buffer.byteLength(name) > MAX_NAME) return `is longer than ${MAX_NAME} bytes`;
  if (comps.some((c) => Buffer.byteLength(c) > MAX_COMPONENT)) return `has a component longer than ${MAX_COMPONENT} bytes`;
  return undefined;
}

/** An entry name fit for a message: control characters escaped, length bounded. */
function printable(name: string, max = 256): string {
  const s = name.length > max ? `${name.slice(0, max)}…` : name;
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function rejected(opts: ApplyOptions, entry: string, why: string): BangerError {
  return new BangerError('rejected_content', `${opts.label}: entry "${printable(entry)}" ${printable(why, 1024)}`, {
    fix: 'the image is corrupt or hostile; nothing was written outside banger’s staging directory',
  });
}

/** Splits an entry name into clean components; `..` anywhere is refused (no legitimate layer needs it). */
export function entryComponents(name: string): string[] | 'dotdot' {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) return 'dotdot';
  return parts;
}

/**
 * Applies one image layer (an uncompressed tar stream) onto `root`, the way a container runtime
 * stacks layers: whiteouts (`.wh.NAME`) delete what lower layers made, opaque markers
 * (`.wh..wh..opq`) empty a directory of lower-layer content, later entries replace earlier ones.
 *
 * Nothing is ever written outside `root`: names with `..` are refused, a path through a symlink is
 * followed only when the link is relative and stays inside the root (absolute links are refused:
 * on the host they would point at the host), and hardlinks must name an existing non-directory in
 * the root.
 */
export async function applyLayer(input: Readable, opts: ApplyOptions, ledger: RootfsLedger): Promise<void> {
  const extract = tar.extract();
  const createdHere = new Set<string>();
  /** Real directory (relative to root) of each logical parent path already resolved in this layer. */
  const dirCache = new Map<string, string>();
  const abs = (rel: string) => (rel ? `${opts.root}/${rel}` : opts.root);
  const budget = opts.maxTreeBytes ?? memoryBudgetOf(opts.root);
  /** Counts `bytes` into the tree before they are written; refuses to cross the budget. */
  const charge = (bytes: number) => {
    ledger.treeBytes += bytes;
    if (budget !== undefined && ledger.treeBytes > budget) throw new TreeOverBudget(opts.label, budget);
  };

  /** Resolves components to a real relative path, creating missing directories; follows safe symlinks. */
  const resolveDir = (entry: string, comps: string[]): string => {
    const key = comps.join('/');
    const cached = dirCache.get(key);
    if (cached !== undefined) return cached;
    let real: string[] = [];
    let hops = 0;
    const queue = [...comps];
    while (queue.length) {
      const c = queue.shift() as string;
      const candidate = [...real, c].join('/');
      // Symlinks can name anything: what they lead to must still be a path the host can make.
      if (Buffer.byteLength(c) > MAX_COMPONENT || Buffer.byteLength(candidate) > MAX_NAME)
        throw rejected(opts, entry, 'goes through a symlink to a name longer than the host allows');
      const st = lstatSync(abs(candidate), { throwIfNoEntry: false });
      if (!st) {
        charge(ENTRY_COST);
        mkdirSync(abs(candidate), { mode: 0o755 });
        ledger.entries++;
        if (!opts.chownOnDisk) ledger.owners.set(candidate, { uid: 0, gid: 0, mode: 0o40755 });
        real.push(c);
      } else if (st.isDirectory()) {
        real.push(c);
      } else if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) throw rejected(opts, entry, 'goes through too many symlinks');
        const target = readlinkSync(abs(candidate));
        if (target.startsWith('/')) throw rejected(opts, entry, `is written through "${candidate}", a symlink to the absolute path ${target}`);
        const joined = posix.normalize(posix.join(real.join('/'), target));
        if (joined === '..' || joined.startsWith('../'))
          throw rejected(opts, entry, `is written through "${candidate}", a symlink that leaves the image root (${target})`);
        real = [];
        queue.unshift(...joined.split('/').filter((p) => p && p !== '.'));
      } else {
        throw rejected(opts, entry, `needs "${candidate}" to be a directory, but a lower layer made it a file`);
      }
    }
    const out = real.join('/');
    dirCache.set(key, out);
    return out;
  };

  const remove = (rel: string) => {
    rmSync(abs(rel), { recursive: true, force: true });
    ledger.forget(rel);
    // Removed directories (or symlinks to them) may be cached as parents.
    dirCache.clear();
  };

  const setMeta = (rel: string, h: tar.Header, isLink: boolean) => {
    const uid = h.uid ?? 0;
    const gid = h.gid ?? 0;
    const mode = h.mode ?? 0o644;
    if (opts.chownOnDisk) {
      // chown clears setuid/setgid: mode goes on afterwards.
      (isLink ? lchownSync : chownSync)(abs(rel), uid, gid);
    } else {
      ledger.owners.set(rel, { uid, gid, mode });
    }
    if (!isLink) chmodSync(abs(rel), mode & 0o7777);
    if (h.mtime && !isLink) utimesSync(abs(rel), h.mtime, h.mtime);
    if (h.mtime && isLink) lutimesSync(abs(rel), h.mtime, h.mtime);
  };

  const handle = async (h: tar.Header, body: Readable): Promise<void> => {
    const comps = entryComponents(h.name);
    if (comps === 'dotdot') throw rejected(opts, h.name, 'has a ".." component');
    const bad = badName(h.name, comps);
    if (bad) throw rejected(opts, h.name, bad);
    if (h.linkname) {
      const target = entryComponents(h.linkname);
      if (
        h.type === 'symlink'
          ? h.linkname.includes('\0') || Buffer.byteLength(h.linkname) > MAX_LINK_TARGET
          : badName(h.linkname, target === 'dotdot' ? [] : target)
      ) {
        throw rejected(opts, h.name, 'links to a target the host cannot name (too long, or a NUL byte)');
      }
    }
    if (++ledger.entries > opts.maxEntries) throw rejected(opts, h.name, `exceeds the limit of ${opts.maxEntries} entries`);
    // A symlink's target takes a page on a tmpfs once it is not short.
    charge(ENTRY_COST + (h.type === 'symlink' ? Math.ceil((h.linkname?.length ?? 0) / PAGE) * PAGE : 0));
    if (comps.length === 0) {
      // The root itself: only its metadata matters.
      if (h.type === 'directory') setMeta('', h, false);
      return;
    }
    const base = comps.at(-1) as string;
    const parent = resolveDir(h.name, comps.slice(0, -1));
    const join = (n: string) => (parent ? `${parent}/${n}` : n);

    if (base === '.wh..wh..opq') {
      for (const child of readdirSync(abs(parent))) {
        const rel = join(child);
        if (!createdHere.has(rel)) remove(rel);
      }
      return;
    }
    if (base.startsWith('.wh.')) {
      const target = base.slice(4);
      // `.wh.`, `.wh..` and `.wh...` would name the directory itself or its parent (the tree's root or above).
      if (target === '' || target === '.' || target === '..')
        throw rejected(opts, h.name, `is a whiteout of "${target}", which is not a name inside the image`);
      const rel = join(target);
      if (!createdHere.has(rel)) remove(rel);
      return;
    }

    const rel = join(base);
    const existing = lstatSync(abs(rel), { throwIfNoEntry: false });
    if (existing && !(existing.isDirectory() && h.type === 'directory')) remove(rel);
    createdHere.add(rel);

    switch (h.type) {
      case 'directory':
        if (!existing?.isDirectory()) mkdirSync(abs(rel), { mode: 0o700 });
        setMeta(rel, h, false);
        return;
      case 'file':
      case 'contiguous-file': {
        const size = h.size ?? 0;
        ledger.bytes += size;
        if (ledger.bytes > opts.maxBytes) throw rejected(opts, h.name, `brings the image over the limit of ${opts.maxBytes} bytes`);
        // The header's size is what the body will hold (the tar reader fails the entry otherwise).
        charge(Math.ceil(size / PAGE) * PAGE);
        // O_EXCL: never opens something already there (a link a lower layer planted included).
        const fd = openSync(abs(rel), 'wx', 0o600);
        try {
          let written = 0;
          for await (const chunk of body) {
            written += (chunk as Buffer).length;
            if (written > size) throw rejected(opts, h.name, `holds more than the ${size} bytes its header declares`);
            writeSync(fd, chunk as Buffer);
          }
          if (opts.chownOnDisk) fchownSync(fd, h.uid ?? 0, h.gid ?? 0);
          else ledger.owners.set(rel, { uid: h.uid ?? 0, gid: h.gid ?? 0, mode: h.mode ?? 0o644 });
          // After chown, which clears setuid/setgid.
          fchmodSync(fd, (h.mode ?? 0o644) & 0o7777);
          if (h.mtime) futimesSync(fd, h.mtime, h.mtime);
        } finally {
          closeSync(fd);
        }
        return;
      }
      case 'symlink':
        if (!h.linkname) throw rejected(opts, h.name, 'is a symlink without a target');
        symlinkSync(h.linkname, abs(rel));
        setMeta(rel, h, true);
        dirCache.clear();
        return;
      case 'link': {
        const target = entryComponents(h.linkname ?? '');
        if (target === 'dotdot' || target.length === 0) throw rejected(opts, h.name, `is a hardlink to "${h.linkname}", outside the image root`);
        const tparent = resolveDir(h.name, target.slice(0, -1));
        const trel = tparent ? `${tparent}/${target.at(-1)}` : (target.at(-1) as string);
        const tst = lstatSync(abs(trel), { throwIfNoEntry: false });
        if (!tst || tst.isDirectory()) throw rejected(opts, h.name, `is a hardlink to "${h.linkname}", which is ${tst ? 'a directory' : 'not in the image'}`);
        linkSync(abs(trel), abs(rel));
        const owner = ledger.owners.get(trel);
        if (owner) ledger.owners.set(rel, owner);
        const special = ledger.specials.get(trel);
        if (special) ledger.specials.set(rel, special);
        return;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo':
        ledger.specials.set(rel, {
          type: h.type === 'fifo' ? 'fifo' : h.type === 'block-device' ? 'block' : 'char',
          major: h.devmajor ?? 0,
          minor: h.devminor ?? 0,
          mode: (h.mode ?? 0o644) & 0o7777,
          uid: h.uid ?? 0,
          gid: h.gid ?? 0,
        });
        return;
      default:
        throw rejected(opts, h.name, `has an unsupported tar entry type (${h.type})`);
    }
  };

  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (h, body, next) => {
      // A cut-off archive fails the entry's stream too; the extractor reports it once, below.
      body.on('error', () => {});
      handle(h, body as unknown as Readable).then(
        () => {
          body.resume();
          next();
        },
        (e) => {
          body.resume();
          extract.destroy(e);
        },
      );
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  await Promise.all([pipeline(input, extract).catch((e) => Promise.reject(wrapTarError(e, opts))), done.catch((e) => Promise.reject(wrapTarError(e, opts)))]);
}

function wrapTarError(e: unknown, opts: ApplyOptions): unknown {
  if (e instanceof BangerError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (/Unexpected end|Invalid tar header|unexpected end of data|premature close/i.test(msg)) {
    return new BangerError('rejected_content', `${opts.label}: not a complete tar archive (${msg})`, { fix: 'the layer is truncated or corrupt; pull again' });
  }
  return e;
}
