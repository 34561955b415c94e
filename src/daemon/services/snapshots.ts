import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BangerError, toBangerError } from '../../api/errors.js';
import type { Image, Snapshot, SnapshotManifest, Vm, VmForkResult } from '../../api/schemas.js';
import type { Config } from '../../config/config.js';
import type { DiskLayerRow, Repos, SnapshotRow, VmRow } from '../../store/repos.js';
import { crashPoint } from '../../util/crash-point.js';
import { dnsLabelProblem, newId } from '../../util/ids.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import type { VmmDriver, VmmHandle, VmmKind } from '../../vmm/driver.js';
import type { DiskLayers } from './disk-layers.js';
import type { ImageService } from './images.js';
import { type HostResources, resolveSize } from './sizing.js';
import type { SnapshotCatalog } from './snapshot-catalog.js';
import { deviceHash, warmKey } from './snapshot-manifest.js';
import { decide } from './vm-states.js';
import type { VmService } from './vms.js';

export interface SnapshotServiceDeps {
  repos: Repos;
  snapshotsDir: string;
  config: Config;
  host: HostResources;
  clock: Clock;
  log: Logger;
  layers: DiskLayers;
  catalog: SnapshotCatalog;
  vms: VmService;
  images: Pick<ImageService, 'row' | 'toImage'>;
  driver: (kind: VmmKind) => VmmDriver;
}

interface TakeOptions {
  name: string;
  memory: boolean;
  purpose: SnapshotRow['purpose'];
  takenAt: SnapshotManifest['takenAt'];
  warmKey?: string;
}

/** How long the agent keeps filesystems frozen at most if the daemon never thaws them. */
const THAW_AFTER_MS = 15_000;

/**
 * Snapshots, fork and the warm pool (docs/snapshots.md). A snapshot is a row, a directory
 * (`state/snapshots/<id>`: manifest.json, and with memory the VMM's device state and the guest's
 * RAM) and the frozen disk layers it names. Every snapshot is recorded `creating` first: a daemon
 * that dies at any point leaves a row the next start removes with its files, never a half snapshot
 * that looks whole; the source VM, left paused, is resumed by the VM reconcile.
 */
export class SnapshotService {
  constructor(private readonly d: SnapshotServiceDeps) {}

  list(): Snapshot[] {
    return this.d.catalog.list();
  }

  show(ref: string): Snapshot {
    return this.d.catalog.toSnapshot(this.d.catalog.row(ref));
  }

  /** `vm snapshot <vm> [--name N] [--no-memory]`. */
  async take(vmRef: string, req: { name?: string | undefined; memory: boolean }, ctx: OpContext): Promise<Snapshot> {
    const vm = this.d.vms.row(vmRef);
    ctx.setTarget(vm.name);
    const name = req.name ?? this.freeName(`${vm.name}-${stamp(this.d.clock.now())}`);
    const row = await this.d.vms.withVmLock(vm.id, () => this.takeLocked(vm.id, { name, memory: req.memory, purpose: 'user', takenAt: 'running' }, ctx));
    return this.d.catalog.toSnapshot(row);
  }

  /** `snapshot delete`: refused while VMs are layered on it, unless forced (their layers stay until they go). */
  async remove(ref: string, force: boolean): Promise<string> {
    const row = this.d.catalog.row(ref);
    const dependents = this.d.catalog.dependents(row);
    if (dependents.length > 0 && !force) {
      throw new BangerError(
        'conflict',
        `snapshot ${row.name} has VMs layered on its disks: ${dependents.slice(0, 8).join(', ')}${dependents.length > 8 ? ', …' : ''}`,
        {
          fix: `delete them first, or --force (their disks keep the frozen layers they need; only the snapshot's name, memory and state go)`,
        },
      );
    }
    await this.drop(row);
    return row.name;
  }

