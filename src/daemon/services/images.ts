import { createReadStream } from 'node:fs';
import { lstat, mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BangerError, notFound } from '../../api/errors.js';
import type { Image, ImageCatalogList, ImagePullRequest } from '../../api/schemas.js';
import { displayUrl, downloadCached } from '../../archive/download.js';
import { packTree } from '../../archive/pack-tree.js';
import { readRegularNoFollow, safeExtract } from '../../archive/safe-extract.js';
import type { Layout } from '../../config/layout.js';
import type { DiskTools } from '../../host/disks.js';
import type { CommandRunner } from '../../host/runner.js';
import type { ScratchSpace } from '../../host/scratch.js';
import {
  BundleManifestSchema,
  type ImageCatalogEntry,
  loadImageCatalog,
  loadImageCatalogSourced,
  type RecipeSpec,
  recipeFilesBase,
} from '../../images/catalog.js';
import { applyLayer, RootfsLedger } from '../../images/layer-apply.js';
import { buildNpmLayer, copyOverlay, readPinnedLock, realSubdir } from '../../images/npm-layer.js';
import { fetchAndFlatten } from '../../images/oci-pull.js';
import { runRecipe } from '../../images/recipe.js';
import { buildRootfs, imageSizeFor } from '../../images/rootfs-build.js';
import { DEFAULT_KERNEL_NAME } from '../../kernels/catalog.js';
import type { BlobCache, PruneReport } from '../../oci/blob-cache.js';
import { defaultImageName, formatReference, parseReference } from '../../oci/reference.js';
import { RegistryClient } from '../../oci/registry.js';
import { type ImageRow, type Repos, resolveRef } from '../../store/repos.js';
import { newId } from '../../util/ids.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import type { KernelService } from './kernels.js';
import { publishStaged } from './publish.js';

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
    if (
      await lstat(join(tree, p)).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

/** The `software` column as an object; anything malformed reads as none (it is our own JSON, bounded by the lock check). */
function parseSoftware(text: string | undefined): Record<string, string> {
  if (!text) return {};
  try {
    const v = JSON.parse(text) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) return {};
    return Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return {};
  }
}

export interface ImageServiceOptions {
  /** Config `image_catalogs`. */
  catalogs?: string[];
  /** Config `debian_mirror`: where image recipes install from. */
  debianMirror: string;
}

interface Workspace {
  staging: string;
  rootfs: string;
}

async function readBundleManifest(path: string, name: string) {
  const present = await lstat(path).then(
    () => true,
    () => false,
  );
  const text = present ? (await readRegularNoFollow(path, 64 * 1024, `manifest.json of the ${name} bundle`)).toString('utf8') : undefined;
  if (text === undefined)
    throw new BangerError('rejected_content', `bundle of ${name} has no manifest.json`, { fix: 'a bundle is a .tar.zst of rootfs.ext4 and manifest.json' });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new BangerError('rejected_content', `manifest.json of the ${name} bundle is not valid JSON`);
  }
  const r = BundleManifestSchema.safeParse(json);
  if (!r.success)
    throw new BangerError('rejected_content', `manifest.json of the ${name} bundle: ${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message}`);
  return r.data;
}

export interface ImageServiceDeps {
  repos: Repos;
  layout: Layout;
  clock: Clock;
  locks: KeyedMutex;
  disks: DiskTools;
  kernels: KernelService;
  blobs: BlobCache;
  runner: CommandRunner;
  scratch: ScratchSpace;
  options: ImageServiceOptions;
}

export class ImageService {
  private readonly repos: Repos;
  private readonly layout: Layout;
  private readonly clock: Clock;
  private readonly locks: KeyedMutex;
  private readonly disks: DiskTools;
  private readonly kernels: KernelService;
  private readonly blobs: BlobCache;
  private readonly runner: CommandRunner;
  private readonly scratch: ScratchSpace;
  private readonly opts: ImageServiceOptions;

  constructor(d: ImageServiceDeps) {
    ({ repos: this.repos, layout: this.layout, clock: this.clock, locks: this.locks, disks: this.disks, kernels: this.kernels } = d);
    ({ blobs: this.blobs, runner: this.runner, scratch: this.scratch, options: this.opts } = d);
  }

