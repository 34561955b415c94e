import assert from 'node:assert/strict';
import { lstat, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Image, Kernel } from '../../src/api/schemas.js';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

describe('image register with kernel files', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let links: string;
  before(async () => {
    home = await TestHome.create();
    links = await mkdtemp(join(tmpdir(), 'reg-links-'));
  });
  after(async () => {
    await home?.destroy();
    await rm(links, { recursive: true, force: true });
  });

  test('--kernel/--modules given as symlinks are copied as real files into banger-owned storage', async () => {
    const a = assets as NonNullable<typeof assets>;
    await symlink(a.kernel, join(links, 'vmlinux'));
    await symlink(join(a.kernelDir, 'lib', 'modules', a.kernelVersion), join(links, a.kernelVersion));
    const r = await home.banger([
      'image',
      'register',
      '--name',
      'direct',
      '--rootfs',
      a.rootfs,
      '--kernel',
      join(links, 'vmlinux'),
      '--modules',
      join(links, a.kernelVersion),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const img = await home.json<Image>(['image', 'show', 'direct']);
    const k = await home.json<Kernel>(['kernel', 'show', img.kernelName]);
    assert.equal(k.version, a.kernelVersion);
    assert.ok((await lstat(k.kernelPath)).isFile(), 'kernel is a regular file, not a link to the user file');
    assert.equal(k.modulesDir, join(dirname(k.kernelPath), 'lib', 'modules', a.kernelVersion));
    assert.ok((await lstat(k.modulesDir as string)).isDirectory());
    assert.ok((await readdir(k.modulesDir as string)).length > 0);
    // The registration survives the user's links going away.
    await rm(links, { recursive: true, force: true });
    const c = await home.banger(['vm', 'create', '--name', 'later', '--image', 'direct', '--no-start', '--disk-size', '256M']);
    assert.equal(c.code, 0, c.stderr);
  });
});
