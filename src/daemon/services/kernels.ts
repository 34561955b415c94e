import { createReadStream } from 'node:fs';
import { cp, lstat, mkdir, open, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { BangerError, notFound } from '../../api/errors.js';
import type { KernelCatalogEntry, KernelCatalogItem } from '../../api/kernel-schemas.js';
import type { Kernel } from '../../api/schemas.js';
import { debDataStream } from '../../archive/ar.js';
import { compressionOf } from '../../archive/decompress.js';
import { displayUrl, downloadCached } from '../../archive/download.js';
import { copyRegularNoFollow, isUnder, readRegularNoFollow, realPathUnder, safeExtract } from '../../archive/safe-extract.js';
import type { Layout } from '../../config/layout.js';
import { guestBinary } from '../../guest/binaries.js';
import { buildBaseInitramfs } from '../../guest/initramfs.js';
import type { CommandRunner } from '../../host/runner.js';
import { type CatalogEntry, loadKernelCatalog } from '../../kernels/catalog.js';
import { fetchKernelStanzas, resolveKernelPackage } from '../../kernels/debian-index.js';
import { fetchVerifiedRelease } from '../../kernels/release.js';
import { extractVmlinux } from '../../kernels/vmlinux.js';
import { type KernelRow, type Repos, resolveRef } from '../../store/repos.js';
import { newId } from '../../util/ids.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import { publishStaged } from './publish.js';

export interface KernelSource {
  kernel: string;
  initrd?: string | undefined;
  modulesDir?: string | undefined;
  version: string;
}

/**
 * A kernel version becomes a path component (`lib/modules/<version>`) and goes into the
 * initramfs: one strict charset, no `/`, no leading dot (so never `.` or `..`).
 */
export const KERNEL_VERSION = /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$/;

/** Refuses a kernel version that is not a plain name (it would become a path). */
export function assertKernelVersion(version: string, where: string): string {
  if (!KERNEL_VERSION.test(version)) {
    throw new BangerError('rejected_content', `${where}: kernel version ${JSON.stringify(version.slice(0, 200))} is not a valid version`, {
      fix: 'a kernel version is 1-128 characters of letters, digits, ".", "_", "+", "~" and "-", starting with a letter or digit (e.g. 6.1.0-28-cloud-amd64)',
    });
  }
  return version;
}

const MAX_MANIFEST_BYTES = 64 * 1024;

/** Size of a tree on disk (apparent bytes), skipping symlinks. */
export async function treeSize(path: string): Promise<number> {
  const st = await stat(path);
  if (!st.isDirectory()) return st.size;
  let total = 0;
  for (const e of await readdir(path, { withFileTypes: true })) {
    if (e.isSymbolicLink()) continue;
    total += await treeSize(join(path, e.name));
  }
  return total;
}

/**
 * Finds the kernel in a directory: an extracted distro package (boot/vmlinuz-<ver>,
 * lib/modules/<ver>/, optional boot/initrd.img-<ver>), a bare vmlinux, or a kernel.json manifest
 * {"kernel": "...", "initrd"?: "...", "modules"?: "...", "version"?: "..."}.
 */
export async function discoverKernel(dir: string): Promise<KernelSource> {
  const root = resolve(dir);
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new BangerError('bad_request', `kernel source ${root} is not a directory`, {
      fix: 'give a directory holding an extracted kernel package (boot/vmlinuz-*, lib/modules/<ver>/) or a kernel.json manifest',
    });
  }
  const manifestPath = join(root, 'kernel.json');
  const manifestSt = await lstat(manifestPath).catch(() => undefined);
  const manifest = manifestSt ? (await readRegularNoFollow(manifestPath, MAX_MANIFEST_BYTES, 'kernel manifest')).toString('utf8') : undefined;
  /** Every file the host will read must really be in the tree: no symlink (final or intermediate) out of it. */
  const real = (p: string, what: string) => realPathUnder(root, p, what);
  if (manifest !== undefined) {
    let m: { kernel?: unknown; initrd?: unknown; modules?: unknown; version?: unknown };
    try {
      m = JSON.parse(manifest);
    } catch {
      throw new BangerError('bad_request', `${manifestPath} is not valid JSON`);
    }
    if (typeof m.kernel !== 'string') throw new BangerError('bad_request', `${manifestPath}: "kernel" (a file path) is required`);
    const inside = (p: string) => {
      const abs = resolve(root, p);
      if (!abs.startsWith(`${root}/`)) throw new BangerError('bad_request', `${manifestPath}: path ${p} points outside ${root}`);
      return abs;
    };
    if (m.version !== undefined && typeof m.version !== 'string') throw new BangerError('bad_request', `${manifestPath}: "version" must be a string`);
    const version = assertKernelVersion(typeof m.version === 'string' ? m.version : 'unknown', manifestPath);
    return {
      kernel: await real(inside(m.kernel), 'kernel'),
      initrd: typeof m.initrd === 'string' ? await real(inside(m.initrd), 'initrd') : undefined,
      modulesDir: typeof m.modules === 'string' ? await realDir(await real(inside(m.modules), 'modules directory')) : undefined,
      version,
    };
  }
  const list = async (d: string) => (await readdir(d).catch(() => [] as string[])).sort();
  const boot = await list(join(root, 'boot'));
  const top = await list(root);
  const vmlinux = top.find((f) => f.startsWith('vmlinux')) ?? boot.find((f) => f.startsWith('vmlinux'));
  const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-')) ?? top.find((f) => f.startsWith('vmlinuz'));
  let modulesBase = join(root, 'lib/modules');
  let versions = await list(modulesBase);
  if (versions.length === 0) {
    modulesBase = join(root, 'usr/lib/modules');
    versions = await list(modulesBase);
  }
  const fromName = vmlinuz?.replace(/^vmlinuz-?/, '') || vmlinux?.replace(/^vmlinux-?/, '') || '';
  const version = versions.includes(fromName) ? fromName : (versions[0] ?? (fromName || 'unknown'));
  const kernelFile = vmlinux
    ? top.includes(vmlinux)
      ? join(root, vmlinux)
      : join(root, 'boot', vmlinux)
    : vmlinuz
      ? boot.includes(vmlinuz)
        ? join(root, 'boot', vmlinuz)
        : join(root, vmlinuz)
      : undefined;
  if (!kernelFile) {
    throw new BangerError('bad_request', `no kernel found in ${root}`, {
      fix: 'expected boot/vmlinuz-<version>, a vmlinux file, or a kernel.json manifest naming the kernel file',
    });
  }
  const initrd = boot.find((f) => f.startsWith('initrd.img') || f.startsWith('initramfs'));
  assertKernelVersion(version, root);
  return {
    kernel: await real(kernelFile, 'kernel'),
    initrd: initrd ? await real(join(root, 'boot', initrd), 'initrd') : undefined,
    modulesDir: versions.length ? await realDir(await real(join(modulesBase, version), 'modules directory')) : undefined,
    version,
  };
}

