import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { MIGRATIONS } from '../../src/store/migrations.js';
import { TestHome } from './harness.js';

const homes: TestHome[] = [];
async function newHome(config?: string): Promise<TestHome> {
  const h = await TestHome.create(config);
  homes.push(h);
  return h;
}

after(async () => {
  await Promise.all(homes.map((h) => h.destroy()));
});

const LATEST = Math.max(...MIGRATIONS.map((m) => m.version));

test('a malformed config.toml: `daemon start` fails naming the file and the key, and no daemon runs', async () => {
  const home = await newHome('log_level = "info"\ntap_pool_size = "two"\n');
  const r = await home.banger(['daemon', 'start']);
  assert.notEqual(r.code, 0);
  assert.ok(r.stderr.includes(home.configFile), r.stderr);
  assert.match(r.stderr, /"tap_pool_size"/);
  assert.match(r.stderr, /^fix: /m);
  assert.equal(r.stdout, '');
  assert.deepEqual(home.daemonPids(), []);
  assert.equal(existsSync(home.socketPath), false);

  // Any auto-starting command fails the same way rather than hanging.
  const status = await home.banger(['daemon', 'status']);
  assert.notEqual(status.code, 0);
  assert.match(status.stderr, /"tap_pool_size"/);
  assert.deepEqual(home.daemonPids(), []);
});

test('a malformed config.toml: the error is ONE line naming the file and key (plus a fix line)', async () => {
  const home = await newHome('[vm_defaults]\nvcpus = 2\n');
  const r = await home.banger(['daemon', 'start']);
  assert.notEqual(r.code, 0);
  const lines = r.stderr.trimEnd().split('\n');
  const errors = lines.filter((l) => l.startsWith('error: '));
  assert.equal(errors.length, 1, r.stderr);
  assert.ok(lines[0]?.startsWith('error: '), r.stderr);
  assert.ok(lines[0]?.includes(home.configFile), r.stderr);
  assert.match(lines[0] ?? '', /"vm_defaults\.vcpus"/);
  assert.ok(
    lines.slice(1).every((l) => l.startsWith('fix: ')),
    r.stderr,
  );
});

test('invalid TOML: the error names the line', async () => {
  const home = await newHome('log_level = "info"\nvmm = \n');
  const r = await home.banger(['daemon', 'start']);
  assert.notEqual(r.code, 0);
  assert.ok(r.stderr.includes(home.configFile), r.stderr);
  assert.match(r.stderr, /line 2/);
  assert.deepEqual(home.daemonPids(), []);
});

test('`bangerd --check-migrations`: 1 on a fresh home, 0 after the daemon ran, 2 for a newer store', async () => {
  const home = await newHome();
  const fresh = await home.bangerd(['--check-migrations']);
  assert.equal(fresh.code, 1, fresh.stdout + fresh.stderr);
  assert.match(fresh.stdout, new RegExp(`schema 0, binary ${LATEST}: needed`));
  assert.equal(existsSync(home.dbPath), false, 'checking must not create the store');

  await home.ok(['daemon', 'start']);
  const running = await home.bangerd(['--check-migrations']);
  assert.equal(running.code, 0, running.stdout + running.stderr);
  assert.match(running.stdout, /: current/);
  await home.ok(['daemon', 'stop']);
  const stopped = await home.bangerd(['--check-migrations']);
  assert.equal(stopped.code, 0, stopped.stdout + stopped.stderr);

  // A copy of the store, stamped with a schema from the future.
  const future = await newHome();
  mkdirSync(join(future.dir, 'state'), { recursive: true });
  copyFileSync(home.dbPath, future.dbPath);
  const db = new Database(future.dbPath);
  db.pragma('user_version = 999');
  db.close();
  const newer = await future.bangerd(['--check-migrations']);
  assert.equal(newer.code, 2, newer.stdout + newer.stderr);
  assert.match(newer.stdout, new RegExp(`schema 999, binary ${LATEST}: newer`));

  // And the daemon refuses to run on it instead of corrupting it.
  const start = await future.banger(['daemon', 'start']);
  assert.notEqual(start.code, 0);
  assert.match(start.stderr, /newer than this banger/);
  assert.deepEqual(future.daemonPids(), []);
  const after = new Database(future.dbPath, { readonly: true });
  assert.equal(after.pragma('user_version', { simple: true }), 999);
  after.close();
});
