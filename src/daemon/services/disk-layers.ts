import { readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DiskTools } from '../../host/disks.js';
import type { DiskLayerRow, Repos, VmRow } from '../../store/repos.js';
import { newId } from '../../util/ids.js';
import type { Clock } from '../../util/op-context.js';
import { liveLayerIds } from './layer-graph.js';

export interface DiskLayersDeps {
  repos: Repos;
  layersDir: string;
  clock: Clock;
  log: Logger;
  disks: Pick<DiskTools, 'createOverlay' | 'cloneRaw' | 'mkfsFromDir'>;
}

/** The two disks of a VM, as layer ids (their tops). */
export interface VmDiskTops {
  root: string;
  work: string;
}

/**
 * Every writable disk of a VM is the top of a chain of layers in `state/layers` (docs/snapshots.md):
 * - QEMU (qcow2): root = a qcow2 over the image's rootfs; work = a qcow2 over an empty raw ext4 base.
 *   A snapshot freezes the current tops (the VMM switches to new qcow2 files over them), and a VM made
 *   from a snapshot gets new tops over the frozen ones: O(1) either way.
 * - Firecracker (raw only): every layer is a whole raw file (reflink where the host filesystem has it,
 *   else a sparse copy) without a parent.
 * Files are written before their rows (a crash leaves a file without a row, which the start-up sweep
 * removes), and a file is deleted only once no VM top, no snapshot and no child layer needs it.
 */
export class DiskLayers {
  constructor(private readonly d: DiskLayersDeps) {}

  path(id: string): string {
    return this.d.repos.layers.get(id).path;
  }

  /** The files of a new VM: root over the image's rootfs, an empty work filesystem of its final size. */
  createForVm(o: { imageRootfs: string; format: 'qcow2' | 'raw'; workSizeBytes: number; workLabel: string }): Promise<VmDiskTops> {
    return this.recordNew(async (made) => {
      const root = this.newRow(o.format, null);
      made.push(root);
      if (o.format === 'qcow2') await this.d.disks.createOverlay(o.imageRootfs, root.path);
      else await this.d.disks.cloneRaw(o.imageRootfs, root.path);
      // Empty: the guest seeds it from the image's /root at first boot (see banger-init).
      const base = this.newRow('raw', null);
      made.push(base);
      await this.d.disks.mkfsFromDir(base.path, o.workSizeBytes, undefined, o.workLabel);
      if (o.format === 'raw') return { root: root.id, work: base.id };
      const work = this.newRow('qcow2', base.id);
      made.push(work);
      await this.d.disks.createOverlay(base.path, work.path, 'raw');
      return { root: root.id, work: work.id };
    });
  }

  /**
   * New writable tops over frozen layers (a VM made from a snapshot): a thin qcow2 over each
   * (QEMU), or a whole copy of each (raw VMMs). Recorded here; the caller records them as the VM's.
   */
  newTopsOver(frozen: VmDiskTops, format: 'qcow2' | 'raw'): Promise<VmDiskTops> {
    return this.recordNew(async (made) => {
      const [root, work] = [frozen.root, frozen.work].map((id) => this.d.repos.layers.get(id));
      return { root: await this.childOf(root as DiskLayerRow, format, made), work: await this.childOf(work as DiskLayerRow, format, made) };
    });
  }

  /** Whole copies of the current tops (raw VMMs, paused VM): what a Firecracker snapshot keeps. */
  copyTops(current: VmDiskTops): Promise<VmDiskTops> {
    return this.newTopsOver(current, 'raw');
  }

  /** Rows for files a driver is about to switch to (QEMU): qcow2 tops over the current ones, created now, recorded by the caller. */
  async prepareSwitch(current: VmDiskTops): Promise<{ rows: DiskLayerRow[]; tops: VmDiskTops }> {
    const rows: DiskLayerRow[] = [];
    try {
      const [root, work] = [current.root, current.work].map((id) => this.d.repos.layers.get(id));
      const tops = { root: await this.childOf(root as DiskLayerRow, 'qcow2', rows), work: await this.childOf(work as DiskLayerRow, 'qcow2', rows) };
      return { rows, tops };
    } catch (e) {
      await this.discard(rows);
      throw e;
    }
  }

  /** A file over (qcow2) or a copy of (raw) a layer; its row goes into `made` before the file is written. */
  private async childOf(parent: DiskLayerRow, format: 'qcow2' | 'raw', made: DiskLayerRow[]): Promise<string> {
    const child = this.newRow(format, format === 'qcow2' ? parent.id : null);
    made.push(child);
    if (format === 'qcow2') await this.d.disks.createOverlay(parent.path, child.path, parent.format);
    else await this.d.disks.cloneRaw(parent.path, child.path);
    return child.id;
  }