  /**
   * `vm fork <vm> --count N`: one memory snapshot of the running source (which keeps running),
   * then N VMs restored from it at once, each re-identified before it is published. Per-clone
   * results; the transient snapshot goes at the end (the clones keep the layers they need).
   */
  async fork(vmRef: string, req: { count: number; names?: string[] | undefined }, ctx: OpContext): Promise<VmForkResult> {
    const src = this.d.vms.row(vmRef);
    ctx.setTarget(src.name);
    const verdict = decide('fork', await this.d.vms.stateOf(src), src.name);
    if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
    const names = req.names ?? this.cloneNames(src.name, req.count);
    for (const n of names) {
      const problem = dnsLabelProblem(n);
      if (problem) throw new BangerError('bad_request', `clone name "${n}" ${problem}`, { fix: 'use DNS labels such as "api-2"' });
      if (this.d.repos.vms.byName(n)) throw new BangerError('conflict', `a VM named "${n}" already exists`, { fix: 'pick other --name values' });
    }
    ctx.stage('snapshot source', src.name);
    const snap = await this.d.vms.withVmLock(src.id, () =>
      this.takeLocked(src.id, { name: this.freeName(`${src.name}-fork-${stamp(this.d.clock.now())}`), memory: true, purpose: 'fork', takenAt: 'running' }, ctx),
    );
    crashPoint('vm-fork:snapshot');
    ctx.stage('restore clones', `${names.length}`);
    try {
      const results = await Promise.all(
        names.map(async (name) => {
          try {
            const vm: Vm = await this.d.vms.create({ name, fromSnapshot: snap.id, nat: src.nat === 1, start: true, waitFor: 'ssh' }, cloneContext(ctx, name));
            return { name, ok: true, vm };
          } catch (e) {
            return { name, ok: false, error: toBangerError(e).toBody() };
          }
        }),
      );
      return { snapshot: snap.name, results };
    } finally {
      await this.drop(snap).catch((e) => this.d.log.warn({ err: e, snapshot: snap.name }, 'could not remove the fork snapshot'));
    }
  }

  /**
   * `image warm <image>`: boots a transient VM of that size, snapshots it with memory as soon as
   * its agent answers (before any file sync: no user secret lands in it), and keeps that snapshot
   * as the image's warm start for the size; older ones for the same key go.
   */
  async warm(
    imageRef: string,
    req: { vcpus?: number | undefined; memoryMib?: number | undefined; diskSizeBytes?: number | undefined },
    ctx: OpContext,
  ): Promise<Snapshot> {
    const size = resolveSize({ vcpus: req.vcpus, memoryMib: req.memoryMib, diskSizeBytes: req.diskSizeBytes }, this.d.config, this.d.host);
    const vm = await this.d.vms.create(
      { name: `warm-${newId().slice(0, 8)}`, image: imageRef, ...size, start: true, transient: true, waitFor: 'agent', cold: true },
      ctx,
    );
    try {
      const image: Image = this.d.images.toImage(this.d.images.row(vm.imageId));
      const key = warmKey({ imageId: image.id, ...size });
      ctx.stage('snapshot', 'at agent-ready');
      const row = await this.d.vms.withVmLock(vm.id, () =>
        this.takeLocked(
          vm.id,
          { name: this.freeName(`${image.name}-warm-${size.vcpus}c-${size.memoryMib}m`), memory: true, purpose: 'warm', takenAt: 'agent-ready', warmKey: key },
          ctx,
        ),
      );
      for (const old of this.d.repos.snapshots.byWarmKey(key)) if (old.id !== row.id) await this.drop(old);
      return this.d.catalog.toSnapshot(row);
    } finally {
      ctx.stage('delete warm-up VM');
      await this.d.vms.bulk('delete', [vm.id]);
    }
  }

  /**
   * At start, after the VM reconcile: snapshots cut short (`creating`) and fork snapshots (they
   * live only inside their operation) are removed with their files; then disk layers nothing
   * needs and files nothing records.
   */
  async reconcile(): Promise<void> {
    for (const row of this.d.repos.snapshots.all()) {
      if (row.state === 'ready' && row.purpose !== 'fork') continue;
      this.d.log.warn({ snapshot: row.name, state: row.state, purpose: row.purpose }, 'removing a snapshot left by an unfinished operation');
      await this.drop(row);
    }
    await this.d.layers.sweepUnrecorded();
    await this.d.layers.collect();
  }

  // ---- taking a snapshot ----------------------------------------------------------------