async function realDir(path: string): Promise<string> {
  const st = await lstat(path);
  if (!st.isDirectory())
    throw new BangerError('rejected_content', `kernel modules ${path} is not a directory`, { fix: 'lib/modules/<version> must be a directory' });
  return path;
}

export function toKernel(r: KernelRow): Kernel {
  return {
    id: r.id,
    name: r.name,
    version: r.version,
    kernelPath: r.kernel_path,
    initrdPath: r.initrd_path,
    modulesDir: r.modules_dir,
    source: r.source,
    managed: !!r.managed,
    sizeBytes: r.size_bytes,
    createdAt: r.created_at,
  };
}

export interface KernelServiceOptions {
  /** Extra catalog files or URLs (config `kernel_catalogs`); relative paths are relative to the config file. */
  catalogs?: string[];
  /** Config `debian_mirror`. */
  debianMirror: string;
  /** Config `debian_keyring`: verifies the mirror's signed InRelease. */
  debianKeyring: string;
}

/** Limits for what a pull downloads and unpacks (a kernel package is ~30 MB, its tree ~150 MB). */
const PULL_MAX_DOWNLOAD = 2 * 1024 * 1024 * 1024;
const PULL_MAX_TREE = 4 * 1024 * 1024 * 1024;
const PULL_MAX_ENTRIES = 50_000;