  /** The image catalog: built-in entries plus config `image_catalogs`. */
  catalog(signal?: AbortSignal): Promise<ImageCatalogEntry[]> {
    return loadImageCatalog(this.opts.catalogs ?? [], dirname(this.layout.configFile), signal);
  }

  async catalogList(): Promise<ImageCatalogList> {
    const entries = await this.catalog();
    return {
      images: entries.map((e) => ({
        name: e.name,
        description: e.description,
        kernel: e.kernel,
        kind: e.source.kind,
        source:
          e.source.kind === 'recipe'
            ? `mmdebstrap ${e.source.suite} ${e.source.variant}${e.source.packages.length ? ` +${e.source.packages.length} packages` : ''}${e.source.npm ? ' + npm packages' : ''}`
            : e.source.kind === 'bundle'
              ? displayUrl(e.source.url)
              : e.source.ref,
        pulled: !!this.repos.images.byName(e.name),
      })),
    };
  }

  /** The kernel for a new image: an installed one by name or id, else pulled from the kernel catalog. */
  private async kernelFor(ref: string, ctx: OpContext): Promise<string> {
    const installed = this.repos.kernels.byName(ref);
    if (installed) return installed.id;
    const known = (await this.kernels.catalogEntries(ctx.signal)).some((e) => e.entry.name === ref);
    if (!known) return this.kernels.row(ref).id;
    ctx.stage('pull kernel', `${ref} (first use)`);
    return (await this.kernels.pull(ref, {}, ctx)).id;
  }

  /**
   * Saves a stopped VM's root disk as a new managed image, flattened to a raw ext4 (a qcow2 overlay
   * is converted with its base folded in). The guest has already copied its /root into it: the host
   * never reads files out of a filesystem a guest wrote.
   */
  async saveFromVm(name: string, from: string, disks: { root: string; format: 'qcow2' | 'raw' }, ctx: OpContext): Promise<Image> {
    const base = this.row(from);
    return this.staged(name, ctx, async (w) => {
      ctx.stage('save image', name);
      if (disks.format === 'qcow2') await this.runner.run('qemu-img', ['convert', '-q', '-O', 'raw', disks.root, w.rootfs], { timeoutMs: 1_800_000 });
      else await this.disks.cloneRaw(disks.root, w.rootfs);
      await this.disks.inspectExt4(w.rootfs);
      return {
        kernel_id: base.kernel_id,
        has_systemd: (await this.disks.imageHasAny(w.rootfs, SYSTEMD_PATHS)) ? 1 : 0,
        has_sshd: (await this.disks.imageHasAny(w.rootfs, SSHD_PATHS)) ? 1 : 0,
        digest: null,
        size_bytes: (await stat(w.rootfs)).size,
        source: `build:from ${base.name}`,
      };
    });
  }

  assertNameFree(name: string): void {
    if (this.repos.images.byName(name)) {
      throw new BangerError('conflict', `an image named "${name}" already exists`, { fix: `pick another name, or delete it: banger image delete ${name}` });
    }
  }

  /**
   * `image pull NAME` for a catalog entry, anything else as an OCI reference. Every path assembles
   * the image in a private staging directory and publishes it with one rename and one row; a
   * failure leaves neither.
   */
  async pull(req: ImagePullRequest, ctx: OpContext): Promise<Image> {
    const sourced = (await loadImageCatalogSourced(this.opts.catalogs ?? [], dirname(this.layout.configFile), ctx.signal)).find(
      (s) => s.entry.name === req.ref,
    );
    const entry = sourced?.entry;
    if (entry?.source.kind === 'oci')
      return this.pullOci({ ...req, ref: entry.source.ref, name: req.name ?? entry.name, kernelRef: req.kernelRef ?? entry.kernel }, ctx);
    if (sourced && entry) return this.pullEntry(entry, sourced.origin, req, ctx);
    return this.pullOci(req, ctx);
  }

