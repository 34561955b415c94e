import { copyFile, cp, mkdir, readdir, readFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { BangerError, notFound } from '../../api/errors.js';
import type { Kernel } from '../../api/schemas.js';
import type { Layout } from '../../config/layout.js';
import { guestBinary } from '../../guest/binaries.js';
import { buildBaseInitramfs } from '../../guest/initramfs.js';
import { type KernelRow, type Repos, resolveRef } from '../../store/repos.js';
import { newId } from '../../util/ids.js';
import type { KeyedMutex } from '../locks.js';
import type { Clock, OpContext } from '../operations.js';

export interface KernelSource {
  kernel: string;
  initrd?: string | undefined;
  modulesDir?: string | undefined;
  version: string;
}

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
  const manifest = await readFile(manifestPath, 'utf8').catch(() => undefined);
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
    return {
      kernel: inside(m.kernel),
      initrd: typeof m.initrd === 'string' ? inside(m.initrd) : undefined,
      modulesDir: typeof m.modules === 'string' ? inside(m.modules) : undefined,
      version: typeof m.version === 'string' ? m.version : 'unknown',
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
  const kernelFile = vmlinux ? (top.includes(vmlinux) ? join(root, vmlinux) : join(root, 'boot', vmlinux)) : vmlinuz ? (boot.includes(vmlinuz) ? join(root, 'boot', vmlinuz) : join(root, vmlinuz)) : undefined;
  if (!kernelFile) {
    throw new BangerError('bad_request', `no kernel found in ${root}`, {
      fix: 'expected boot/vmlinuz-<version>, a vmlinux file, or a kernel.json manifest naming the kernel file',
    });
  }
  const initrd = boot.find((f) => f.startsWith('initrd.img') || f.startsWith('initramfs'));
  return {
    kernel: kernelFile,
    initrd: initrd ? join(root, 'boot', initrd) : undefined,
    modulesDir: versions.length ? join(modulesBase, version) : undefined,
    version,
  };
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

export class KernelService {
  constructor(
    private readonly repos: Repos,
    private readonly layout: Layout,
    private readonly clock: Clock,
    private readonly locks: KeyedMutex,
  ) {}

  list(): Kernel[] {
    return this.repos.kernels.all().map(toKernel);
  }

  row(ref: string): KernelRow {
    const r = resolveRef(ref, this.repos.kernels.byName, this.repos.kernels.byIdPrefix);
    if (r === 'ambiguous') throw new BangerError('bad_request', `kernel ref "${ref}" matches several kernels`, { fix: 'use the name or a longer id prefix' });
    if (!r) throw notFound('kernel', ref);
    return r;
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
    return this.locks.run(`kernel-name:${name}`, async () => {
      if (this.repos.kernels.byName(name)) {
        throw new BangerError('conflict', `a kernel named "${name}" already exists`, { fix: `pick another name or remove it: banger kernel rm ${name}` });
      }
      const id = newId();
      const staging = join(this.layout.stagingDir, `kernel-${id}`);
      const finalDir = join(this.layout.kernelsDir, id);
      try {
        await mkdir(staging, { recursive: true, mode: 0o700 });
        ctx.stage('copy kernel');
        // Symlinked inputs are copied as the files they point to: the kernel dir must not depend on them.
        const kernelDest = join(staging, basename(src.kernel));
        await copyFile(src.kernel, kernelDest);
        let modulesRel: string | undefined;
        if (src.modulesDir) {
          modulesRel = join('lib/modules', src.version);
          await cp(await realpath(src.modulesDir), join(staging, modulesRel), { recursive: true, verbatimSymlinks: true });
        }
        let initrdRel: string;
        if (src.initrd) {
          initrdRel = basename(src.initrd);
          await copyFile(src.initrd, join(staging, initrdRel));
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
        await rename(staging, finalDir);
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
        try {
          this.repos.kernels.insert(row);
        } catch (e) {
          await rm(finalDir, { recursive: true, force: true });
          throw e;
        }
        return toKernel(row);
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    });
  }

  async remove(ref: string, force: boolean): Promise<string> {
    const k = this.row(ref);
    const users = this.repos.kernels.imageCount(k.id);
    if (users > 0) {
      throw new BangerError('conflict', `kernel "${k.name}" is used by ${users} image(s)`, {
        fix: force ? 'delete those images first (images cannot lose their kernel)' : 'delete the images that use it first (banger image list)',
      });
    }
    this.repos.kernels.delete(k.id);
    if (k.managed) await rm(k.dir, { recursive: true, force: true });
    return k.name;
  }

  /** True when the kernel's initrd is banger's own (so a per-VM payload can be appended to it). */
  static hasBangerInitramfs(k: KernelRow): boolean {
    return !!k.initrd_path && basename(k.initrd_path) === 'banger-initramfs.cpio.gz';
  }
}