/** What a catalog entry resolves to at pull time. */
interface ResolvedDownload {
  url: string;
  sha256: string;
  size?: number | undefined;
  /** `size` is exact (from the package index): more bytes fail the download. */
  exactSize?: boolean;
  package: string;
  version: string;
  format: 'deb' | 'tar.zst' | 'tar.gz' | 'tar.xz' | 'tar' | 'auto';
}

export interface KernelServiceDeps extends KernelServiceOptions {
  /** Runs gpgv (the signed Release) and the xz/zstd decompressors. */
  runner: CommandRunner;
  repos: Repos;
  layout: Layout;
  clock: Clock;
  locks: KeyedMutex;
}

export class KernelService {
  private readonly runner: CommandRunner;
  private readonly repos: Repos;
  private readonly layout: Layout;
  private readonly clock: Clock;
  private readonly locks: KeyedMutex;
  private readonly catalogRefs: string[];
  private readonly debianMirror: string;
  private readonly debianKeyring: string;

  constructor(d: KernelServiceDeps) {
    ({
      runner: this.runner,
      repos: this.repos,
      layout: this.layout,
      clock: this.clock,
      locks: this.locks,
      debianMirror: this.debianMirror,
      debianKeyring: this.debianKeyring,
    } = d);
    this.catalogRefs = d.catalogs ?? [];
  }

  list(): Kernel[] {
    return this.repos.kernels.all().map(toKernel);
  }

  row(ref: string): KernelRow {
    const r = resolveRef(ref, this.repos.kernels.byName, this.repos.kernels.byIdPrefix);
    if (r === 'ambiguous') throw new BangerError('bad_request', `kernel ref "${ref}" matches several kernels`, { fix: 'use the name or a longer id prefix' });
    if (!r) throw notFound('kernel', ref);
    return r;
  }

  /** Built-in entries merged with the configured catalogs (a catalog entry replaces a built-in of the same name). */
  catalogEntries(signal?: AbortSignal): Promise<CatalogEntry[]> {
    return loadKernelCatalog(this.catalogRefs, dirname(this.layout.configFile), signal);
  }

  /** The catalog with each entry's state: pulled (a local kernel has that name) or available. */
  async catalog(): Promise<KernelCatalogItem[]> {
    return (await this.catalogEntries()).map(({ entry, origin }) => {
      const local = this.repos.kernels.byName(entry.name);
      const item: KernelCatalogItem = {
        name: entry.name,
        distro: entry.distro,
        arch: entry.arch,
        version: entry.version,
        description: entry.description,
        source: entry.source,
        origin,
        state: local ? 'pulled' : 'available',
        kernel: local ? toKernel(local) : null,
      };
      if (entry.size !== undefined) item.size = entry.size;
      return item;
    });
  }

  /**
   * Copies the kernel (and its modules) into banger-owned storage and builds banger's initramfs
   * for it. Everything is assembled in staging and published with one rename, then one row.
   */
  async import(name: string, from: string, ctx: OpContext): Promise<Kernel> {
    ctx.stage('inspect kernel source', resolve(from));
    return this.importSource(name, await discoverKernel(from), ctx, `import:${resolve(from)}`);
  }

  /** Imports explicitly named files (e.g. `image register --kernel K --modules D`). */
  async importSource(name: string, src: KernelSource, ctx: OpContext, sourceLabel: string): Promise<Kernel> {
    return this.locks.run(`kernel-name:${name}`, () => this.publish(name, src, ctx, sourceLabel, {}));
  }