  /** Pulls the image when a catalog has it and it is not installed yet (`vm create`/`vm run` on first use). */
  async ensure(name: string, ctx: OpContext): Promise<ImageRow | undefined> {
    const have = this.repos.images.byName(name);
    if (have) return have;
    const entry = (await this.catalog(ctx.signal)).find((e) => e.name === name);
    if (!entry) return undefined;
    ctx.stage('pull image', `${name} (first use: ${entry.source.kind === 'recipe' ? 'built from Debian’s mirror, a few minutes' : 'downloaded'})`);
    const img = await this.pull({ ref: name }, ctx);
    return this.repos.images.byId(img.id);
  }

  private async staged(
    name: string,
    ctx: OpContext,
    build: (w: Workspace) => Promise<Omit<ImageRow, 'id' | 'name' | 'rootfs_path' | 'managed' | 'created_at'>>,
  ): Promise<Image> {
    return this.locks.run(`image-name:${name}`, async () => {
      this.assertNameFree(name);
      const id = newId();
      const staging = join(this.layout.stagingDir, `image-${id}`);
      const finalDir = join(this.layout.imagesDir, id);
      try {
        await mkdir(staging, { recursive: true, mode: 0o700 });
        const fields = await build({ staging, rootfs: join(staging, 'rootfs.ext4') });
        ctx.checkCancelled();
        const row: ImageRow = {
          ...fields,
          id,
          name,
          rootfs_path: join(finalDir, 'rootfs.ext4'),
          managed: 1,
          created_at: this.clock.now().toISOString(),
        };
        await publishStaged({ staging, finalDir, insertRow: () => this.repos.images.insert(row), crashPointName: 'image:published' });
        return this.toImage(row);
      } finally {
        await rm(staging, { recursive: true, force: true });
      }
    });
  }

  /**
   * A recipe's own layer, assembled in `layer` (banger's directory): the npm packages of
   * `source.npm` (npm-layer.ts) and the files of `source.overlay`. Returns the pinned versions.
   */
  private async buildRecipeLayer(source: RecipeSpec, base: string, layer: string, ctx: OpContext): Promise<Record<string, string>> {
    let software: Record<string, string> = {};
    if (source.npm) {
      const dir = await realSubdir(base, source.npm.dir, 'the recipe npm directory');
      const pinned = await readPinnedLock(dir);
      ctx.stage(
        'install npm packages',
        Object.entries(pinned.software)
          .map(([n, v]) => `${n}@${v}`)
          .join(', '),
      );
      software = await buildNpmLayer(this.runner, { ...source.npm, dir }, layer, join(this.layout.cacheDir, 'npm'), ctx);
    }
    if (source.overlay) {
      ctx.stage('copy files', source.overlay);
      await copyOverlay(await realSubdir(base, source.overlay, 'the recipe overlay'), layer);
    }
    return software;
  }

  /** Turns a flattened tree into the workspace's rootfs.ext4 (its /root seeds each VM's work disk in the guest). */
  private async finishTree(w: Workspace, tree: string, ledger: RootfsLedger, sizeReq: number | undefined, ownersOnDisk: boolean, ctx: OpContext) {
    const sizeBytes = imageSizeFor(ledger, sizeReq);
    ctx.stage('build rootfs', `ext4, ${Math.round(sizeBytes / 1048576)} MiB`);
    const hasSystemd = await anyPresent(tree, SYSTEMD_PATHS);
    const hasSshd = await anyPresent(tree, SSHD_PATHS);
    const { skipped } = await buildRootfs(this.disks, { tree, out: w.rootfs, sizeBytes, ledger, ownersOnDisk, scriptPath: join(w.staging, 'fixup.debugfs') });
    for (const p of skipped) ctx.log(`warning: could not set owner or node type of /${p} (name debugfs cannot quote)`);
    await rm(tree, { recursive: true, force: true });
    await rm(join(w.staging, 'fixup.debugfs'), { force: true });
    return { sizeBytes, hasSystemd, hasSshd };
  }

