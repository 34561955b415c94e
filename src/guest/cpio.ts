import { gzipSync } from 'node:zlib';

/**
 * A pure writer of the cpio "newc" format, the only one the kernel's initramfs unpacker reads.
 * Every entry is owned by 0:0 with mtime 0 so the same tree always yields the same bytes: the base
 * initramfs is cached per kernel and compared, and tests diff archives.
 */
export type CpioEntry =
  | { type: 'file'; path: string; mode: number; data: Buffer | string }
  | { type: 'dir'; path: string; mode: number }
  | { type: 'symlink'; path: string; target: string }
  /** Character device node, e.g. /dev/console (5:1) so /init has a console before devtmpfs. */
  | { type: 'char'; path: string; mode: number; major: number; minor: number };

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = 'TRAILER!!!';

/** Archive names are relative ("etc/x"), with no "." or ".." components and no empty segments. */
export function normalizeArchivePath(path: string): string {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0) throw new Error(`cpio: empty path "${path}"`);
  if (parts.includes('..')) throw new Error(`cpio: path "${path}" contains ".."`);
  if (parts.some((p) => p.includes('\0'))) throw new Error('cpio: path contains a NUL byte');
  return parts.join('/');
}

const hex8 = (n: number): string => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`cpio: field value ${n} out of range`);
  return n.toString(16).padStart(8, '0');
};

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

function header(fields: { ino: number; mode: number; nlink: number; size: number; rdevMajor?: number; rdevMinor?: number; nameSize: number }): string {
  return [
    '070701',
    hex8(fields.ino),
    hex8(fields.mode),
    hex8(0), // uid
    hex8(0), // gid
    hex8(fields.nlink),
    hex8(0), // mtime
    hex8(fields.size),
    hex8(0), // devmajor
    hex8(0), // devminor
    hex8(fields.rdevMajor ?? 0),
    hex8(fields.rdevMinor ?? 0),
    hex8(fields.nameSize),
    hex8(0), // check
  ].join('');
}

function member(out: Buffer[], ino: number, name: string, mode: number, nlink: number, data: Buffer, rdev?: [number, number]): void {
  const nameBuf = Buffer.from(`${name}\0`, 'utf8');
  const head = Buffer.from(
    header({
      ino,
      mode,
      nlink,
      size: data.length,
      nameSize: nameBuf.length,
      ...(rdev ? { rdevMajor: rdev[0], rdevMinor: rdev[1] } : {}),
    }),
    'latin1',
  );
  out.push(head, nameBuf, Buffer.alloc(pad4(head.length + nameBuf.length)));
  if (data.length > 0) out.push(data, Buffer.alloc(pad4(data.length)));
}

const permBits = (mode: number, path: string): number => {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new Error(`cpio: bad mode ${mode} for ${path}`);
  return mode;
};

/**
 * Adds the missing parent directories (0755; the kernel does not create them) and sorts entries so
 * every parent precedes its children. A later entry for the same path replaces an earlier one.
 */
export function completeTree(entries: readonly CpioEntry[]): CpioEntry[] {
  const byPath = new Map<string, CpioEntry>();
  for (const e of entries) {
    const path = normalizeArchivePath(e.path);
    byPath.set(path, { ...e, path });
  }
  for (const path of [...byPath.keys()]) {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      const existing = byPath.get(parent);
      if (!existing) byPath.set(parent, { type: 'dir', path: parent, mode: 0o755 });
      else if (existing.type !== 'dir') throw new Error(`cpio: ${parent} is both a ${existing.type} and a parent directory`);
    }
  }
  // Component-wise order: "a/b" sorts right after "a" and before "a-b", so parents come first.
  const key = (p: string) => p.split('/');
  return [...byPath.values()].sort((x, y) => {
    const a = key(x.path);
    const b = key(y.path);
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const ai = a[i] as string;
      const bi = b[i] as string;
      if (ai !== bi) return ai < bi ? -1 : 1;
    }
    return a.length - b.length;
  });
}

/** Serializes entries in the given order (use completeTree first unless the order is deliberate). */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const out: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = normalizeArchivePath(e.path);
    switch (e.type) {
      case 'file': {
        const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : e.data;
        member(out, ino++, name, S_IFREG | permBits(e.mode, name), 1, data);
        break;
      }
      case 'dir':
        member(out, ino++, name, S_IFDIR | permBits(e.mode, name), 2, Buffer.alloc(0));
        break;
      case 'symlink':
        if (!e.target) throw new Error(`cpio: symlink ${name} has an empty target`);
        member(out, ino++, name, S_IFLNK | 0o777, 1, Buffer.from(e.target, 'utf8'));
        break;
      case 'char':
        member(out, ino++, name, S_IFCHR | permBits(e.mode, name), 1, Buffer.alloc(0), [e.major, e.minor]);
        break;
    }
  }
  member(out, 0, TRAILER, 0, 1, Buffer.alloc(0));
  return Buffer.concat(out);
}

/** gzip with a zero mtime in the header (node's default), so equal trees give equal bytes. */
export function gzipCpio(archive: Buffer, level = 6): Buffer {
  return gzipSync(archive, { level });
}

/** completeTree + writeCpio + gzip: what the kernel accepts as (one part of) an initrd. */
export function buildCpioGz(entries: readonly CpioEntry[], level = 6): Buffer {
  return gzipCpio(writeCpio(completeTree(entries)), level);
}
