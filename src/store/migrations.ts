/**
 * Numbered, append-only migrations. PRAGMA user_version records the last applied one.
 * Never edit a released migration: add a new one.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'kernels, images, vms',
    sql: `
      CREATE TABLE kernels (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version TEXT NOT NULL,
        dir TEXT NOT NULL,
        kernel_path TEXT NOT NULL,
        initrd_path TEXT,
        modules_dir TEXT,
        source TEXT NOT NULL,
        managed INTEGER NOT NULL DEFAULT 1,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
      );
      CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        rootfs_path TEXT NOT NULL,
        kernel_id TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
        work_seed_path TEXT,
        managed INTEGER NOT NULL DEFAULT 0,
        has_systemd INTEGER NOT NULL DEFAULT 1,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
        kernel_id TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
        vcpus INTEGER NOT NULL CHECK (vcpus > 0),
        memory_mib INTEGER NOT NULL CHECK (memory_mib >= 128),
        disk_size_bytes INTEGER NOT NULL CHECK (disk_size_bytes > 0),
        vmm TEXT NOT NULL,
        accel TEXT,
        state TEXT NOT NULL,
        handle TEXT,
        last_error TEXT,
        dir TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        touched_at TEXT NOT NULL
      );
      CREATE INDEX vms_image ON vms(image_id);
    `,
  },
  {
    version: 2,
    name: 'ip leases, per-VM NAT and TAP',
    sql: `
      CREATE TABLE ip_leases (
        vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
        ip TEXT NOT NULL UNIQUE,
        mac TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
      );
      ALTER TABLE vms ADD COLUMN nat INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1));
      ALTER TABLE vms ADD COLUMN tap TEXT;
    `,
  },
  {
    version: 3,
    name: 'image provenance and sshd presence',
    sql: `
      ALTER TABLE images ADD COLUMN has_sshd INTEGER NOT NULL DEFAULT 1 CHECK (has_sshd IN (0, 1));
      ALTER TABLE images ADD COLUMN digest TEXT;
    `,
  },
  {
    version: 4,
    // The host no longer copies a tree out of an image (a filesystem someone else wrote): the
    // guest seeds its work disk from the image's own /root at first boot.
    name: 'no host-side work seed',
    sql: `
      ALTER TABLE images DROP COLUMN work_seed_path;
    `,
  },
  {
    version: 5,
    // A VM that only lives inside one operation (the VM of an image build): a daemon that died
    // during that operation deletes it at its next start instead of adopting it.
    name: 'transient VMs',
    sql: `
      ALTER TABLE vms ADD COLUMN transient INTEGER NOT NULL DEFAULT 0 CHECK (transient IN (0, 1));
    `,
  },
  {
    version: 6,
    // The git workspace prepared in a VM (docs/workspaces.md): where it came from and the commit
    // the guest's work is measured from. One per VM; gone with the VM.
    name: 'workspaces',
    sql: `
      CREATE TABLE workspaces (
        vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
        host_path TEXT NOT NULL,
        guest_path TEXT NOT NULL,
        base_commit TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('full', 'shallow')),
        branch TEXT,
        prepared_at TEXT NOT NULL
      );
    `,
  },
  {
    version: 7,
    // Warm start (docs/snapshots.md): every writable disk is a chain of layers; a snapshot freezes
    // the current tops and new VMs or clones get thin layers over them. A layer's file is deleted
    // only once no VM top, no snapshot and no child layer needs it.
    name: 'disk layers and snapshots',
    sql: `
      CREATE TABLE disk_layers (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        format TEXT NOT NULL CHECK (format IN ('qcow2', 'raw')),
        parent_id TEXT REFERENCES disk_layers(id) ON DELETE RESTRICT,
        created_at TEXT NOT NULL
      );
      ALTER TABLE vms ADD COLUMN root_layer TEXT REFERENCES disk_layers(id);
      ALTER TABLE vms ADD COLUMN work_layer TEXT REFERENCES disk_layers(id);
      ALTER TABLE vms ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE vms ADD COLUMN unpublished INTEGER NOT NULL DEFAULT 0 CHECK (unpublished IN (0, 1));
      CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        purpose TEXT NOT NULL CHECK (purpose IN ('user', 'warm', 'fork')),
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready')),
        source_vm TEXT NOT NULL,
        source_vm_id TEXT,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
        kernel_id TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
        root_layer TEXT REFERENCES disk_layers(id),
        work_layer TEXT REFERENCES disk_layers(id),
        has_memory INTEGER NOT NULL CHECK (has_memory IN (0, 1)),
        dir TEXT NOT NULL,
        manifest TEXT NOT NULL,
        warm_key TEXT,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
      );
      CREATE INDEX snapshots_warm ON snapshots(warm_key);
    `,
  },
  {
    version: 8,
    // What a recipe image installed at pinned versions (e.g. Node.js and the coding agents of
    // debian-bookworm-agents), as a JSON object package → version; shown by `image show`.
    name: 'image software',
    sql: `ALTER TABLE images ADD COLUMN software TEXT NOT NULL DEFAULT '{}';`,
  },
];

export const LATEST_VERSION = MIGRATIONS.reduce((m, x) => Math.max(m, x.version), 0);