  private async pullOci(req: ImagePullRequest, ctx: OpContext): Promise<Image> {
    const ref = parseReference(req.ref);
    const name = req.name ?? defaultImageName(ref);
    this.assertNameFree(name);
    const kernelId = await this.kernelFor(req.kernelRef ?? DEFAULT_KERNEL_NAME, ctx);
    return this.staged(name, ctx, async (w) => {
      const asRoot = process.getuid?.() === 0;
      const client = new RegistryClient(ref, { signal: ctx.signal });
      let tree: string | undefined;
      try {
        const flat = await fetchAndFlatten(
          client,
          this.blobs,
          {
            placeTree: async (estimate) => {
              tree = await this.scratch.make('image-tree', estimate);
              return tree;
            },
            runner: this.runner,
            chownOnDisk: asRoot,
            platform: { os: 'linux', architecture: 'amd64' },
            maxBytes: 64 * 1024 ** 3,
            maxEntries: 10_000_000,
          },
          ctx,
        );
        const t = await this.finishTree(w, flat.root, flat.ledger, req.sizeBytes, asRoot, ctx);
        return {
          kernel_id: kernelId,
          has_systemd: t.hasSystemd ? 1 : 0,
          has_sshd: t.hasSshd ? 1 : 0,
          digest: flat.manifestDigest,
          size_bytes: t.sizeBytes,
          source: `oci:${formatReference(ref)}`,
        };
      } finally {
        if (tree) await rm(tree, { recursive: true, force: true });
      }
    });
  }