  /**
   * Pulls a catalog kernel: resolve (Debian index or direct archive) → download into the cache
   * (keyed by SHA-256, so a re-pull downloads nothing) → safe extraction in staging → vmlinux
   * extraction → banger's initramfs → one rename and one row. `force` replaces an existing kernel
   * of that name unless images use it. Any failure leaves no row and no files behind.
   */
  async pull(name: string, opts: { force?: boolean }, ctx: OpContext): Promise<Kernel> {
    ctx.stage('read catalog', name);
    const found = (await this.catalogEntries(ctx.signal)).find((c) => c.entry.name === name);
    if (!found) throw notFound('kernel catalog entry', name, 'list the catalog with `banger kernel list --available`');
    const { entry } = found;
    return this.locks.run(`kernel-name:${name}`, async () => {
      const existing = this.repos.kernels.byName(name);
      if (existing && !opts.force) {
        throw new BangerError('conflict', `a kernel named "${name}" already exists (${existing.source})`, {
          fix: `replace it with: banger kernel pull ${name} --force`,
        });
      }
      if (existing) this.assertUnused(existing, 'replace');
      const r = await this.resolveEntry(entry, ctx);
      ctx.checkCancelled();
      const file = await this.fetchCached(r, ctx);
      const tree = join(this.layout.stagingDir, `pull-${newId()}`);
      try {
        ctx.stage('extract', `${r.package}=${r.version}`);
        await this.extract(file, r, tree, ctx).catch(async (e: unknown) => {
          // Verified but refused content is not worth keeping in the cache.
          if (e instanceof BangerError && e.code === 'rejected_content') await rm(file, { force: true });
          throw e;
        });
        ctx.checkCancelled();
        const src = await discoverKernel(tree);
        if (/^vmlinuz/.test(basename(src.kernel))) {
          ctx.stage('extract vmlinux', basename(src.kernel));
          const out = join(tree, 'vmlinux');
          const ok = await extractVmlinux(src.kernel, out).catch((e: Error) => {
            ctx.log(`warning: vmlinux extraction failed: ${e.message}`);
            return false;
          });
          if (ok) src.kernel = out;
          else ctx.log(`warning: no uncompressed vmlinux found in ${basename(src.kernel)}; keeping the bzImage (QEMU boots it; Firecracker needs a vmlinux)`);
        }
        const label = `catalog:${name} ${r.package}=${r.version} sha256:${r.sha256}`;
        return await this.publish(name, src, ctx, label, { replace: existing, moveModules: true });
      } finally {
        await rm(tree, { recursive: true, force: true });
      }
    });
  }

  private async resolveEntry(entry: KernelCatalogEntry, ctx: OpContext): Promise<ResolvedDownload> {
    const s = entry.source;
    if (s.kind === 'archive') {
      ctx.stage('resolve', displayUrl(s.url));
      return { url: s.url, sha256: s.sha256, size: entry.size, package: entry.name, version: entry.version, format: s.format ?? 'auto' };
    }
    const mirror = s.mirror ?? this.debianMirror;
    ctx.stage('resolve', `${s.package} in ${displayUrl(mirror)} ${s.suite}/${s.component}`);
    const keyring = s.keyring ?? this.debianKeyring;
    const release = await fetchVerifiedRelease(this.runner, mirror, s.suite, keyring, ctx.signal);
    ctx.log(`InRelease of ${s.suite} verified with ${keyring}`);
    const { stanzas, url } = await fetchKernelStanzas(this.runner, mirror, s.suite, s.component, ctx.signal, release);
    const p = resolveKernelPackage(stanzas, s.package, mirror, displayUrl(url));
    ctx.log(`${s.package} → ${p.package}=${p.version} (${p.size} bytes, sha256 ${p.sha256})`);
    return { url: p.url, sha256: p.sha256, size: p.size, exactSize: true, package: p.package, version: p.version, format: 'deb' };
  }

  /** The download, from the cache when a file with that SHA-256 is there (re-verified), else fetched. */
  private async fetchCached(r: ResolvedDownload, ctx: OpContext): Promise<string> {
    let last = 0;
    return downloadCached(
      join(this.layout.cacheDir, 'downloads'),
      {
        url: r.url,
        sha256: r.sha256,
        // The index states the exact size; an archive entry's size is informative only.
        maxBytes: r.exactSize ? Math.min(r.size ?? PULL_MAX_DOWNLOAD, PULL_MAX_DOWNLOAD) : PULL_MAX_DOWNLOAD,
        signal: ctx.signal,
        onProgress: (bytes, total) => {
          const now = Date.now();
          const t = total ?? r.size;
          if (now - last < 200 && bytes !== t) return;
          last = now;
          ctx.progress(bytes, t, 'B');
        },
      },
      (cached) => ctx.stage('download', cached ? `cached (${r.package}=${r.version})` : `${displayUrl(r.url)}${r.size ? ` (${formatSize(r.size)})` : ''}`),
    );
  }

