import { constants as fsc } from 'node:fs';
import { lstat, open, readdir } from 'node:fs/promises';
import { basename, join, relative, sep } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { readRegularNoFollow } from '../archive/safe-extract.js';
import type { CommandRunner } from '../host/runner.js';

/**
 * Kernel-module resolution for banger's initramfs. Extracted distro kernel packages ship no
 * modules.dep (the package's postinst runs depmod), so dependencies come from each module's own
 * `.modinfo` section and the host needs no kmod.
 */

/** What banger-init must load to see its disks, NIC and agent port, in load order. */
export const BOOT_MODULES = ['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'failover', 'net_failover', 'virtio_net', 'virtio_console'] as const;

/** The vsock agent channel (Firecracker); loaded when the kernel has them. */
export const VSOCK_MODULES = ['vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport'] as const;

export interface ResolvedModule {
  /** Canonical module name (dashes as underscores). */
  name: string;
  /** The module file in the kernel tree (possibly compressed). */
  source: string;
  /** Path relative to the modules directory, always ending in plain `.ko` (".../virtio_blk.ko"). */
  relPath: string;
  /** Uncompressed module bytes. */
  data: Buffer;
  depends: string[];
}

export interface ModuleResolution {
  /** Dependencies first, then in the order they were requested. */
  modules: ResolvedModule[];
  /** Requested or depended-on modules the kernel has built in. */
  builtin: string[];
  /** Optional modules this kernel has neither as a file nor built in. */
  missingOptional: string[];
  /**
   * Required modules not found while the kernel ships no modules.builtin: assumed built in (a
   * kernel built without them as modules, e.g. a Firecracker guest kernel).
   */
  assumedBuiltin: string[];
}

export interface ResolveModulesOptions {
  /** `lib/modules/<version>` of an extracted kernel. */
  modulesDir: string;
  version: string;
  required?: readonly string[];
  optional?: readonly string[];
  /** For `.ko.xz` / `.ko.zst`: decompressed with the host's xz/zstd in tmpDir. */
  runner?: CommandRunner;
  tmpDir?: string;
}

export class ModuleError extends Error {
  override name = 'ModuleError';
}

export const canonicalModuleName = (name: string): string => name.replace(/-/g, '_');

const MODULE_FILE = /^(.+)\.ko(\.(?:xz|zst|gz))?$/;

/** Bounds on what a (hostile) kernel tree can make the host read. */
const MAX_TREE_ENTRIES = 200_000;
const MAX_TREE_DEPTH = 32;
const MAX_MODULE_BYTES = 64 * 1024 * 1024;
const MAX_BUILTIN_BYTES = 4 * 1024 * 1024;

/**
 * Regular files under `dir` (relative paths), never descending into a symlinked directory: the
 * tree comes from a kernel archive, and its links are guest paths (Node 20's recursive readdir
 * follows them).
 */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  let seen = 0;
  const walk = async (rel: string, depth: number): Promise<void> => {
    if (depth > MAX_TREE_DEPTH) throw new ModuleError(`kernel modules directory ${dir} is nested more than ${MAX_TREE_DEPTH} levels deep`);
    for (const e of await readdir(rel ? join(dir, rel) : dir, { withFileTypes: true })) {
      if (++seen > MAX_TREE_ENTRIES) throw new ModuleError(`kernel modules directory ${dir} has more than ${MAX_TREE_ENTRIES} entries`);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r, depth + 1);
      else if (e.isFile()) out.push(r);
    }
  };
  await walk('', 0);
  return out;
}

/** Maps canonical module name → file, over the whole modules tree (regular files only, no symlinks). */
export async function indexModules(modulesDir: string): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  let files: string[];
  try {
    files = await listFiles(modulesDir);
  } catch (e) {
    if (e instanceof ModuleError) throw e;
    throw new ModuleError(`cannot read kernel modules directory ${modulesDir}: ${(e as Error).message}`);
  }
  for (const rel of files.sort()) {
    const m = MODULE_FILE.exec(basename(rel));
    if (!m) continue;
    const name = canonicalModuleName(m[1] as string);
    // Prefer an uncompressed file when a tree carries both.
    const prev = index.get(name);
    if (!prev || (prev.endsWith('.ko') === false && rel.endsWith('.ko'))) index.set(name, join(modulesDir, rel));
  }
  return index;
}

/** Names listed in modules.builtin ("kernel/fs/ext4/ext4.ko" → "ext4"), or undefined without the file. */
export async function readBuiltin(modulesDir: string): Promise<Set<string> | undefined> {
  const path = join(modulesDir, 'modules.builtin');
  if (!(await lstat(path).catch(() => undefined))) return undefined;
  let text: string;
  try {
    text = (await readRegularNoFollow(path, MAX_BUILTIN_BYTES, 'modules.builtin')).toString('utf8');
  } catch (e) {
    throw new ModuleError((e as Error).message);
  }
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = MODULE_FILE.exec(basename(line.trim()));
    if (m) names.add(canonicalModuleName(m[1] as string));
  }
  return names;
}

/** The NUL-separated key=value strings of an ELF64 little-endian module's .modinfo section. */
function elfModinfo(data: Buffer): Buffer | undefined {
  const isElf64Le = data.length > 64 && data.readUInt32BE(0) === 0x7f454c46 && data[4] === 2 && data[5] === 1;
  if (!isElf64Le) return undefined;
  const shoff = Number(data.readBigUInt64LE(0x28));
  const shentsize = data.readUInt16LE(0x3a);
  const shnum = data.readUInt16LE(0x3c);
  const shstrndx = data.readUInt16LE(0x3e);
  const section = (i: number) => {
    const base = shoff + i * shentsize;
    if (base + 64 > data.length) return undefined;
    return {
      name: data.readUInt32LE(base),
      offset: Number(data.readBigUInt64LE(base + 0x18)),
      size: Number(data.readBigUInt64LE(base + 0x20)),
    };
  };
  const strtab = section(shstrndx);
  if (!strtab) return undefined;
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (!s) return undefined;
    const nameStart = strtab.offset + s.name;
    const nameEnd = data.indexOf(0, nameStart);
    if (nameEnd < 0) continue;
    if (data.toString('latin1', nameStart, nameEnd) === '.modinfo') {
      return data.subarray(s.offset, Math.min(s.offset + s.size, data.length));
    }
  }
  return undefined;
}