  private async pullEntry(entry: ImageCatalogEntry, origin: string, req: ImagePullRequest, ctx: OpContext): Promise<Image> {
    const name = req.name ?? entry.name;
    this.assertNameFree(name);
    const kernelId = await this.kernelFor(req.kernelRef ?? entry.kernel, ctx);
    const source = entry.source;
    if (source.kind === 'recipe') {
      // Checked before the long build: a URL catalog may not name host files.
      const filesBase = source.npm || source.overlay ? recipeFilesBase(origin, entry.name) : undefined;
      return this.staged(name, ctx, async (w) => {
        const tree = await this.scratch.make('image-tree', (source.npm ? 4 : 2) * 1024 ** 3);
        let layer: string | undefined;
        try {
          const asRoot = process.getuid?.() === 0;
          const ledger = new RootfsLedger();
          ctx.stage('build image', `mmdebstrap ${source.suite} (${source.variant}${source.packages.length ? ` + ${source.packages.length} packages` : ''})`);
          await runRecipe(this.runner, source, this.opts.debianMirror, tree, ledger, asRoot, ctx);
          let software: Record<string, string> = {};
          if (filesBase) {
            layer = await this.scratch.make('recipe-layer', 2 * 1024 ** 3);
            software = await this.buildRecipeLayer(source, filesBase, layer, ctx);
            ctx.stage('apply layer', 'npm packages and files over the Debian tree');
            await applyLayer(
              packTree(layer, { name: '' }),
              { root: tree, chownOnDisk: asRoot, label: `${entry.name} recipe layer`, maxBytes: 16 * 1024 ** 3, maxEntries: 2_000_000 },
              ledger,
            );
            await rm(layer, { recursive: true, force: true });
            layer = undefined;
          }
          const t = await this.finishTree(w, tree, ledger, req.sizeBytes, asRoot, ctx);
          return {
            kernel_id: kernelId,
            has_systemd: t.hasSystemd ? 1 : 0,
            has_sshd: t.hasSshd ? 1 : 0,
            digest: null,
            size_bytes: t.sizeBytes,
            source: `catalog:${entry.name} recipe`,
            software: JSON.stringify(software),
          };
        } finally {
          if (layer) await rm(layer, { recursive: true, force: true });
          await rm(tree, { recursive: true, force: true });
        }
      });
    }
    if (source.kind !== 'bundle') throw new BangerError('internal', `unexpected catalog source ${source.kind}`);
    return this.staged(name, ctx, async (w) => {
      // Catalogs may name a bundle by absolute path too (air-gapped hosts).
      const url = isAbsolute(source.url) ? pathToFileURL(source.url).href : source.url;
      const archive = await downloadCached(
        join(this.layout.cacheDir, 'downloads'),
        { url, sha256: source.sha256, maxBytes: 64 * 1024 ** 3, signal: ctx.signal, onProgress: (n, total) => ctx.progress(n, total, 'B') },
        (cached) => ctx.stage('download bundle', cached ? `cached (${source.sha256.slice(0, 12)})` : displayUrl(source.url)),
      );
      ctx.stage('unpack bundle');
      const unpacked = join(w.staging, 'bundle');
      // A bundle is two regular files: no link in it is ever created, so none can be followed.
      await safeExtract(createReadStream(archive), {
        dest: unpacked,
        runner: this.runner,
        label: `bundle of ${entry.name}`,
        maxBytes: 256 * 1024 ** 3,
        maxEntries: 16,
        symlinks: false,
        signal: ctx.signal,
      });
      const manifest = await readBundleManifest(join(unpacked, 'manifest.json'), entry.name);
      const rootfsSt = await lstat(join(unpacked, manifest.rootfs)).catch(() => undefined);
      if (!rootfsSt?.isFile())
        throw new BangerError('rejected_content', `bundle of ${entry.name} has no regular file ${manifest.rootfs}`, {
          fix: 'the bundle is broken; check the catalog entry',
        });
      await rename(join(unpacked, manifest.rootfs), w.rootfs);
      // Bundled images carry long runs of zeros; give the space back.
      await this.runner.run('fallocate', ['--dig-holes', w.rootfs], { timeoutMs: 600_000, allowFailure: true });
      await this.disks.inspectExt4(w.rootfs);
      await rm(unpacked, { recursive: true, force: true });
      return {
        kernel_id: kernelId,
        has_systemd: (await this.disks.imageHasAny(w.rootfs, SYSTEMD_PATHS)) ? 1 : 0,
        has_sshd: (await this.disks.imageHasAny(w.rootfs, SSHD_PATHS)) ? 1 : 0,
        digest: `sha256:${source.sha256}`,
        size_bytes: (await stat(w.rootfs)).size,
        source: `catalog:${entry.name} bundle`,
      };
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
      managed: !!r.managed,
      hasSystemd: !!r.has_systemd,
      hasSshd: !!r.has_sshd,
      digest: r.digest,
      sizeBytes: r.size_bytes,
      source: r.source,
      createdAt: r.created_at,
      software: parseSoftware(r.software),
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
   * copy-on-write overlays). Nothing is copied out of it: its /root seeds each VM's work disk
   * inside the guest.
   */
  async register(req: RegisterImageRequest, ctx: OpContext): Promise<Image> {
    return this.locks.run(`image-name:${req.name}`, async () => {
      this.assertNameFree(req.name);
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

      try {
        ctx.checkCancelled();
        const row: ImageRow = {
          id: newId(),
          name: req.name,
          rootfs_path: rootfs,
          kernel_id: kernelId,
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
        if (createdKernel) await this.kernels.remove(createdKernel, false).catch(() => {});
        throw e;
      }
    });
  }

  /** Deletes every image that boots the kernel (each refused while VMs use it). */
  async removeAllForKernel(kernelId: string): Promise<string[]> {
    const names: string[] = [];
    for (const img of this.repos.images.all().filter((i) => i.kernel_id === kernelId)) names.push(await this.remove(img.id));
    return names;
  }

  async remove(ref: string): Promise<string> {
    const img = this.row(ref);
    return this.locks.run(`image:${img.id}`, async () => {
      const users = this.repos.images.vmNames(img.id);
      if (users.length > 0) {
        throw new BangerError('conflict', `image "${img.name}" is used by ${users.length} VM(s): ${users.join(', ')}`, {
          fix: `delete those VMs first: banger vm delete ${users.join(' ')}`,
        });
      }
      // A snapshot's frozen root layer is a qcow2 over this image's rootfs (docs/snapshots.md).
      const snapshots = this.repos.snapshots
        .all()
        .filter((sn) => sn.image_id === img.id)
        .map((sn) => sn.name);
      if (snapshots.length > 0) {
        throw new BangerError('conflict', `image "${img.name}" has ${snapshots.length} snapshot(s): ${snapshots.join(', ')}`, {
          fix: `delete them first: banger snapshot delete ${snapshots.join(' ')}`,
        });
      }
      this.repos.images.delete(img.id);
      await rm(join(this.layout.imagesDir, img.id), { recursive: true, force: true });
      if (img.managed) await rm(img.rootfs_path, { force: true });
      return img.name;
    });
  }
}