  private async extract(file: string, r: ResolvedDownload, tree: string, ctx: OpContext): Promise<void> {
    const limits = { dest: tree, runner: this.runner, maxBytes: PULL_MAX_TREE, maxEntries: PULL_MAX_ENTRIES, signal: ctx.signal };
    const isDeb = r.format === 'deb' || (r.format === 'auto' && (await isArFile(file)));
    if (isDeb) {
      const data = await debDataStream(file, `${r.package}_${r.version}.deb`);
      await safeExtract(data.stream, { ...limits, label: `${r.package}_${r.version}.deb ${data.member.name}`, compression: data.compression });
      return;
    }
    const compression = r.format === 'auto' ? 'auto' : (compressionOf(r.format) ?? 'auto');
    await safeExtract(createReadStream(file), { ...limits, label: `${r.package} (${displayUrl(r.url)})`, compression });
  }

  /** Refuses while images (or VMs) use the kernel; names them. */
  private assertUnused(k: KernelRow, verb: 'replace' | 'remove'): void {
    const images = (this.repos.db.prepare('SELECT name FROM images WHERE kernel_id = ? ORDER BY name').all(k.id) as Array<{ name: string }>).map((r) => r.name);
    const vms = (this.repos.db.prepare('SELECT name FROM vms WHERE kernel_id = ? ORDER BY name').all(k.id) as Array<{ name: string }>).map((r) => r.name);
    if (images.length === 0 && vms.length === 0) return;
    const users = [images.length ? `image(s) ${images.join(', ')}` : '', vms.length ? `VM(s) ${vms.join(', ')}` : ''].filter(Boolean).join(' and ');
    throw new BangerError('conflict', `cannot ${verb} kernel "${k.name}": it is used by ${users}`, {
      fix: vms.length
        ? `delete the VMs first (banger vm rm ${vms.join(' ')}); VMs cannot lose their kernel`
        : `delete the images first (banger image rm ${images.join(' ')}), or remove them with the kernel: banger kernel rm --force ${k.name}`,
    });
  }