/**
 * Reads `key=` from a module's modinfo. Real modules are parsed as ELF; anything else (the fakes
 * of the tests, odd toolchains) falls back to scanning the bytes for a NUL-delimited `key=`.
 */
export function modinfoField(data: Buffer, key: string): string | undefined {
  const region = elfModinfo(data) ?? data;
  const needle = Buffer.from(`${key}=`, 'latin1');
  let at = region.indexOf(needle);
  while (at >= 0) {
    if (at === 0 || region[at - 1] === 0) {
      const start = at + needle.length;
      let end = region.indexOf(0, start);
      if (end < 0) end = region.length;
      return region.toString('utf8', start, end);
    }
    at = region.indexOf(needle, at + 1);
  }
  return undefined;
}

export const moduleDepends = (data: Buffer): string[] =>
  (modinfoField(data, 'depends') ?? '')
    .split(',')
    .map((d) => canonicalModuleName(d.trim()))
    .filter((d) => d !== '');

/**
 * A module's bytes, uncompressed. The file is opened without following symlinks and must be a
 * regular file (a kernel tree's `x.ko -> /etc/shadow` never reaches the initramfs), with bounded
 * sizes before and after decompression.
 */
async function readModule(path: string, runner: CommandRunner | undefined, tmpDir: string | undefined): Promise<Buffer> {
  const read = async (p: string) => {
    try {
      return await readRegularNoFollow(p, MAX_MODULE_BYTES, 'kernel module');
    } catch (e) {
      throw new ModuleError((e as Error).message);
    }
  };
  if (path.endsWith('.ko')) return read(path);
  if (path.endsWith('.ko.gz')) {
    try {
      return gunzipSync(await read(path), { maxOutputLength: MAX_MODULE_BYTES });
    } catch (e) {
      if (e instanceof ModuleError) throw e;
      throw new ModuleError(`cannot decompress kernel module ${path}: ${(e as Error).message}`);
    }
  }
  const tool = path.endsWith('.ko.xz') ? 'xz' : 'zstd';
  if (!runner || !tmpDir) {
    throw new ModuleError(`${path} is ${tool}-compressed; decompressing it needs a CommandRunner and a temp dir`);
  }
  // Both tools decompress a copy in place (x.ko.xz → x.ko): the runner captures stdout as text.
  // The copy is written from the bytes read above, into banger's own temp dir (O_EXCL).
  const copy = join(tmpDir, basename(path));
  const fh = await open(copy, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(await read(path));
  } finally {
    await fh.close();
  }
  await runner.run(tool, tool === 'xz' ? ['-d', '-f', '-q', copy] : ['-d', '-f', '-q', '--rm', copy], { timeoutMs: 60_000 });
  return read(copy.replace(/\.(xz|zst)$/, ''));
}

/**
 * Resolves the modules to load (with their dependencies, depth first) and orders them so every
 * module comes after what it depends on. Built-in modules are skipped.
 */
export async function resolveModules(opts: ResolveModulesOptions): Promise<ModuleResolution> {
  const required = (opts.required ?? BOOT_MODULES).map(canonicalModuleName);
  const optional = (opts.optional ?? VSOCK_MODULES).map(canonicalModuleName);
  const index = await indexModules(opts.modulesDir);
  const builtinList = await readBuiltin(opts.modulesDir);
  const result: ModuleResolution = { modules: [], builtin: [], missingOptional: [], assumedBuiltin: [] };
  const done = new Set<string>();
  const visiting: string[] = [];

  const visit = async (name: string, requiredBy: string | undefined, isOptional: boolean): Promise<void> => {
    if (done.has(name)) return;
    if (visiting.includes(name)) {
      throw new ModuleError(`kernel modules have a dependency cycle: ${[...visiting, name].join(' → ')}`);
    }
    const file = index.get(name);
    if (!file) {
      done.add(name);
      if (builtinList?.has(name)) result.builtin.push(name);
      else if (isOptional) result.missingOptional.push(name);
      else if (!builtinList) result.assumedBuiltin.push(name);
      else {
        throw new ModuleError(
          `kernel module ${name}${requiredBy ? ` (needed by ${requiredBy})` : ''} is neither in ${opts.modulesDir} nor built into kernel ${opts.version}`,
        );
      }
      return;
    }
    visiting.push(name);
    const data = await readModule(file, opts.runner, opts.tmpDir);
    const vermagic = modinfoField(data, 'vermagic');
    if (vermagic !== undefined && vermagic.split(' ')[0] !== opts.version) {
      throw new ModuleError(`kernel module ${file} was built for kernel ${vermagic.split(' ')[0]}, not ${opts.version}`);
    }
    const depends = moduleDepends(data);
    for (const dep of depends) await visit(dep, name, false);
    visiting.pop();
    done.add(name);
    const rel = relative(opts.modulesDir, file).split(sep).join('/');
    result.modules.push({ name, source: file, relPath: rel.replace(/\.ko\.(xz|zst|gz)$/, '.ko'), data, depends });
  };

  for (const name of required) await visit(name, undefined, false);
  for (const name of optional) await visit(name, undefined, true);
  return result;
}
