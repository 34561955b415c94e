// Hole 2 of issue 9: the tmpfs scratch directory used to be a predictable /dev/shm/banger-<hash>,
// accepted with any owner and mode. These tests squat the paths as another local user would and
// check on the host that nothing of theirs is followed, used or removed.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { memoryBudgetOf, ScratchSpace } from '../../src/host/scratch.js';

const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

describe('ScratchSpace on a shared tmpfs', () => {
  /** A stand-in for /dev/shm: a directory on the real tmpfs, world-writable and sticky like it. */
  let shm: string;
  /** Outside the tmpfs: the victim an attacker points links at. */
  let canary: string;
  let state: string;

  before(async () => {
    if (!existsSync('/dev/shm')) return;
    shm = await mkdtemp('/dev/shm/bgtest-scratch-');
    await chmod(shm, 0o1777);
    canary = await mkdtemp('/tmp/bg-canary-');
    await writeFile(join(canary, 'keep'), 'precious');
    state = await mkdtemp('/tmp/bg-scratch-state-');
  });
  after(async () => {
    for (const d of [shm, canary, state]) if (d) await rm(d, { recursive: true, force: true });
  });

  const canaryIntact = async () => {
    assert.deepEqual(await readdir(canary), ['keep']);
    assert.equal(await readFile(join(canary, 'keep'), 'utf8'), 'precious');
  };
  const space = (name: string, extra: Partial<ConstructorParameters<typeof ScratchSpace>[0]> = {}) =>
    new ScratchSpace({ diskDir: join(state, name, 'staging', 'scratch'), memParent: shm, recordFile: join(state, name, 'scratch-mem'), ...extra });
  const under = (p: string, dir: string) => p.startsWith(`${dir}/`);

  it('a squatted legacy path that is a symlink to a canary dir is neither followed, used nor removed', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const legacy = join(shm, 'banger-0123456789ab');
    await symlink(canary, legacy);
    const s = space('legacy-link', { legacyDirs: [legacy] });
    await s.sweep();
    const tree = await s.make('image-tree', 4096);
    await writeFile(join(tree, 'f'), 'x');
    assert.ok(under(tree, shm), `${tree} is on the tmpfs`);
    assert.ok(!under(tree, legacy) && !under(await realpath(tree), canary), 'the tree is not in the squatted path');
    await s.sweep();
    await canaryIntact();
    assert.equal(await readlink(legacy), canary, 'the squatter’s link is left alone');
    assert.equal(existsSync(tree), false, 'our own tree is swept');
    await rm(legacy);
  });

  it('a squatted legacy directory owned by another user is neither used nor removed', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    if (!isRoot) return t.skip('making a directory owned by another uid needs root');
    const legacy = join(shm, 'banger-ba9876543210');
    await mkdir(legacy, { mode: 0o777 });
    await writeFile(join(legacy, 'theirs'), 'planted');
    await chown(legacy, NOBODY, NOBODY);
    await chown(join(legacy, 'theirs'), NOBODY, NOBODY);
    const s = space('legacy-foreign', { legacyDirs: [legacy] });
    await s.sweep();
    const tree = await s.make('image-tree', 4096);
    assert.ok(!under(tree, legacy));
    await s.sweep();
    assert.deepEqual(await readdir(legacy), ['theirs']);
    assert.equal((await lstat(legacy)).uid, NOBODY);
    await rm(legacy, { recursive: true });
  });

  it('a legacy directory of our own (left by an older banger) is removed', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const legacy = join(shm, 'banger-aaaaaaaaaaaa');
    await mkdir(join(legacy, 'image-tree-x'), { recursive: true, mode: 0o700 });
    await symlink(canary, join(legacy, 'image-tree-x', 'link'));
    const removed = await space('legacy-ours', { legacyDirs: [legacy] }).sweep();
    assert.deepEqual(removed, [legacy]);
    assert.equal(existsSync(legacy), false);
    await canaryIntact();
  });

  it('the memory directory is private, unpredictable and recorded; the next start removes what a dead daemon left', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const a = space('record');
    const tree = await a.make('image-tree', 4096);
    await writeFile(join(tree, 'left-behind'), 'x');
    const dir = a.memoryDir as string;
    const st = await lstat(dir);
    assert.ok(st.isDirectory());
    assert.equal(st.mode & 0o777, 0o700);
    assert.equal(st.uid, process.getuid?.());
    assert.match(dir, /\/banger-[0-9a-f]{32}$/);
    assert.equal((await readFile(join(state, 'record', 'scratch-mem'), 'utf8')).trim(), dir);
    const other = space('record-other');
    await other.make('image-tree', 4096);
    assert.notEqual(other.memoryDir, dir, 'two daemons get different names');
    await other.sweep();
    // `a` dies without sweeping; a new daemon on the same state dir finds its directory.
    const b = space('record');
    assert.deepEqual(await b.sweep(), [dir]);
    assert.equal(existsSync(dir), false);
    assert.equal(existsSync(join(state, 'record', 'scratch-mem')), false);
  });

  it('a record that names something else (a canary, another user’s directory) removes nothing', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const recordFile = join(state, 'tampered', 'scratch-mem');
    await mkdir(join(state, 'tampered'), { recursive: true });
    await writeFile(recordFile, `${canary}\n`);
    assert.deepEqual(await space('tampered').sweep(), []);
    await canaryIntact();
    // A well-formed name that is a link to the canary.
    const planted = join(shm, `banger-${'c'.repeat(32)}`);
    await symlink(canary, planted);
    await writeFile(recordFile, `${planted}\n`);
    assert.deepEqual(await space('tampered').sweep(), []);
    await canaryIntact();
    assert.equal(await readlink(planted), canary);
    await rm(planted);
  });

  it('a memory directory replaced behind our back (by a link to a canary) is not used again', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const s = space('swapped');
    const first = await s.make('image-tree', 4096);
    const dir = s.memoryDir as string;
    await rm(dir, { recursive: true });
    await symlink(canary, dir);
    const second = await s.make('image-tree', 4096);
    assert.ok(!under(second, dir), 'a new private directory is made');
    assert.ok(!under(await realpath(second), canary));
    assert.notEqual(second, first);
    await writeFile(join(second, 'f'), 'x');
    await s.sweep();
    await canaryIntact();
    await rm(dir);
  });

  it('a memory tree has a budget; a tree on disk has none', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const s = space('budget', { memBudget: () => 12345 });
    const mem = await s.make('image-tree', 4096);
    assert.ok(under(mem, shm));
    assert.equal(memoryBudgetOf(mem), 12345);
    const disk = await s.make('image-tree', Number.MAX_SAFE_INTEGER);
    assert.ok(under(disk, join(state, 'budget', 'staging', 'scratch')));
    assert.equal(memoryBudgetOf(disk), undefined);
    // Default budget: twice the estimate with a 256 MiB floor, never over half of what is free.
    const d = space('budget-default');
    const tree = await d.make('image-tree', 1 << 20);
    const budget = memoryBudgetOf(tree) as number;
    assert.ok(budget >= 2 << 20 && budget <= 256 << 20, String(budget));
    await s.sweep();
    await d.sweep();
    assert.equal(memoryBudgetOf(mem), undefined);
  });

  it('a tmpfs that other users can write to without the sticky bit is not used', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const loose = await mkdtemp('/dev/shm/bgtest-loose-');
    await chmod(loose, 0o777);
    try {
      const s = new ScratchSpace({ diskDir: join(state, 'loose', 'scratch'), memParent: loose, recordFile: join(state, 'loose', 'scratch-mem') });
      const tree = await s.make('image-tree', 4096);
      assert.ok(under(tree, join(state, 'loose', 'scratch')));
      assert.deepEqual(await readdir(loose), []);
    } finally {
      await rm(loose, { recursive: true, force: true });
    }
  });
});