  /**
   * Makes layer files through `make` (each row pushed to `made` before its file is written), then
   * records them all in one transaction. A failure removes every file made: nothing half-recorded.
   */
  private async recordNew<T>(make: (made: DiskLayerRow[]) => Promise<T>): Promise<T> {
    const made: DiskLayerRow[] = [];
    try {
      const result = await make(made);
      this.d.repos.tx(() => {
        for (const l of made) this.d.repos.layers.insert(l);
      });
      return result;
    } catch (e) {
      await this.discard(made);
      throw e;
    }
  }

  /** Removes a file prepared but never recorded (a failed switch). */
  async discard(rows: DiskLayerRow[]): Promise<void> {
    for (const r of rows) await rm(r.path, { force: true });
  }

  /**
   * Deletes every layer no VM top, no snapshot and no live layer's chain needs: rows children
   * first, then files. Returns how many went.
   */
  async collect(): Promise<number> {
    const all = this.d.repos.layers.all();
    const live = liveLayerIds(
      all,
      this.d.repos.vms.all().flatMap((v) => [v.root_layer, v.work_layer]),
      this.d.repos.snapshots.all().flatMap((s) => [s.root_layer, s.work_layer]),
    );
    const dead = all.filter((l) => !live.has(l.id));
    // Children before parents (the foreign key refuses otherwise).
    const depth = (l: DiskLayerRow): number => {
      let n = 0;
      for (let p = l.parent_id; p; p = all.find((x) => x.id === p)?.parent_id ?? null) n++;
      return n;
    };
    dead.sort((a, b) => depth(b) - depth(a));
    this.d.repos.tx(() => {
      for (const l of dead) this.d.repos.layers.delete(l.id);
    });
    for (const l of dead) await rm(l.path, { force: true });
    return dead.length;
  }

  /** At start: files in the layers directory that no row names (a crash between file and row). */
  async sweepUnrecorded(): Promise<void> {
    const known = new Set(this.d.repos.layers.all().map((l) => l.path));
    for (const name of await readdir(this.d.layersDir).catch(() => [] as string[])) {
      const p = join(this.d.layersDir, name);
      if (known.has(p)) continue;
      this.d.log.warn({ path: p }, 'removing a disk layer no row records (left by an interrupted operation)');
      await rm(p, { force: true });
    }
  }

  /**
   * Rows written before layers existed keep their disks in the VM directory (root.qcow2 or
   * root.ext4, and a raw work.ext4): moved into the layer store once, at start. Idempotent: a
   * crash between the rename and the row leaves the file at its new name, which is adopted then.
   */
  async adoptLegacy(r: VmRow, rootFormat: 'qcow2' | 'raw'): Promise<VmDiskTops> {
    const now = this.d.clock.now().toISOString();
    const rootRow: DiskLayerRow = {
      id: `${r.id}-root`,
      path: join(this.d.layersDir, `${r.id}-root.${rootFormat === 'qcow2' ? 'qcow2' : 'ext4'}`),
      format: rootFormat,
      parent_id: null,
      created_at: now,
    };
    const workRow: DiskLayerRow = { id: `${r.id}-work`, path: join(this.d.layersDir, `${r.id}-work.ext4`), format: 'raw', parent_id: null, created_at: now };
    const moves: Array<[string, string]> = [
      [join(r.dir, rootFormat === 'qcow2' ? 'root.qcow2' : 'root.ext4'), rootRow.path],
      [join(r.dir, 'work.ext4'), workRow.path],
    ];
    for (const [from, to] of moves) {
      await rename(from, to).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
    this.d.repos.tx(() => {
      for (const row of [rootRow, workRow]) if (!this.d.repos.layers.byId(row.id)) this.d.repos.layers.insert(row);
      this.d.repos.vms.update(r.id, { root_layer: rootRow.id, work_layer: workRow.id });
    });
    return { root: rootRow.id, work: workRow.id };
  }

  private newRow(format: 'qcow2' | 'raw', parentId: string | null): DiskLayerRow {
    const id = newId();
    return {
      id,
      path: join(this.d.layersDir, `${id}.${format === 'qcow2' ? 'qcow2' : 'ext4'}`),
      format,
      parent_id: parentId,
      created_at: this.d.clock.now().toISOString(),
    };
  }
}
