// Hole 2 of issue 9 through the real daemon: another local user creates the scratch path an older
// banger would have used (/dev/shm/banger-<hash of the state dir>) before the daemon starts. The
// daemon must start, answer, and leave the squatter's link, its target and its directory alone.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chown, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { TestHome } from './harness.js';

let home: TestHome;
let canary: string;
let legacy: string;

before(async () => {
  home = await TestHome.create();
  canary = await mkdtemp('/tmp/bg-canary-');
  await writeFile(join(canary, 'keep'), 'precious');
  legacy = join('/dev/shm', `banger-${createHash('sha256').update(join(home.dir, 'state')).digest('hex').slice(0, 12)}`);
});

after(async () => {
  await home?.destroy();
  if (canary) await rm(canary, { recursive: true, force: true });
  if (legacy) await rm(legacy, { recursive: true, force: true });
});

async function startAndStop(): Promise<void> {
  const status = await home.json<{ pid: number }>(['daemon', 'status']);
  assert.ok(status.pid > 0, 'the daemon started and answers');
  await home.ok(['daemon', 'stop']);
}

test('a squatted scratch path that links to a canary dir: the daemon starts, the link and the canary are untouched', async (t) => {
  if (!existsSync('/dev/shm')) return t.skip('no /dev/shm on this host');
  await symlink(canary, legacy);
  await startAndStop();
  assert.equal(await readlink(legacy), canary);
  assert.deepEqual(await readdir(canary), ['keep']);
  assert.equal(await readFile(join(canary, 'keep'), 'utf8'), 'precious');
  await rm(legacy);
});

test('a squatted scratch directory owned by another user: the daemon starts and leaves it as it was', async (t) => {
  if (!existsSync('/dev/shm')) return t.skip('no /dev/shm on this host');
  if (process.getuid?.() !== 0) return t.skip('making a directory owned by another uid needs root');
  await mkdir(legacy, { mode: 0o777 });
  await writeFile(join(legacy, 'poison'), 'planted');
  await chown(legacy, 65534, 65534);
  await chown(join(legacy, 'poison'), 65534, 65534);
  await startAndStop();
  const st = await lstat(legacy);
  assert.ok(st.isDirectory());
  assert.equal(st.uid, 65534);
  assert.deepEqual(await readdir(legacy), ['poison']);
  assert.equal(await readFile(join(legacy, 'poison'), 'utf8'), 'planted');
  await rm(legacy, { recursive: true });
});
