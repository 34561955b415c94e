import { lstat, mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { BangerError, notFound } from '../../api/errors.js';
import type { Image, ImagePullRequest } from '../../api/schemas.js';
import { fetchAndFlatten } from '../../images/oci-pull.js';
import { buildRootfs, imageSizeFor } from '../../images/rootfs-build.js';
import type { BlobCache, PruneReport } from '../../oci/blob-cache.js';
import { defaultImageName, formatReference, parseReference } from '../../oci/reference.js';
import { RegistryClient } from '../../oci/registry.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Layout } from '../../config/layout.js';
import type { DiskTools } from '../../host/disks.js';
import { type ImageRow, type Repos, resolveRef } from '../../store/repos.js';
import { newId } from '../../util/ids.js';
import type { KeyedMutex } from '../locks.js';
import type { Clock, OpContext } from '../operations.js';
import type { KernelService } from './kernels.js';

export interface RegisterImageRequest {
  name: string;
  rootfs: string;
  kernel?: string | undefined;
  initrd?: string | undefined;
  modules?: string | undefined;
  kernelRef?: string | undefined;
}

const SYSTEMD_PATHS = ['/usr/lib/systemd/systemd', '/lib/systemd/systemd'];
const SSHD_PATHS = ['/usr/sbin/sshd', '/sbin/sshd'];

/** True when any path exists in the tree as a file or symlink; never follows links out of it. */
async function anyPresent(tree: string, paths: string[]): Promise<boolean> {
  for (const p of paths) {
    // /lib and /sbin are usually links into /usr: check the /usr spelling too rather than follow them.
    if (await lstat(join(tree, p)).then(() => true, () => false)) return true;
  }
  return false;
}

export class ImageService {
  constructor(
    private readonly repos: Repos,
    private readonly layout: Layout,
    private readonly clock: Clock,
    private readonly locks: KeyedMutex,
    private readonly disks: DiskTools,
    private readonly kernels: KernelService,
    private readonly blobs: BlobCache,
    private readonly runner: CommandRunner,
    private readonly defaultKernel: string = 'debian-cloud',
  ) {}

  /** Where a new image's kernel comes from: the one asked for, else the default kernel. */
  private async kernelFor(kernelRef: string | undefined, _ctx: OpContext): Promise<string> {
    const name = kernelRef ?? this.defaultKernel;
    const row = this.repos.kernels.byName(name) ?? (kernelRef ? this.kernels.row(kernelRef) : undefined);
    if (row) return row.id;
    throw new BangerError('not_found', `kernel "${name}" is not installed`, { fix: `pull it (banger kernel pull ${name}) or pass --kernel-ref NAME` });
  }

  private async checkNameFree(name: string): Promise<void> {
    if (this.repos.images.byName(name)) {
      throw new BangerError('conflict', `an image named "${name}" already exists`, { fix: `pick another name with --name, or delete it: banger image delete ${name}` });
    }
  }

  /**
   * Pulls an OCI image and turns it into a managed ext4 image: layers flattened in a private
   * staging directory (ownership, modes and setuid kept), the ext4 built from it, its /root kept
   * as the work seed; published with one rename and one row. A failure leaves neither.
   */
  async pull(req: ImagePullRequest, ctx: OpContext): Promise<Image> {
    const ref = parseReference(req.ref);
    const name = req.name ?? defaultImageName(ref);
    return this.locks.run(`image-name:${name}`, async () => {
      await this.checkNameFree(name);
      const kernelId = await this.kernelFor(req.kernelRef, ctx);
      const id = newId();
      const staging = join(this.layout.stagingDir, `image-${id}`);
      const tree = join(staging, 'tree');
      const finalDir = join(this.layout.imagesDir, id);
      const asRoot = process.getuid?.() === 0;
      try {
        await mkdir(tree, { recursive: true, mode: 0o700 });
        const client = new RegistryClient(ref, { signal: ctx.signal });
        const flat = await fetchAndFlatten(
          client,
          this.blobs,
          { root: tree, chownOnDisk: asRoot, platform: { os: 'linux', architecture: 'amd64' }, maxBytes: 256 * 1024 ** 3, maxEntries: 10_000_000 },
          ctx,
        );
        const sizeBytes = imageSizeFor(flat.ledger, req.sizeBytes);
        ctx.stage('build rootfs', `ext4, ${Math.round(sizeBytes / 1048576)} MiB`);
        const hasSystemd = await anyPresent(tree, SYSTEMD_PATHS);
        const hasSshd = await anyPresent(tree, SSHD_PATHS);
        const rootfs = join(staging, 'rootfs.ext4');
        const { skipped } = await buildRootfs(this.disks, { tree, out: rootfs, sizeBytes, ledger: flat.ledger, ownersOnDisk: asRoot, scriptPath: join(staging, 'fixup.debugfs') });
        for (const p of skipped) ctx.log(`warning: could not set owner or node type of /${p} (name debugfs cannot quote)`);
        ctx.stage('extract work seed', '/root');
        const rootSt = await lstat(join(tree, 'root')).catch(() => undefined);
        if (rootSt?.isDirectory()) await this.runner.run('cp', ['-a', '--reflink=auto', join(tree, 'root'), join(staging, 'root')], { timeoutMs: 600_000 });
        else await mkdir(join(staging, 'root'), { mode: 0o700 });
        await rm(tree, { recursive: true, force: true });
        await rm(join(staging, 'fixup.debugfs'), { force: true });
        ctx.checkCancelled();
        await rename(staging, finalDir);
        const row: ImageRow = {
          id,
          name,
          rootfs_path: join(finalDir, 'rootfs.ext4'),
          kernel_id: kernelId,
          work_seed_path: join(finalDir, 'root'),
          managed: 1,
          has_systemd: hasSystemd ? 1 : 0,
          has_sshd: hasSshd ? 1 : 0,
          digest: flat.manifestDigest,
          size_bytes: sizeBytes,
          source: `oci:${formatReference(ref)}`,
          created_at: this.clock.now().toISOString(),
        };
        this.repos.images.insert(row);
        return this.toImage(row);
      } catch (e) {
        await rm(finalDir, { recursive: true, force: true });
        throw e;
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    });
  }

  /** Copies an unmanaged image's rootfs into banger-owned storage; the original is no longer used. */
  async promote(ref: string, ctx: OpContext): Promise<Image> {
    const img = this.row(ref);
    return this.locks.run(`image:${img.id}`, async () => {
      const current = this.repos.images.byId(img.id) as ImageRow;
      if (current.managed) throw new BangerError('conflict', `image "${img.name}" is already managed by banger`, { fix: 'nothing to do' });
      const dir = join(this.layout.imagesDir, img.id);
      const partial = join(dir, `rootfs.ext4.partial-${newId().slice(0, 8)}`);
      const dest = join(dir, 'rootfs.ext4');
      ctx.stage('copy rootfs', current.rootfs_path);
      try {
        await mkdir(dir, { recursive: true, mode: 0o700 });
        await this.disks.cloneRaw(current.rootfs_path, partial);
        await this.disks.inspectExt4(partial);
        await rename(partial, dest);
      } finally {
        await rm(partial, { force: true });
      }
      const size = (await stat(dest)).size;
      this.repos.images.promote(img.id, dest, size);
      return this.toImage(this.repos.images.byId(img.id) as ImageRow);
    });
  }

  pruneCache(dryRun: boolean): Promise<PruneReport> {
    return this.blobs.prune(dryRun);
  }

  toImage(r: ImageRow): Image {
    return {
      id: r.id,
      name: r.name,
      rootfsPath: r.rootfs_path,
      kernelId: r.kernel_id,
      kernelName: this.repos.kernels.byId(r.kernel_id)?.name ?? '?',
      workSeedPath: r.work_seed_path,
      managed: !!r.managed,
      hasSystemd: !!r.has_systemd,
      hasSshd: !!r.has_sshd,
      digest: r.digest,
      sizeBytes: r.size_bytes,
      source: r.source,
      createdAt: r.created_at,
    };
  }

  list(): Image[] {
    return this.repos.images.all().map((r) => this.toImage(r));
  }

  row(ref: string): ImageRow {
    const r = resolveRef(ref, this.repos.images.byName, this.repos.images.byIdPrefix);
    if (r === 'ambiguous') throw new BangerError('bad_request', `image ref "${ref}" matches several images`, { fix: 'use the name or a longer id prefix' });
    if (!r) throw notFound('image', ref);
    return r;
  }

  /**
   * Registers an ext4 root filesystem in place (unmanaged: banger never writes to it; VMs get
   * copy-on-write overlays). The image's /root becomes its work seed, copied out without mounting.
   */
  async register(req: RegisterImageRequest, ctx: OpContext): Promise<Image> {
    return this.locks.run(`image-name:${req.name}`, async () => {
      if (this.repos.images.byName(req.name)) {
        throw new BangerError('conflict', `an image named "${req.name}" already exists`, { fix: `pick another name or delete it: banger image delete ${req.name}` });
      }
      const rootfs = resolve(req.rootfs);
      ctx.stage('inspect rootfs', rootfs);
      const st = await stat(rootfs).catch(() => undefined);
      if (!st?.isFile()) throw new BangerError('bad_request', `rootfs ${rootfs} is not a file`, { fix: 'give the path of a raw ext4 image' });
      await this.disks.inspectExt4(rootfs);
      const hasSystemd = await this.disks.imageHasAny(rootfs, SYSTEMD_PATHS);

      let kernelId: string;
      let createdKernel: string | undefined;
      if (req.kernelRef) {
        kernelId = this.kernels.row(req.kernelRef).id;
      } else {
        const kernelFile = resolve(req.kernel as string);
        const kst = await stat(kernelFile).catch(() => undefined);
        if (!kst?.isFile()) throw new BangerError('bad_request', `kernel ${kernelFile} is not a file`, { fix: 'give the path of a vmlinuz or vmlinux file' });
        if (req.initrd && !(await stat(resolve(req.initrd)).catch(() => undefined))?.isFile()) {
          throw new BangerError('bad_request', `initrd ${resolve(req.initrd)} is not a file`);
        }
        if (req.modules && !(await stat(resolve(req.modules)).catch(() => undefined))?.isDirectory()) {
          throw new BangerError('bad_request', `modules ${resolve(req.modules)} is not a directory`, { fix: 'give lib/modules/<version> of the kernel' });
        }
        // The files become a kernel of their own, named after the image.
        const k = await this.kernels.importSource(
          `${req.name}-kernel`,
          {
            kernel: kernelFile,
            initrd: req.initrd ? resolve(req.initrd) : undefined,
            modulesDir: req.modules ? resolve(req.modules) : undefined,
            version: req.modules ? basename(resolve(req.modules)) : 'unknown',
          },
          ctx,
          `image:${req.name}`,
        );
        kernelId = k.id;
        createdKernel = k.id;
      }

      const id = newId();
      const staging = join(this.layout.stagingDir, `image-${id}`);
      const finalDir = join(this.layout.imagesDir, id);
      try {
        ctx.stage('extract work seed', '/root');
        await mkdir(staging, { recursive: true, mode: 0o700 });
        const hasRoot = await this.disks.extractDir(rootfs, '/root', staging);
        if (!hasRoot) await mkdir(join(staging, 'root'), { mode: 0o700 });
        ctx.checkCancelled();
        await rename(staging, finalDir);
        const row: ImageRow = {
          id,
          name: req.name,
          rootfs_path: rootfs,
          kernel_id: kernelId,
          work_seed_path: join(finalDir, 'root'),
          managed: 0,
          has_systemd: hasSystemd ? 1 : 0,
          has_sshd: (await this.disks.imageHasAny(rootfs, SSHD_PATHS)) ? 1 : 0,
          digest: null,
          size_bytes: st.size,
          source: `register:${rootfs}`,
          created_at: this.clock.now().toISOString(),
        };
        this.repos.images.insert(row);
        return this.toImage(row);
      } catch (e) {
        await rm(finalDir, { recursive: true, force: true });
        if (createdKernel) await this.kernels.remove(createdKernel, false).catch(() => {});
        throw e;
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    });
  }

  async remove(ref: string): Promise<string> {
    const img = this.row(ref);
    return this.locks.run(`image:${img.id}`, async () => {
      const users = this.repos.images.vmCount(img.id);
      if (users > 0) {
        throw new BangerError('conflict', `image "${img.name}" is used by ${users} VM(s)`, { fix: 'delete those VMs first (banger vm list)' });
      }
      this.repos.images.delete(img.id);
      await rm(join(this.layout.imagesDir, img.id), { recursive: true, force: true });
      if (img.managed) await rm(img.rootfs_path, { force: true });
      return img.name;
    });
  }
}
