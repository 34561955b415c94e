import { BangerError } from '../api/errors.js';
import type { Db } from './db.js';

export interface KernelRow {
  id: string;
  name: string;
  version: string;
  dir: string;
  kernel_path: string;
  /** banger's own initramfs (modules + banger-init) or a user-supplied initrd. */
  initrd_path: string | null;
  modules_dir: string | null;
  source: string;
  managed: number;
  size_bytes: number;
  created_at: string;
}

export interface ImageRow {
  id: string;
  name: string;
  rootfs_path: string;
  kernel_id: string;
  managed: number;
  has_systemd: number;
  has_sshd: number;
  digest: string | null;
  size_bytes: number;
  source: string;
  created_at: string;
  /** JSON object package → version (migration 8); '{}' for images that record none. */
  software?: string;
}

export interface VmRow {
  id: string;
  name: string;
  image_id: string;
  kernel_id: string;
  vcpus: number;
  memory_mib: number;
  disk_size_bytes: number;
  vmm: string;
  accel: string | null;
  state: string;
  handle: string | null;
  last_error: string | null;
  dir: string;
  created_at: string;
  started_at: string | null;
  touched_at: string;
  /** 1 when the VM may reach beyond the host through NAT (opt-in). */
  nat: number;
  /** The TAP device while the VM runs. */
  tap: string | null;
  /** 1 for a VM that lives only inside one operation (an image build's VM); deleted at daemon start. */
  transient: number;
  /** The top (writable) layers of its disks; null only for rows written before layers existed (adopted at start). */
  root_layer: string | null;
  work_layer: string | null;
  /** Bumped at every re-identification (restore, clone): the guest's /run/banger/generation. */
  generation: number;
  /** 1 while a VM made from a snapshot is not yet re-identified and published: a daemon start deletes it. */
  unpublished: number;
}

export interface DiskLayerRow {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  /** The layer below (null: the bottom of the chain; a root chain's bottom is the image's rootfs). */
  parent_id: string | null;
  created_at: string;
}

export interface SnapshotRow {
  id: string;
  name: string;
  purpose: 'user' | 'warm' | 'fork';
  state: 'creating' | 'ready';
  source_vm: string;
  /** The VM it was taken of (its own disks sit on the snapshot's layers, which does not make it a dependent). */
  source_vm_id: string | null;
  image_id: string;
  kernel_id: string;
  root_layer: string | null;
  work_layer: string | null;
  has_memory: number;
  dir: string;
  /** JSON of SnapshotManifest. */
  manifest: string;
  /** image id + size, for warm snapshots (image warm). */
  warm_key: string | null;
  size_bytes: number;
  created_at: string;
}

export interface WorkspaceRow {
  vm_id: string;
  host_path: string;
  guest_path: string;
  base_commit: string;
  mode: string;
  branch: string | null;
  prepared_at: string;
}

/** Thin typed access to the tables. All writes are single statements or explicit transactions. */
export class Repos {
  constructor(readonly db: Db) {}

  kernels = {
    all: () => this.db.prepare('SELECT * FROM kernels ORDER BY name').all() as KernelRow[],
    byId: (id: string) => this.db.prepare('SELECT * FROM kernels WHERE id = ?').get(id) as KernelRow | undefined,
    byName: (name: string) => this.db.prepare('SELECT * FROM kernels WHERE name = ?').get(name) as KernelRow | undefined,
    byIdPrefix: (p: string) => this.db.prepare("SELECT * FROM kernels WHERE id LIKE ? || '%'").all(p) as KernelRow[],
    insert: (r: KernelRow) =>
      this.db
        .prepare(
          'INSERT INTO kernels (id, name, version, dir, kernel_path, initrd_path, modules_dir, source, managed, size_bytes, created_at) VALUES (@id, @name, @version, @dir, @kernel_path, @initrd_path, @modules_dir, @source, @managed, @size_bytes, @created_at)',
        )
        .run(r),
    delete: (id: string) => this.db.prepare('DELETE FROM kernels WHERE id = ?').run(id),
    imageCount: (id: string) => (this.db.prepare('SELECT count(*) AS n FROM images WHERE kernel_id = ?').get(id) as { n: number }).n,
  };

  images = {
    all: () => this.db.prepare('SELECT * FROM images ORDER BY name').all() as ImageRow[],
    byId: (id: string) => this.db.prepare('SELECT * FROM images WHERE id = ?').get(id) as ImageRow | undefined,
    byName: (name: string) => this.db.prepare('SELECT * FROM images WHERE name = ?').get(name) as ImageRow | undefined,
    byIdPrefix: (p: string) => this.db.prepare("SELECT * FROM images WHERE id LIKE ? || '%'").all(p) as ImageRow[],
    promote: (id: string, rootfsPath: string, size: number) =>
      this.db.prepare('UPDATE images SET rootfs_path = ?, managed = 1, size_bytes = ? WHERE id = ?').run(rootfsPath, size, id),
    insert: (r: ImageRow) =>
      this.db
        .prepare(
          'INSERT INTO images (id, name, rootfs_path, kernel_id, managed, has_systemd, has_sshd, digest, size_bytes, source, created_at, software) VALUES (@id, @name, @rootfs_path, @kernel_id, @managed, @has_systemd, @has_sshd, @digest, @size_bytes, @source, @created_at, @software)',
        )
        .run({ ...r, software: r.software ?? '{}' }),
    delete: (id: string) => this.db.prepare('DELETE FROM images WHERE id = ?').run(id),
    vmNames: (id: string) => (this.db.prepare('SELECT name FROM vms WHERE image_id = ? ORDER BY name').all(id) as Array<{ name: string }>).map((r) => r.name),
  };

