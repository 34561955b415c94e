import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, notFound } from '../../api/errors.js';
import { type Snapshot, type SnapshotManifest, SnapshotManifestSchema } from '../../api/schemas.js';
import { guestBinary } from '../../guest/binaries.js';
import { type Repos, resolveRef, type SnapshotRow } from '../../store/repos.js';
import type { VmmKind } from '../../vmm/driver.js';
import { chainOf } from './layer-graph.js';
import { describeIncompatibility, incompatibility, type RestoreTarget, warmKey } from './snapshot-manifest.js';

export interface SnapshotFiles {
  statePath: string;
  memoryPath: string;
}

/** A snapshot a create can start from: its row, its parsed manifest, its state files. */
export interface SnapshotSource {
  row: SnapshotRow;
  manifest: SnapshotManifest;
  files: SnapshotFiles;
}

export interface SnapshotCatalogDeps {
  repos: Repos;
  /** The version string of a VMM binary (`qemu-system-x86_64 --version`), asked once per daemon. */
  vmmVersion: (kind: VmmKind) => Promise<string>;
  /** The agent binary restored guests must already run (default: banger's own). */
  agentBinaryPath?: string;
}

/**
 * Reading snapshots: lookup by name or id prefix, the API view (with the VMs layered on each),
 * and the compatibility check every restore goes through (a manifest that differs from what a
 * restore here would run is refused with `snapshot_incompatible`, or skipped by the warm pool).
 */
export class SnapshotCatalog {
  private agentHashMemo: Promise<string> | undefined;
  private readonly versions = new Map<VmmKind, Promise<string>>();

  constructor(private readonly d: SnapshotCatalogDeps) {}

  row(ref: string): SnapshotRow {
    const r = resolveRef(ref, this.d.repos.snapshots.byName, this.d.repos.snapshots.byIdPrefix);
    if (r === 'ambiguous')
      throw new BangerError('bad_request', `snapshot ref "${ref}" matches several snapshots`, { fix: 'use the name or a longer id prefix' });
    // A snapshot still `creating` is not one yet.
    if (r?.state === 'ready') return r;
    throw notFound('snapshot', ref);
  }

  manifest(r: SnapshotRow): SnapshotManifest {
    return SnapshotManifestSchema.parse(JSON.parse(r.manifest));
  }

  files(r: SnapshotRow): SnapshotFiles {
    return { statePath: join(r.dir, 'state.bin'), memoryPath: join(r.dir, 'memory.bin') };
  }

  /**
   * Names of the VMs made from this snapshot (their disks are layered on its layers). The VM it was
   * taken of is not one: its newer layers sit on the snapshot's, but it never needed the snapshot.
   */
  dependents(r: SnapshotRow): string[] {
    const layers = this.d.repos.layers.all();
    const mine = new Set([r.root_layer, r.work_layer].filter((x): x is string => !!x));
    return this.d.repos.vms
      .all()
      .filter((v) => v.id !== r.source_vm_id)
      .filter((v) => [v.root_layer, v.work_layer].some((top) => top && chainOf(layers, top).some((id) => mine.has(id))))
      .map((v) => v.name);
  }

  toSnapshot(r: SnapshotRow): Snapshot {
    const manifest = this.manifest(r);
    return {
      id: r.id,
      name: r.name,
      purpose: r.purpose,
      sourceVm: r.source_vm,
      imageName: this.d.repos.images.byId(r.image_id)?.name ?? '?',
      hasMemory: r.has_memory === 1,
      sizeBytes: r.size_bytes,
      manifest,
      dependents: this.dependents(r),
      createdAt: r.created_at,
    };
  }

  list(): Snapshot[] {
    return this.d.repos.snapshots
      .all()
      .filter((r) => r.state === 'ready')
      .map((r) => this.toSnapshot(r));
  }

  /** What a restore here would run with. */
  async target(vmm: VmmKind, imageId: string): Promise<RestoreTarget> {
    this.agentHashMemo ??= readFile(this.d.agentBinaryPath ?? guestBinary('banger-agent')).then((b) => createHash('sha256').update(b).digest('hex'));
    let version = this.versions.get(vmm);
    if (!version) {
      version = this.d.vmmVersion(vmm);
      this.versions.set(vmm, version);
    }
    return { vmm, vmmVersion: await version, agentHash: await this.agentHashMemo, kernelId: this.d.repos.images.byId(imageId)?.kernel_id ?? '?' };
  }

  /** `vm create --from-snapshot`: the snapshot, refused with `snapshot_incompatible` naming the field that differs. */
  async forCreate(ref: string, vmm: VmmKind): Promise<SnapshotSource> {
    const row = this.row(ref);
    const manifest = this.manifest(row);
    if (manifest.memory) {
      const bad = incompatibility(manifest, await this.target(vmm, row.image_id));
      if (bad) {
        throw new BangerError('snapshot_incompatible', `snapshot ${row.name} cannot be restored here: ${describeIncompatibility(bad)}`, {
          fix: 'take a new snapshot with this banger, VMM and kernel (or create from the image)',
          details: { field: bad.field, snapshot: bad.snapshot, here: bad.here },
        });
      }
    } else if (manifest.vmm !== vmm) {
      throw new BangerError('snapshot_incompatible', `snapshot ${row.name} was taken under ${manifest.vmm}, this daemon runs ${vmm}`, {
        fix: 'create from the image instead',
        details: { field: 'vmm', snapshot: manifest.vmm, here: vmm },
      });
    }
    return { row, manifest, files: this.files(row) };
  }

  /** The newest warm snapshot for an image and size that a restore here accepts; every skipped one is said why. */
  async warmFor(
    o: { imageId: string; vcpus: number; memoryMib: number; diskSizeBytes: number },
    vmm: VmmKind,
    say: (line: string) => void,
  ): Promise<SnapshotSource | undefined> {
    const candidates = this.d.repos.snapshots.byWarmKey(warmKey(o));
    if (candidates.length === 0) return undefined;
    const target = await this.target(vmm, o.imageId);
    for (const row of candidates) {
      const manifest = this.manifest(row);
      const bad = incompatibility(manifest, target);
      if (!bad) return { row, manifest, files: this.files(row) };
      say(`warm snapshot ${row.name} not used: ${describeIncompatibility(bad)}; booting cold (banger image warm refreshes it)`);
    }
    return undefined;
  }
}