  /**
   * Assembles the kernel dir in staging, then publishes it with one rename and one row (in one
   * transaction with the removal of `replace`, when replacing). Called under the kernel-name lock.
   */
  private async publish(
    name: string,
    src: KernelSource,
    ctx: OpContext,
    sourceLabel: string,
    opts: { replace?: KernelRow | undefined; moveModules?: boolean },
  ): Promise<Kernel> {
    const existing = this.repos.kernels.byName(name);
    if (existing && existing.id !== opts.replace?.id) {
      throw new BangerError('conflict', `a kernel named "${name}" already exists`, { fix: `pick another name or remove it: banger kernel rm ${name}` });
    }
    // The version names a directory: validated here too, whoever built `src`.
    assertKernelVersion(src.version, sourceLabel);
    const id = newId();
    const staging = join(this.layout.stagingDir, `kernel-${id}`);
    const finalDir = join(this.layout.kernelsDir, id);
    /** Every destination is checked to stay inside staging before anything is written or moved. */
    const dest = (rel: string) => {
      const p = resolve(staging, rel);
      if (p === staging || !isUnder(staging, p)) {
        throw new BangerError('rejected_content', `${sourceLabel}: "${rel}" would be written outside the kernel's staging directory`, {
          fix: 'the kernel source names a file or version that is not a plain name; fix it',
        });
      }
      return p;
    };
    try {
      await mkdir(staging, { recursive: true, mode: 0o700 });
      ctx.stage('copy kernel');
      // A named symlink (e.g. `--kernel /boot/vmlinuz`) is copied as the file it points to, read
      // through a descriptor opened without following links (discoverKernel already resolved and
      // contained the files of a tree).
      const kernelDest = dest(basename(src.kernel));
      await copyRegularNoFollow(await realpath(src.kernel), kernelDest, 'kernel');
      let modulesRel: string | undefined;
      if (src.modulesDir) {
        modulesRel = join('lib/modules', src.version);
        const modulesDest = dest(modulesRel);
        if (opts.moveModules) {
          // The source is banger's own staging tree on the same filesystem: a rename, no copy.
          const from = await realpath(src.modulesDir);
          const st = await lstat(from);
          if (from !== src.modulesDir || !st.isDirectory() || !isUnder(await realpath(this.layout.stagingDir), from)) {
            throw new BangerError('internal', `refusing to move ${src.modulesDir}: not a real directory inside ${this.layout.stagingDir}`);
          }
          await mkdir(dirname(modulesDest), { recursive: true });
          await rename(from, modulesDest);
        } else {
          await cp(await realpath(src.modulesDir), modulesDest, { recursive: true, verbatimSymlinks: true });
        }
      }
      let initrdRel: string;
      if (src.initrd) {
        initrdRel = basename(src.initrd);
        await copyRegularNoFollow(await realpath(src.initrd), dest(initrdRel), 'initrd');
      } else {
        ctx.stage('build initramfs', modulesRel ? 'banger-init + virtio modules' : 'banger-init');
        initrdRel = 'banger-initramfs.cpio.gz';
        await buildBaseInitramfs({
          kernelTree: staging,
          version: src.version,
          initBinary: guestBinary('banger-init'),
          outPath: join(staging, initrdRel),
        });
      }
      ctx.checkCancelled();
      const size = await treeSize(staging);
      const row: KernelRow = {
        id,
        name,
        version: src.version,
        dir: finalDir,
        kernel_path: join(finalDir, basename(kernelDest)),
        initrd_path: join(finalDir, initrdRel),
        modules_dir: modulesRel ? join(finalDir, modulesRel) : null,
        source: sourceLabel,
        managed: 1,
        size_bytes: size,
        created_at: this.clock.now().toISOString(),
      };
      await publishStaged({
        staging,
        finalDir,
        crashPointName: 'kernel:published',
        insertRow: () =>
          this.repos.db.transaction(() => {
            if (opts.replace) {
              // Re-checked inside the transaction: an image may have been registered meanwhile.
              this.assertUnused(opts.replace, 'replace');
              this.repos.kernels.delete(opts.replace.id);
            }
            this.repos.kernels.insert(row);
          })(),
      });
      if (opts.replace?.managed) await rm(opts.replace.dir, { recursive: true, force: true });
      return toKernel(row);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** Names of the VMs that boot the kernel. */
  vmNames(kernelId: string): string[] {
    return (this.repos.db.prepare('SELECT name FROM vms WHERE kernel_id = ? ORDER BY name').all(kernelId) as Array<{ name: string }>).map((r) => r.name);
  }

  /**
   * Removes a kernel: refused while images or VMs use it, naming them. `force` makes a missing
   * kernel not an error (like `rm -f`); removing its images first is `removeKernel`'s job.
   */
  async remove(ref: string, force: boolean): Promise<string> {
    let k: KernelRow;
    try {
      k = this.row(ref);
    } catch (e) {
      if (force && e instanceof BangerError && e.code === 'not_found') return ref;
      throw e;
    }
    return this.locks.run(`kernel-name:${k.name}`, async () => {
      const current = this.repos.kernels.byId(k.id);
      if (!current) return k.name;
      this.assertUnused(current, 'remove');
      this.repos.kernels.delete(current.id);
      if (current.managed) await rm(current.dir, { recursive: true, force: true });
      return current.name;
    });
  }

  /** True when the kernel's initrd is banger's own (so a per-VM payload can be appended to it). */
  static hasBangerInitramfs(k: KernelRow): boolean {
    return !!k.initrd_path && basename(k.initrd_path) === 'banger-initramfs.cpio.gz';
  }
}

async function isArFile(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(8);
    await fh.read(b, 0, 8, 0);
    return b.toString('latin1') === '!<arch>\n';
  } finally {
    await fh.close();
  }
}

function formatSize(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
}