  vms = {
    all: () => this.db.prepare('SELECT * FROM vms ORDER BY created_at, name').all() as VmRow[],
    byId: (id: string) => this.db.prepare('SELECT * FROM vms WHERE id = ?').get(id) as VmRow | undefined,
    /** A row that must exist (the caller holds its lock): a missing one is an internal error. */
    get: (id: string): VmRow => {
      const r = this.db.prepare('SELECT * FROM vms WHERE id = ?').get(id) as VmRow | undefined;
      if (!r) throw new BangerError('internal', `VM ${id} vanished from the store`);
      return r;
    },
    byName: (name: string) => this.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as VmRow | undefined,
    byIdPrefix: (p: string) => this.db.prepare("SELECT * FROM vms WHERE id LIKE ? || '%'").all(p) as VmRow[],
    insert: (r: VmRow) =>
      this.db
        .prepare(
          'INSERT INTO vms (id, name, image_id, kernel_id, vcpus, memory_mib, disk_size_bytes, vmm, accel, state, handle, last_error, dir, created_at, started_at, touched_at, nat, tap, transient, root_layer, work_layer, generation, unpublished) VALUES (@id, @name, @image_id, @kernel_id, @vcpus, @memory_mib, @disk_size_bytes, @vmm, @accel, @state, @handle, @last_error, @dir, @created_at, @started_at, @touched_at, @nat, @tap, @transient, @root_layer, @work_layer, @generation, @unpublished)',
        )
        .run(r),
    update: (id: string, fields: Partial<Omit<VmRow, 'id'>>) => {
      const keys = Object.keys(fields);
      if (keys.length === 0) return;
      this.db.prepare(`UPDATE vms SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id`).run({ ...fields, id });
    },
    delete: (id: string) => this.db.prepare('DELETE FROM vms WHERE id = ?').run(id),
  };

  layers = {
    all: () => this.db.prepare('SELECT * FROM disk_layers').all() as DiskLayerRow[],
    byId: (id: string) => this.db.prepare('SELECT * FROM disk_layers WHERE id = ?').get(id) as DiskLayerRow | undefined,
    get: (id: string): DiskLayerRow => {
      const r = this.db.prepare('SELECT * FROM disk_layers WHERE id = ?').get(id) as DiskLayerRow | undefined;
      if (!r) throw new BangerError('internal', `disk layer ${id} is missing from the store`);
      return r;
    },
    insert: (r: DiskLayerRow) =>
      this.db.prepare('INSERT INTO disk_layers (id, path, format, parent_id, created_at) VALUES (@id, @path, @format, @parent_id, @created_at)').run(r),
    delete: (id: string) => this.db.prepare('DELETE FROM disk_layers WHERE id = ?').run(id),
  };

  snapshots = {
    all: () => this.db.prepare('SELECT * FROM snapshots ORDER BY created_at, name').all() as SnapshotRow[],
    byId: (id: string) => this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined,
    get: (id: string): SnapshotRow => {
      const r = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
      if (!r) throw new BangerError('internal', `snapshot ${id} vanished from the store`);
      return r;
    },
    byName: (name: string) => this.db.prepare('SELECT * FROM snapshots WHERE name = ?').get(name) as SnapshotRow | undefined,
    byIdPrefix: (p: string) => this.db.prepare("SELECT * FROM snapshots WHERE id LIKE ? || '%'").all(p) as SnapshotRow[],
    byWarmKey: (key: string) =>
      this.db.prepare("SELECT * FROM snapshots WHERE warm_key = ? AND state = 'ready' ORDER BY created_at DESC").all(key) as SnapshotRow[],
    insert: (r: SnapshotRow) =>
      this.db
        .prepare(
          'INSERT INTO snapshots (id, name, purpose, state, source_vm, source_vm_id, image_id, kernel_id, root_layer, work_layer, has_memory, dir, manifest, warm_key, size_bytes, created_at) VALUES (@id, @name, @purpose, @state, @source_vm, @source_vm_id, @image_id, @kernel_id, @root_layer, @work_layer, @has_memory, @dir, @manifest, @warm_key, @size_bytes, @created_at)',
        )
        .run(r),
    update: (id: string, fields: Partial<Omit<SnapshotRow, 'id'>>) => {
      const keys = Object.keys(fields);
      if (keys.length === 0) return;
      this.db.prepare(`UPDATE snapshots SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id`).run({ ...fields, id });
    },
    delete: (id: string) => this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id),
  };

  /** Runs fn in one IMMEDIATE transaction (every write or none). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  workspaces = {
    byVm: (vmId: string) => this.db.prepare('SELECT * FROM workspaces WHERE vm_id = ?').get(vmId) as WorkspaceRow | undefined,
    /** A new prepare replaces the VM's record. */
    upsert: (r: WorkspaceRow) =>
      this.db
        .prepare(
          'INSERT OR REPLACE INTO workspaces (vm_id, host_path, guest_path, base_commit, mode, branch, prepared_at) VALUES (@vm_id, @host_path, @guest_path, @base_commit, @mode, @branch, @prepared_at)',
        )
        .run(r),
    delete: (vmId: string) => this.db.prepare('DELETE FROM workspaces WHERE vm_id = ?').run(vmId),
  };
}

/** Resolves a user ref: exact name first, then a unique id prefix (at least 4 chars). */
export function resolveRef<T extends { id: string }>(
  ref: string,
  byName: (n: string) => T | undefined,
  byIdPrefix: (p: string) => T[],
): T | 'ambiguous' | undefined {
  const named = byName(ref);
  if (named) return named;
  if (!/^[0-9a-f]{4,32}$/.test(ref)) return undefined;
  const matches = byIdPrefix(ref);
  if (matches.length > 1) return 'ambiguous';
  return matches[0];
}
