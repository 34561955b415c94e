import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { BangerError } from '../../src/api/errors.js';
import { type Db, migrate, openDb } from '../../src/store/db.js';
import { LeaseRepo } from '../../src/store/leases.js';
import { LATEST_VERSION, MIGRATIONS } from '../../src/store/migrations.js';
import { Repos } from '../../src/store/repos.js';
import { macForIp } from '../../src/util/ipv4.js';

const dirs: string[] = [];
const dbs: Db[] = [];
after(() => {
  for (const db of dbs) if (db.open) db.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const NOW = '2025-01-01T00:00:00.000Z';
const CIDR = '172.30.0.0/24';
const GW = '172.30.0.1';

function freshDb(): { path: string; db: Db; repos: Repos } {
  const dir = mkdtempSync(join(tmpdir(), 'banger-leases-'));
  dirs.push(dir);
  const path = join(dir, 'banger.db');
  const db = openDb(path);
  dbs.push(db);
  migrate(db);
  const repos = new Repos(db);
  repos.kernels.insert({
    id: 'k1',
    name: 'k',
    version: '6.1',
    dir,
    kernel_path: join(dir, 'vmlinuz'),
    initrd_path: null,
    modules_dir: null,
    source: 'test',
    managed: 1,
    size_bytes: 0,
    created_at: NOW,
  });
  repos.images.insert({
    id: 'i1',
    name: 'img',
    rootfs_path: join(dir, 'root.ext4'),
    kernel_id: 'k1',
    managed: 0,
    has_systemd: 1,
    has_sshd: 1,
    digest: null,
    size_bytes: 0,
    source: 'test',
    created_at: NOW,
  });
  return { path, db, repos };
}

function addVm(repos: Repos, id: string): void {
  repos.vms.insert({
    id,
    name: `vm-${id}`,
    image_id: 'i1',
    kernel_id: 'k1',
    vcpus: 1,
    memory_mib: 256,
    disk_size_bytes: 1 << 30,
    vmm: 'qemu',
    accel: null,
    state: 'stopped',
    handle: null,
    last_error: null,
    dir: `/nonexistent/${id}`,
    created_at: NOW,
    started_at: null,
    touched_at: NOW,
    nat: 0,
    tap: null,
    transient: 0,
    root_layer: null,
    work_layer: null,
    generation: 0,
    unpublished: 0,
  });
}

test('migration 2: ip_leases table and vms.nat/vms.tap columns with defaults', () => {
  const { db, repos } = freshDb();
  addVm(repos, 'a');
  const row = db.prepare('SELECT nat, tap FROM vms WHERE id = ?').get('a') as { nat: number; tap: string | null };
  assert.deepEqual({ ...row }, { nat: 0, tap: null });
  assert.throws(() => db.prepare("UPDATE vms SET nat = 2 WHERE id = 'a'").run(), /CHECK/);
  const cols = (db.prepare('PRAGMA table_info(ip_leases)').all() as Array<{ name: string }>).map((c) => c.name);
  assert.deepEqual(cols, ['vm_id', 'ip', 'mac', 'created_at']);
});

test('migration 2 upgrades a version-1 store that already has VMs', () => {
  const dir = mkdtempSync(join(tmpdir(), 'banger-leases-'));
  dirs.push(dir);
  const db = openDb(join(dir, 'banger.db'));
  dbs.push(db);
  const v1 = MIGRATIONS.find((m) => m.version === 1);
  db.exec(v1?.sql ?? '');
  db.pragma('user_version = 1');
  db.exec(`INSERT INTO kernels (id, name, version, dir, kernel_path, source, created_at) VALUES ('k1', 'k', '6.1', '/k', '/k/vmlinuz', 'test', '${NOW}');
    INSERT INTO images (id, name, rootfs_path, kernel_id, source, created_at) VALUES ('i1', 'img', '/i', 'k1', 'test', '${NOW}');
    INSERT INTO vms (id, name, image_id, kernel_id, vcpus, memory_mib, disk_size_bytes, vmm, state, dir, created_at, touched_at)
      VALUES ('old', 'old', 'i1', 'k1', 1, 256, 1024, 'qemu', 'stopped', '/v', '${NOW}', '${NOW}');`);
  assert.deepEqual(migrate(db), { from: 1, to: LATEST_VERSION });
  assert.deepEqual({ ...(db.prepare("SELECT nat, tap FROM vms WHERE id = 'old'").get() as object) }, { nat: 0, tap: null });
  assert.equal(new LeaseRepo(db).lease('old', CIDR, GW, NOW).ip, '172.30.0.2');
});

test('many VMs get distinct IPs in order, each with its own MAC; leasing is idempotent per VM', () => {
  const { db, repos } = freshDb();
  const leases = new LeaseRepo(db);
  const got = [];
  for (let i = 0; i < 40; i++) {
    addVm(repos, `vm${i}`);
    got.push(leases.lease(`vm${i}`, CIDR, GW, NOW));
  }
  assert.deepEqual(
    got.map((l) => l.ip),
    Array.from({ length: 40 }, (_, i) => `172.30.0.${i + 2}`),
  );
  assert.equal(new Set(got.map((l) => l.mac)).size, 40);
  assert.equal(got[0]?.mac, macForIp('172.30.0.2'));
  assert.deepEqual(leases.lease('vm7', CIDR, GW, '2030-01-01T00:00:00Z'), got[7]);
  assert.equal(leases.byVm('vm7')?.created_at, NOW);
  assert.equal(leases.all().length, 40);
});

test('release() and VM deletion (cascade) free the address for reuse', () => {
  const { db, repos } = freshDb();
  const leases = new LeaseRepo(db);
  for (const id of ['a', 'b', 'c']) {
    addVm(repos, id);
    leases.lease(id, CIDR, GW, NOW);
  }
  assert.equal(leases.release('b'), true);
  assert.equal(leases.release('b'), false);
  assert.equal(leases.byVm('b'), undefined);
  repos.vms.delete('a');
  assert.equal(leases.byVm('a'), undefined);
  assert.deepEqual(
    leases.all().map((l) => l.vm_id),
    ['c'],
  );
  addVm(repos, 'd');
  addVm(repos, 'e');
  assert.equal(leases.lease('d', CIDR, GW, NOW).ip, '172.30.0.2');
  assert.equal(leases.lease('e', CIDR, GW, NOW).ip, '172.30.0.3');
});

test('exhaustion is a clear conflict error; an unknown VM is not_found', () => {
  const { db, repos } = freshDb();
  const leases = new LeaseRepo(db);
  const small = '10.50.0.0/29'; // 6 hosts, one is the gateway
  for (let i = 0; i < 5; i++) {
    addVm(repos, `v${i}`);
    leases.lease(`v${i}`, small, '10.50.0.1', NOW);
  }
  addVm(repos, 'extra');
  assert.throws(
    () => leases.lease('extra', small, '10.50.0.1', NOW),
    (e: unknown) => e instanceof BangerError && e.code === 'conflict' && /no free IP address left in 10\.50\.0\.0\/29/.test(e.message) && !!e.fix,
  );
  assert.equal(leases.byVm('extra'), undefined);
  assert.throws(
    () => leases.lease('ghost', CIDR, GW, NOW),
    (e: unknown) => e instanceof BangerError && e.code === 'not_found',
  );
  assert.throws(
    () => leases.lease('extra', '10.0.0.0/33', GW, NOW),
    (e: unknown) => e instanceof BangerError && e.code === 'bad_request',
  );
});

test('a lease outside a changed cidr is replaced; MACs never collide with leftovers', () => {
  const { db, repos } = freshDb();
  const leases = new LeaseRepo(db);
  addVm(repos, 'old');
  addVm(repos, 'new');
  assert.equal(leases.lease('old', '172.30.0.0/24', '172.30.0.1', NOW).ip, '172.30.0.2');
  // 10.30.0.2 has the same low 24 bits as 172.30.0.2, hence the same MAC.
  const moved = leases.lease('new', '10.30.0.0/24', '10.30.0.1', NOW);
  assert.notEqual(moved.mac, macForIp('172.30.0.2'));
  assert.equal(moved.ip, '10.30.0.3', 'skips 10.30.0.2, whose MAC 52:54:00:1e:00:02 is held by the old lease');
  const relocated = leases.lease('old', '10.30.0.0/24', '10.30.0.1', NOW);
  assert.equal(relocated.ip, '10.30.0.2');
});

test('the allocation holds the write lock from its first read (BEGIN IMMEDIATE)', () => {
  const { path, db, repos } = freshDb();
  addVm(repos, 'a');
  addVm(repos, 'b');
  const other = openDb(path);
  dbs.push(other);
  other.pragma('busy_timeout = 0');
  new LeaseRepo(db).lease('a', CIDR, GW, NOW);
  // While this connection is mid-transaction, the other cannot even start its allocation, so it
  // can never read a taken-set that is about to change.
  db.exec('BEGIN IMMEDIATE');
  try {
    assert.throws(() => new LeaseRepo(other).lease('b', CIDR, GW, NOW), /SQLITE_BUSY|database is locked/);
  } finally {
    db.exec('ROLLBACK');
  }
  assert.equal(new LeaseRepo(other).lease('b', CIDR, GW, NOW).ip, '172.30.0.3');
});

test('two connections in parallel threads never lease the same IP', async () => {
  const { path, db, repos } = freshDb();
  const per = 60;
  for (let i = 0; i < per * 2; i++) addVm(repos, `p${i}`);
  const leasesUrl = new URL('../../src/store/leases.js', import.meta.url).href;
  const dbUrl = new URL('db.js', leasesUrl).href;
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    (async () => {
      const { openDb } = await import(workerData.dbUrl);
      const { LeaseRepo } = await import(workerData.leasesUrl);
      const db = openDb(workerData.path);
      const repo = new LeaseRepo(db);
      const out = [];
      // Both threads lease every VM, from opposite ends, so they contend for the same rows.
      for (const id of workerData.ids) out.push([id, repo.lease(id, workerData.cidr, workerData.gw, workerData.now).ip]);
      db.close();
      parentPort.postMessage(out);
    })().catch((e) => { parentPort.postMessage({ error: String(e && e.stack || e) }); });
  `;
  const ids = Array.from({ length: per * 2 }, (_, i) => `p${i}`);
  const run = (order: string[]) =>
    new Promise<Array<[string, string]>>((res, rej) => {
      const w = new Worker(code, { eval: true, workerData: { path, ids: order, cidr: CIDR, gw: GW, now: NOW, leasesUrl, dbUrl } });
      w.once('message', (m) => (Array.isArray(m) ? res(m as Array<[string, string]>) : rej(new Error((m as { error: string }).error))));
      w.once('error', rej);
    });
  const [a, b] = await Promise.all([run(ids), run([...ids].reverse())]);
  // Each VM got one answer per thread; both threads agree on it (idempotency under contention).
  const byA = new Map(a);
  for (const [id, ip] of b) assert.equal(byA.get(id), ip, `threads disagree on ${id}`);
  const all = new LeaseRepo(db).all();
  assert.equal(all.length, per * 2);
  assert.equal(new Set(all.map((l) => l.ip)).size, per * 2);
  assert.equal(new Set(all.map((l) => l.mac)).size, per * 2);
});
