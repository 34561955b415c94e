import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Image } from '../../src/api/schemas.js';
import { BANGER, runProcess } from '../helpers/banger.js';
import { buildImage, buildIndex, buildLayer, imageRoutes, manifestResponse, pushImage, pushIndex, startFakeRegistry } from '../helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../helpers/oci-registry.js';
import { TestHome } from './harness.js';

/** `debugfs -R "stat PATH"` of an ext4 image: mode, uid, gid, inode, and the link target for fast symlinks. */
function inode(image: string, path: string): { mode: number; uid: number; gid: number; ino: number; type: string; raw: string } {
  const raw = execFileSync('debugfs', ['-R', `stat "${path}"`, image], { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const m = /Inode: (\d+)\s+Type: ([\w ]+?)\s+Mode:\s+(\d+)/.exec(raw);
  const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(raw);
  if (!m || !u) throw new Error(`no inode for ${path} in ${image}:\n${raw}`);
  return { ino: Number(m[1]), type: m[2] as string, mode: Number.parseInt(m[3] as string, 8), uid: Number(u[1]), gid: Number(u[2]), raw };
}

function exists(image: string, path: string): boolean {
  const r = execFileSync('debugfs', ['-R', `stat "${path}"`, image], { stdio: ['ignore', 'pipe', 'pipe'] });
  return r.toString().includes('Inode:');
}

function cat(image: string, path: string): string {
  return execFileSync('debugfs', ['-R', `cat "${path}"`, image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
}

describe('image pull from a real loopback registry', () => {
  let registry: LocalRegistry;
  let home: TestHome;

  before(async () => {
    registry = await startRegistry();
    home = await TestHome.create('accel = "tcg"\n');
    // A kernel to attach images to; pulling does not boot, so any file named vmlinux will do.
    const kdir = await mkdtemp('/tmp/bg-kernel-');
    await writeFile(join(kdir, 'vmlinux'), 'not really a kernel');
    await home.ok(['kernel', 'import', 'k', '--from', kdir]);
    await rm(kdir, { recursive: true, force: true });
  });
  after(async () => {
    await home?.destroy();
    await registry?.stop();
  });

  test('multi-layer image: whiteouts, opaque dirs, setuid, owners, symlinks, hardlinks, devices; gzip and zstd layers', async () => {
    const base = await buildLayer(
      [
        { type: 'dir', path: 'etc', mode: 0o755 },
        { type: 'file', path: 'etc/os-release', content: 'ID=fixture\n' },
        { type: 'file', path: 'etc/doomed', content: 'deleted by a whiteout\n' },
        { type: 'dir', path: 'usr/bin', mode: 0o755 },
        { type: 'file', path: 'usr/bin/sudo', content: '#!/bin/sh\n', mode: 0o4755 },
        { type: 'file', path: 'usr/bin/wall', content: 'w', mode: 0o2755, gid: 5 },
        { type: 'hardlink', path: 'usr/bin/sudoedit', target: 'usr/bin/sudo' },
        { type: 'symlink', path: 'bin', target: 'usr/bin' },
        { type: 'dir', path: 'srv/data', mode: 0o755 },
        { type: 'file', path: 'srv/data/old', content: 'hidden by an opaque marker' },
        { type: 'dir', path: 'home/dev', mode: 0o750, uid: 1000, gid: 1000 },
        { type: 'file', path: 'home/dev/.profile', content: 'export A=1\n', mode: 0o640, uid: 1000, gid: 1000 },
        { type: 'raw', header: { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 } },
        { type: 'dir', path: 'root', mode: 0o700 },
        { type: 'file', path: 'root/.bashrc', content: 'PS1=x\n', mode: 0o644 },
      ],
      'gzip',
    );
    const upper = await buildLayer(
      [
        { type: 'whiteout', path: 'etc/doomed' },
        { type: 'opaque', dir: 'srv/data' },
        { type: 'file', path: 'srv/data/new', content: 'upper' },
        { type: 'file', path: 'etc/os-release', content: 'ID=fixture-v2\n' },
      ],
      'zstd',
    );
    await pushImage(registry.url, 'test/layers', 'v1', { layers: [base, upper] });

    const img = await home.json<Image>(['image', 'pull', `${registry.host}/test/layers:v1`, '--kernel-ref', 'k']);
    assert.equal(img.name, 'layers-v1');
    assert.equal(img.managed, true);
    assert.equal(img.hasSystemd, false);
    assert.equal(img.hasSshd, false);
    assert.match(img.digest ?? '', /^sha256:[a-f0-9]{64}$/);
    assert.ok(img.sizeBytes >= 1024 ** 3, 'at least 1 GiB');
    const fs = img.rootfsPath;

    assert.equal(cat(fs, '/etc/os-release'), 'ID=fixture-v2\n');
    assert.equal(exists(fs, '/etc/doomed'), false, 'whiteout removed the lower file');
    assert.deepEqual(
      execFileSync('debugfs', ['-R', 'ls -p /srv/data', fs], { stdio: ['ignore', 'pipe', 'ignore'] })
        .toString()
        .split('\n')
        .map((l) => l.split('/')[5])
        .filter((n) => n && n !== '.' && n !== '..'),
      ['new'],
      'opaque dir holds only the upper layer',
    );
    const sudo = inode(fs, '/usr/bin/sudo');
    assert.equal(sudo.mode & 0o7777, 0o4755);
    assert.equal(sudo.uid, 0);
    const wall = inode(fs, '/usr/bin/wall');
    assert.equal(wall.mode & 0o7777, 0o2755);
    assert.equal(wall.gid, 5);
    assert.equal(inode(fs, '/usr/bin/sudoedit').ino, sudo.ino, 'hardlink shares the inode');
    assert.match(inode(fs, '/bin').raw, /Fast link dest: "usr\/bin"/);
    const profile = inode(fs, '/home/dev/.profile');
    assert.deepEqual([profile.uid, profile.gid, profile.mode & 0o777], [1000, 1000, 0o640]);
    const dnull = inode(fs, '/dev/null');
    assert.equal(dnull.type, 'character special');
    assert.match(dnull.raw, /Device major\/minor number: 01:03/);
    // The image's /root stays in the rootfs (the guest seeds its work disk from it); nothing is copied out.
    assert.equal(inode(fs, '/root/.bashrc').type, 'regular');
    assert.ok(!existsSync(join(home.dir, 'state', 'images', img.id, 'root')), 'no host-side work seed');
  });

  test('a multi-arch index resolves to linux/amd64; a Docker manifest list too', async () => {
    const mk = async (marker: string) => buildLayer([{ type: 'file', path: 'arch', content: marker }], 'gzip');
    const amd = await pushImage(registry.url, 'test/multi', null, { layers: [await mk('amd64')] });
    const arm = await pushImage(registry.url, 'test/multi', null, { layers: [await mk('arm64')], architecture: 'arm64' });
    await pushIndex(registry.url, 'test/multi', 'latest', [
      { manifestDigest: arm.manifestDigest, platform: { os: 'linux', architecture: 'arm64' } },
      { manifestDigest: amd.manifestDigest, platform: { os: 'linux', architecture: 'amd64' } },
    ]);
    const img = await home.json<Image>(['image', 'pull', `${registry.host}/test/multi`, '--kernel-ref', 'k', '--name', 'multi']);
    assert.equal(cat(img.rootfsPath, '/arch'), 'amd64');
    assert.equal(img.digest, amd.manifestDigest);

    const damd = await pushImage(registry.url, 'test/dlist', null, { layers: [await mk('docker-amd64')], manifestFormat: 'docker' });
    await pushIndex(registry.url, 'test/dlist', 'v2', [{ manifestDigest: damd.manifestDigest, platform: { os: 'linux', architecture: 'amd64' } }], 'docker');
    const d = await home.json<Image>(['image', 'pull', `${registry.host}/test/dlist:v2`, '--kernel-ref', 'k']);
    assert.equal(cat(d.rootfsPath, '/arch'), 'docker-amd64');
  });

  test('name clash and unknown kernel are refused before anything is downloaded', async () => {
    const r = await home.banger(['image', 'pull', `${registry.host}/test/multi`, '--kernel-ref', 'k', '--name', 'multi']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /an image named "multi" already exists/);
    const k = await home.banger(['image', 'pull', `${registry.host}/test/multi`, '--kernel-ref', 'nope', '--name', 'other']);
    assert.notEqual(k.code, 0);
    assert.match(k.stderr, /kernel "nope" not found/);
  });

  test('image promote copies a registered (unmanaged) rootfs into banger-owned storage', async () => {
    const src = await mkdtemp('/tmp/bg-promote-');
    await mkdir(join(src, 'tree', 'root'), { recursive: true });
    await writeFile(join(src, 'tree', 'root', 'seed'), 'x');
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', join(src, 'tree'), join(src, 'user.ext4'), '64M']);
    try {
      await home.ok(['image', 'register', '--name', 'mine', '--rootfs', join(src, 'user.ext4'), '--kernel-ref', 'k']);
      assert.equal((await home.json<Image>(['image', 'show', 'mine'])).managed, false);
      const promoted = await home.json<Image>(['image', 'promote', 'mine']);
      assert.equal(promoted.managed, true);
      assert.ok(promoted.rootfsPath.startsWith(join(home.dir, 'state', 'images')), promoted.rootfsPath);
      // The user's file is no longer needed.
      await rm(join(src, 'user.ext4'));
      assert.equal(cat(promoted.rootfsPath, '/root/seed'), 'x');
      const again = await home.banger(['image', 'promote', 'mine']);
      assert.notEqual(again.code, 0);
      assert.match(again.stderr, /already managed/);
      await home.ok(['image', 'delete', 'mine']);
      assert.equal(existsSync(promoted.rootfsPath), false, 'delete removes a managed rootfs');
    } finally {
      await rm(src, { recursive: true, force: true });
    }
  });

  test('image cache prune reports what it frees, dry run first', async () => {
    const dry = await home.json<{ removed: number; freedBytes: number; dryRun: boolean }>(['image', 'cache', 'prune', '--dry-run']);
    assert.equal(dry.dryRun, true);
    assert.ok(dry.removed > 0 && dry.freedBytes > 0, JSON.stringify(dry));
    const real = await home.json<{ removed: number; freedBytes: number }>(['image', 'cache', 'prune']);
    assert.deepEqual([real.removed, real.freedBytes], [dry.removed, dry.freedBytes]);
    const again = await home.json<{ removed: number }>(['image', 'cache', 'prune']);
    assert.equal(again.removed, 0);
    // Pulled images keep working without their layers.
    assert.equal((await home.json<Image>(['image', 'show', 'multi'])).name, 'multi');
  });

  test('kernel rm refuses while images use the kernel; --force removes those images with it', async () => {
    const names = (await home.json<{ images: Image[] }>(['image', 'list'])).images.map((i) => i.name);
    assert.ok(names.length > 0);
    const r = await home.banger(['kernel', 'rm', 'k']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot remove kernel "k": it is used by image\(s\)/);
    assert.match(r.stderr, /banger kernel rm --force k/);
    const f = await home.banger(['kernel', 'rm', '--force', 'k']);
    assert.equal(f.code, 0, f.stderr);
    assert.deepEqual((await home.json<{ images: Image[] }>(['image', 'list'])).images, []);
    assert.equal((await home.banger(['kernel', 'show', 'k'])).code, 1);
  });
});

describe('image pull refuses hostile registries and content, leaving nothing behind', () => {
  let home: TestHome;
  before(async () => {
    home = await TestHome.create('accel = "tcg"\n');
    const kdir = await mkdtemp('/tmp/bg-kernel-');
    await writeFile(join(kdir, 'vmlinux'), 'x');
    await home.ok(['kernel', 'import', 'k', '--from', kdir]);
    await rm(kdir, { recursive: true, force: true });
  });
  after(async () => {
    await home?.destroy();
  });

  const leftovers = async () => {
    const staging = join(home.dir, 'state', 'staging');
    const images = join(home.dir, 'state', 'images');
    const list = async (d: string) => (existsSync(d) ? await readdir(d) : []);
    const blobs = join(home.dir, 'cache', 'blobs', 'sha256');
    return { staging: await list(staging), images: await list(images), partials: (await list(blobs)).filter((n) => n.includes('.partial')) };
  };

  const expectRefused = async (routes: Parameters<typeof startFakeRegistry>[0]['routes'], ref: string, message: RegExp) => {
    const fake = await startFakeRegistry({ routes });
    try {
      const r = await home.banger(['image', 'pull', `${fake.host}/${ref}`, '--kernel-ref', 'k', '--name', 'hostile']);
      assert.notEqual(r.code, 0, r.stdout);
      assert.match(r.stderr, message);
      const list = await home.json<{ images: Image[] }>(['image', 'list']);
      assert.equal(list.images.length, 0, 'no image row');
      assert.deepEqual(await leftovers(), { staging: [], images: [], partials: [] });
    } finally {
      await fake.stop();
    }
  };

  const simple = async () => buildImage({ layers: [await buildLayer([{ type: 'file', path: 'ok', content: 'fine' }], 'gzip')] });

  test('layer with ../ paths', async () => {
    const img = buildImage({ layers: [await buildLayer([{ type: 'raw', header: { name: '../../escape', type: 'file' }, content: 'x' }], 'gzip')] });
    await expectRefused(imageRoutes('x/y', 't', img), 'x/y:t', /has a "\.\." component/);
  });

  test('absolute symlink escape', async () => {
    const img = buildImage({
      layers: [
        await buildLayer(
          [
            { type: 'symlink', path: 'etc', target: '/etc' },
            { type: 'file', path: 'etc/cron.d/evil', content: 'x' },
          ],
          'gzip',
        ),
      ],
    });
    await expectRefused(imageRoutes('x/y', 't', img), 'x/y:t', /symlink to the absolute path \/etc/);
  });

  test('blob digest mismatch', async () => {
    const img = await simple();
    const routes = imageRoutes('x/y', 't', img);
    const layer = img.layers[0] as { digest: string; blob: Buffer };
    const tampered = Buffer.from(layer.blob);
    tampered[tampered.length - 5] = (tampered[tampered.length - 5] as number) ^ 0xff;
    routes[`/v2/x/y/blobs/${layer.digest}`] = { status: 200, body: tampered };
    await expectRefused(routes, 'x/y:t', /blob digest mismatch: expected sha256:/);
  });

  test('truncated blob', async () => {
    const img = await simple();
    const routes = imageRoutes('x/y', 't', img);
    const layer = img.layers[0] as { digest: string; blob: Buffer };
    routes[`/v2/x/y/blobs/${layer.digest}`] = { status: 200, body: layer.blob, truncateAt: 10 };
    await expectRefused(routes, 'x/y:t', /(truncated|failed after 10 of)/);
  });

  test('manifest for another platform only', async () => {
    const arm = buildImage({ layers: [await buildLayer([{ type: 'file', path: 'a', content: 'arm' }], 'gzip')], architecture: 'arm64' });
    const idx = buildIndex(
      [{ digest: arm.manifestDigest, size: arm.manifest.length, mediaType: arm.manifestMediaType, platform: { os: 'linux', architecture: 'arm64' } }],
      'oci',
    );
    const routes = { ...imageRoutes('x/y', 'arm-only-manifest', arm), '/v2/x/y/manifests/t': manifestResponse(idx.body, idx.mediaType) };
    await expectRefused(routes, 'x/y:t', /has no linux\/amd64 image \(it offers: linux\/arm64\)/);
    // A bare manifest whose config says arm64 is refused too.
    await expectRefused(imageRoutes('x/y', 't', arm), 'x/y:t', /is a linux\/arm64 image/);
  });

  test('oversized manifest', async () => {
    const huge = JSON.stringify({ schemaVersion: 2, layers: [], pad: 'x'.repeat(5 * 1024 * 1024) });
    await expectRefused({ '/v2/x/y/manifests/t': manifestResponse(huge, 'application/vnd.oci.image.manifest.v1+json') }, 'x/y:t', /over the limit of 4194304/);
  });

  test('a layer whose content does not match the config diff_id', async () => {
    const good = await buildLayer([{ type: 'file', path: 'a', content: 'a' }], 'gzip');
    const other = await buildLayer([{ type: 'file', path: 'b', content: 'b' }], 'gzip');
    const img = buildImage({ layers: [{ ...good, diffId: other.diffId }] });
    await expectRefused(imageRoutes('x/y', 't', img), 'x/y:t', /the config says sha256:/);
  });

  test('bearer token flow with credentials from ~/.docker/config.json', async () => {
    const img = await simple();
    const fake = await startFakeRegistry({
      routes: imageRoutes('team/app', 'v1', img),
      auth: { token: 'tok-123', basic: { username: 'alice', password: 's3cret' } },
    });
    const dockerDir = join(home.dir, 'docker');
    try {
      // Without credentials the token service refuses.
      const denied = await home.banger(['image', 'pull', `${fake.host}/team/app:v1`, '--kernel-ref', 'k', '--name', 'app']);
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /refused anonymous access/);
      await mkdir(dockerDir);
      await writeFile(join(dockerDir, 'config.json'), JSON.stringify({ auths: { [fake.host]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
      // The daemon reads the credentials; restart it with DOCKER_CONFIG pointing there.
      await home.ok(['daemon', 'stop']);
      const env = { ...home.env, DOCKER_CONFIG: dockerDir };
      const r = await runProcess(
        process.execPath,
        [BANGER, 'image', 'pull', `${fake.host}/team/app:v1`, '--kernel-ref', 'k', '--name', 'app', '--json'],
        { env },
        120_000,
      );
      assert.equal(r.code, 0, r.stderr);
      const tokenRequest = fake.requests.find((q) => q.path === '/token' && q.headers.authorization);
      assert.ok(tokenRequest, 'token endpoint got Basic credentials');
      assert.ok(
        fake.requests.some((q) => q.headers.authorization === 'Bearer tok-123'),
        'registry got the bearer token',
      );
      await home.ok(['image', 'delete', 'app']);
    } finally {
      await fake.stop();
    }
  });
});