  private async takeLocked(vmId: string, o: TakeOptions, ctx: OpContext): Promise<SnapshotRow> {
    const r = this.d.repos.vms.get(vmId);
    const state = await this.d.vms.stateOf(r);
    const verdict = decide('snapshot', state, r.name);
    if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
    if (o.memory && state === 'stopped') {
      throw new BangerError('precondition_failed', `VM ${r.name} is stopped: it has no memory to save`, {
        fix: `take a disk-only snapshot (--no-memory), or start it first`,
      });
    }
    if (this.d.repos.snapshots.byName(o.name)) throw new BangerError('conflict', `a snapshot named "${o.name}" already exists`, { fix: 'pick another --name' });
    const driver = this.d.driver(r.vmm as VmmKind);
    const handle = this.d.vms.handleOf(r);
    if (o.memory) this.d.vms.requireMemoryState(r, driver, 'snapshot');
    if (!r.root_layer || !r.work_layer) throw new BangerError('internal', `VM ${r.name} has no disk layers recorded`);
    const current = { root: r.root_layer, work: r.work_layer };
    const id = newId();
    const row: SnapshotRow = {
      id,
      name: o.name,
      purpose: o.purpose,
      state: 'creating',
      source_vm: r.name,
      source_vm_id: r.id,
      image_id: r.image_id,
      kernel_id: r.kernel_id,
      root_layer: null,
      work_layer: null,
      has_memory: o.memory ? 1 : 0,
      dir: join(this.d.snapshotsDir, id),
      manifest: '{}',
      warm_key: o.warmKey ?? null,
      size_bytes: 0,
      created_at: this.d.clock.now().toISOString(),
    };
    // Recorded first: whatever happens next, a restart finds it `creating` and removes it.
    this.d.repos.snapshots.insert(row);
    const files = this.d.catalog.files(row);
    const live = state === 'running' || state === 'paused';
    const wasRunning = state === 'running';
    let paused = false;
    let frozenFs: string[] = [];
    let saved = { stateBytes: 0, memoryBytes: 0 };
    try {
      await mkdir(row.dir, { mode: 0o700 });
      if (!o.memory && wasRunning) {
        // Disk-only: the guest's filesystems are made consistent and held still for the switch.
        ctx.stage('freeze filesystems');
        frozenFs = ['/root', '/'];
        await this.d.vms.agentLink(r.id).freezeFilesystems(frozenFs, THAW_AFTER_MS, 20_000);
      }
      if (live && wasRunning) {
        ctx.stage('pause vCPUs');
        await driver.pause(handle as VmmHandle);
        paused = true;
      }
      if (o.memory) {
        ctx.stage('save state', 'device state and RAM');
        saved = await driver.saveState(handle as VmmHandle, files);
      }
      crashPoint('snapshot:saved');
      ctx.stage('freeze disk layers');
      const frozen = await this.freezeLayers(r, current, live ? (handle as VmmHandle) : undefined, driver);
      this.d.repos.snapshots.update(id, { root_layer: frozen.root, work_layer: frozen.work });
      crashPoint('snapshot:layers');
    } catch (e) {
      await this.drop(this.d.repos.snapshots.byId(id) ?? row).catch(() => {});
      throw e;
    } finally {
      if (frozenFs.length)
        await this.d.vms
          .agentLink(r.id)
          .thawFilesystems(frozenFs, 20_000)
          .catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'thaw failed (the agent thaws by itself)'));
      if (paused) {
        await driver.resume(handle as VmmHandle).catch((e) => this.d.log.error({ err: e, vm: r.name }, 'could not resume the VM after its snapshot'));
        // Its clock stood still while it was paused.
        await this.d.vms.setGuestClock(this.d.vms.agentLink(r.id)).catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'clock not set after the snapshot'));
      }
    }
    const target = await this.d.catalog.target(r.vmm as VmmKind, r.image_id);
    const kernel = this.d.repos.kernels.byId(r.kernel_id);
    const image = this.d.repos.images.byId(r.image_id);
    const manifest: SnapshotManifest = {
      format: 1,
      vmm: r.vmm,
      vmmVersion: target.vmmVersion,
      deviceHash: deviceHash({ vmm: r.vmm, vcpus: r.vcpus, memoryMib: r.memory_mib }),
      kernelId: r.kernel_id,
      kernelName: kernel?.name ?? '?',
      imageId: r.image_id,
      imageName: image?.name ?? '?',
      agentHash: target.agentHash,
      vcpus: r.vcpus,
      memoryMib: r.memory_mib,
      diskSizeBytes: r.disk_size_bytes,
      memory: o.memory,
      stateBytes: saved.stateBytes,
      memoryBytes: saved.memoryBytes,
      sourceVm: r.name,
      generation: r.generation,
      takenAt: o.takenAt,
    };
    const layerBytes = await this.layerBytes(this.d.repos.snapshots.get(id));
    await writeFile(join(row.dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    this.d.repos.snapshots.update(id, { state: 'ready', manifest: JSON.stringify(manifest), size_bytes: saved.stateBytes + saved.memoryBytes + layerBytes });
    ctx.log(`snapshot ${o.name}: ${saved.stateBytes} bytes of device state, ${saved.memoryBytes} bytes of RAM, ${layerBytes} bytes in frozen disk layers`);
    return this.d.repos.snapshots.get(id);
  }

  /**
   * Freezes a VM's current disk tops for a snapshot and returns them. qcow2 chains: new tops over
   * the current ones are recorded for the VM first, then (live) the VMM switches to them — so at
   * every instant the recorded chain holds everything written (an unswitched VMM writes into the
   * parent of an empty overlay). Raw disks (Firecracker): whole copies of the paused VM's disks.
   */
  private async freezeLayers(
    r: VmRow,
    current: { root: string; work: string },
    handle: VmmHandle | undefined,
    driver: VmmDriver,
  ): Promise<{ root: string; work: string }> {
    if (driver.rootDiskFormat === 'raw') return this.d.layers.copyTops(current);
    const { rows, tops } = await this.d.layers.prepareSwitch(current);
    this.d.repos.tx(() => {
      for (const l of rows) this.d.repos.layers.insert(l);
      this.d.repos.vms.update(r.id, { root_layer: tops.root, work_layer: tops.work });
    });
    if (handle) {
      if (!driver.switchDiskLayers) throw new BangerError('internal', `${driver.kind} cannot switch disk layers`);
      // On failure nothing is undone: whether QEMU switched or not (a QMP call that timed out may
      // still have), the recorded chain holds every write — an unswitched VMM writes the parent of
      // an empty overlay, which reads through. The snapshot is dropped by the caller, so nothing
      // treats the parent as frozen; the new files stay, since QEMU may have them open.
      await driver.switchDiskLayers(handle, [
        { driveId: 'root', path: (rows[0] as DiskLayerRow).path },
        { driveId: 'work', path: (rows[1] as DiskLayerRow).path },
      ]);
    }
    return current;
  }

  private async layerBytes(row: SnapshotRow): Promise<number> {
    let n = 0;
    for (const id of [row.root_layer, row.work_layer]) {
      const l = id ? this.d.repos.layers.byId(id) : undefined;
      if (l) n += (await stat(l.path).catch(() => ({ blocks: 0 }))).blocks * 512;
    }
    return n;
  }

  /** Removes a snapshot's row and directory, then the layers only it kept. */
  private async drop(row: SnapshotRow): Promise<void> {
    this.d.repos.snapshots.delete(row.id);
    await rm(row.dir, { recursive: true, force: true });
    await this.d.layers.collect();
  }

  private freeName(base: string): string {
    let name = base.slice(0, 63);
    for (let k = 2; this.d.repos.snapshots.byName(name); k++) name = `${base.slice(0, 58)}-${k}`;
    return name;
  }

  private cloneNames(source: string, count: number): string[] {
    const names: string[] = [];
    for (let k = 1; names.length < count; k++) {
      const n = `${source.slice(0, 50)}-fork-${k}`;
      if (!this.d.repos.vms.byName(n)) names.push(n);
    }
    return names;
  }
}

/** 20261202-093512 */
function stamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace('T', '-').replace(/\..*$/, '');
}

/** One clone's view of the fork operation: its stages and lines go to the log, prefixed. */
function cloneContext(ctx: OpContext, name: string): OpContext {
  return {
    id: ctx.id,
    signal: ctx.signal,
    stage: (stage, detail) => ctx.log(`${name}: ${stage}${detail ? ` (${detail})` : ''}`),
    progress: () => {},
    log: (line) => ctx.log(`${name}: ${line}`),
    setTarget: () => {},
    checkCancelled: () => ctx.checkCancelled(),
  };
}
