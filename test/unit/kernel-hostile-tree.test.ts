import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import * as tar from 'tar-stream';
import { copyRegularNoFollow, readRegularNoFollow, realPathUnder, safeExtract } from '../../src/archive/safe-extract.js';
import { assertKernelVersion, discoverKernel } from '../../src/daemon/services/kernels.js';
import { resolveModules } from '../../src/guest/kernel-modules.js';
import { ProcessRunner } from '../../src/host/runner.js';

/**
 * Issue #9 holes 3 and 5 at the level of the code that consumes a kernel tree: the trees below are
 * built the way a hostile kernel archive would unpack (safeExtract keeps absolute symlinks, as
 * guest paths), and each test checks what the host actually read or moved.
 */

const VERSION = '6.1.0-99-fake-amd64';
const SECRET = 'TOPSECRET-host-only-canary';
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const tmp = async (p: string) => {
  const d = await mkdtemp(join(tmpdir(), p));
  dirs.push(d);
  return d;
};
/** A host file only root should read (stands in for /etc/shadow or a private key). */
async function hostSecret(): Promise<string> {
  const d = await tmp('host-secret-');
  const f = join(d, 'shadow');
  await writeFile(f, `${SECRET}\n`, { mode: 0o600 });
  return f;
}
const fakeKo = (name: string) => Buffer.from(`\x7fjunk\0name=${name}\0depends=\0vermagic=${VERSION} SMP \0`);

test('hole 5: a module that is a symlink to a host file never reaches the initramfs', async () => {
  const secret = await hostSecret();
  const modulesDir = join(await tmp('kmods-'), 'lib/modules', VERSION);
  await mkdir(join(modulesDir, 'kernel/drivers/block'), { recursive: true });
  await writeFile(join(modulesDir, 'kernel/virtio_ring.ko'), fakeKo('virtio_ring'));
  await symlink(secret, join(modulesDir, 'kernel/drivers/block/virtio_blk.ko'));
  // Positive control: following the link the old way (readFile) yields the host's secret.
  assert.match(await readFile(join(modulesDir, 'kernel/drivers/block/virtio_blk.ko'), 'utf8'), new RegExp(SECRET));

  const r = await resolveModules({ modulesDir, version: VERSION, required: ['virtio_ring', 'virtio_blk'], optional: [] });
  assert.deepEqual(
    r.modules.map((m) => m.name),
    ['virtio_ring'],
  );
  for (const m of r.modules) assert.equal(m.data.includes(SECRET), false, `${m.name} carries host bytes`);
  // Asked for directly, the linked file is refused (O_NOFOLLOW), not read.
  await assert.rejects(readRegularNoFollow(join(modulesDir, 'kernel/drivers/block/virtio_blk.ko'), 1 << 20), /is a symlink/);
});

test('hole 5: a symlinked directory inside the modules tree is not descended into', async () => {
  const secret = await hostSecret();
  const hostDir = join(secret, '..', 'drivers');
  await mkdir(join(hostDir, 'net'), { recursive: true });
  await writeFile(join(hostDir, 'net', 'virtio_net.ko'), Buffer.concat([fakeKo('virtio_net'), Buffer.from(SECRET)]));
  const modulesDir = join(await tmp('kmods-'), 'lib/modules', VERSION);
  await mkdir(join(modulesDir, 'kernel'), { recursive: true });
  await symlink(hostDir, join(modulesDir, 'kernel', 'drivers'));
  // Positive control: Node 20's recursive readdir (the old index) follows the link into the host dir.
  assert.ok(((await readdir(modulesDir, { recursive: true })) as string[]).includes('kernel/drivers/net/virtio_net.ko'));

  const r = await resolveModules({ modulesDir, version: VERSION, required: ['virtio_net'], optional: [] });
  assert.deepEqual(r.modules, []);
  assert.deepEqual(r.assumedBuiltin, ['virtio_net']);
});

test('hole 5: modules.builtin that is a symlink is refused', async () => {
  const secret = await hostSecret();
  const modulesDir = join(await tmp('kmods-'), 'lib/modules', VERSION);
  await mkdir(modulesDir, { recursive: true });
  await symlink(secret, join(modulesDir, 'modules.builtin'));
  await assert.rejects(resolveModules({ modulesDir, version: VERSION, required: [], optional: [] }), /modules\.builtin .*symlink/);
});

test('hole 5: discoverKernel refuses a kernel, initrd or modules dir reached through a link out of the tree', async () => {
  const secret = await hostSecret();
  // vmlinux -> /abs/host/file (an absolute symlink, as safeExtract keeps it).
  const a = await tmp('ktree-');
  await symlink(secret, join(a, 'vmlinux'));
  await assert.rejects(discoverKernel(a), /kernel vmlinux leads outside .* through a symlink/);

  // A regular kernel, but boot/initrd.img-* -> the host file.
  const b = await tmp('ktree-');
  await mkdir(join(b, 'boot'));
  await writeFile(join(b, 'boot', `vmlinuz-${VERSION}`), 'bz');
  await symlink(secret, join(b, 'boot', `initrd.img-${VERSION}`));
  await assert.rejects(discoverKernel(b), /initrd boot\/initrd\.img-.* leads outside/);

  // lib -> a host directory that holds lib/modules/<version>: an intermediate directory link.
  const host = await tmp('host-lib-');
  await mkdir(join(host, 'modules', VERSION), { recursive: true });
  await writeFile(join(host, 'modules', VERSION, 'canary.ko'), SECRET);
  const c = await tmp('ktree-');
  await mkdir(join(c, 'boot'));
  await writeFile(join(c, 'boot', `vmlinuz-${VERSION}`), 'bz');
  await symlink(host, join(c, 'lib'));
  await assert.rejects(discoverKernel(c), /modules directory lib\/modules\/.* leads outside/);
  assert.equal(readFileSync(join(host, 'modules', VERSION, 'canary.ko'), 'utf8'), SECRET, 'the host directory is untouched');

  // The manifest form: kernel.json naming a path that is a link out.
  const d = await tmp('ktree-');
  await mkdir(join(d, 'k'));
  await symlink(secret, join(d, 'k', 'bz'));
  await writeFile(join(d, 'kernel.json'), JSON.stringify({ kernel: 'k/bz', version: VERSION }));
  await assert.rejects(discoverKernel(d), /leads outside/);

  // A kernel.json that is itself a link is not followed.
  const e = await tmp('ktree-');
  await writeFile(join(e, 'vmlinux'), 'k');
  await symlink(secret, join(e, 'kernel.json'));
  await assert.rejects(discoverKernel(e), /kernel manifest .* is a symlink/);
});

test('links that stay inside the tree still work (Debian-style vmlinuz -> vmlinuz-<ver>)', async () => {
  const t = await tmp('ktree-');
  await mkdir(join(t, 'boot'));
  await writeFile(join(t, 'boot', `vmlinuz-${VERSION}`), 'bz');
  await mkdir(join(t, 'usr/lib/modules', VERSION), { recursive: true });
  await symlink('usr/lib', join(t, 'lib'));
  const k = await discoverKernel(t);
  assert.equal(k.kernel, join(t, 'boot', `vmlinuz-${VERSION}`));
  assert.equal(k.modulesDir, join(t, 'usr/lib/modules', VERSION), 'the real path, inside the tree');
});

test('hole 3: a kernel version that is not a plain name is refused before anything is copied or moved', async () => {
  for (const bad of ['../../../../tmp/x', '..', '.', '.hidden', 'a/b', '', 'x'.repeat(129), 'a b', 'a\nb', '-rf']) {
    assert.throws(() => assertKernelVersion(bad, 'test'), /is not a valid version/, JSON.stringify(bad));
  }
  for (const good of [VERSION, '6.6.1', 'unknown', '5.10.0-1+deb11u1~bpo', 'A1_b']) assert.equal(assertKernelVersion(good, 'test'), good);

  const canaryParent = await tmp('canary-');
  const canary = join(canaryParent, 'moved-here');
  const t = await tmp('ktree-');
  await writeFile(join(t, 'vmlinux'), 'k');
  await mkdir(join(t, 'mods'));
  await writeFile(join(t, 'mods', 'x.ko'), 'm');
  const version = `${'../'.repeat(16)}${canary.slice(1)}`;
  // Positive control: joined as publish() used to, this version lands on the canary path.
  assert.equal(join(t, 'staging/kernel-x', 'lib/modules', version), canary);
  await writeFile(join(t, 'kernel.json'), JSON.stringify({ kernel: 'vmlinux', modules: 'mods', version }));
  await assert.rejects(discoverKernel(t), /is not a valid version/);
  // The version from a directory name is checked too.
  const u = await tmp('ktree-');
  await mkdir(join(u, 'lib/modules/.odd'), { recursive: true });
  await writeFile(join(u, 'vmlinux'), 'k');
  await assert.rejects(discoverKernel(u), /is not a valid version/);
  assert.equal(existsSync(canary), false);
});

test('copyRegularNoFollow refuses links, FIFOs and an existing destination', async () => {
  const secret = await hostSecret();
  const d = await tmp('copy-');
  await symlink(secret, join(d, 'link'));
  await assert.rejects(copyRegularNoFollow(join(d, 'link'), join(d, 'out')), /is a symlink/);
  assert.equal(existsSync(join(d, 'out')), false);
  await writeFile(join(d, 'real'), 'data');
  await symlink(join(d, 'victim'), join(d, 'planted'));
  await assert.rejects(copyRegularNoFollow(join(d, 'real'), join(d, 'planted')), /EEXIST/);
  assert.equal(existsSync(join(d, 'victim')), false, 'nothing written through a planted link');
  assert.equal(await copyRegularNoFollow(join(d, 'real'), join(d, 'out')), 4);
  await assert.rejects(realPathUnder(d, join(d, 'link'), 'file'), /leads outside/);
});

test('safeExtract keeps an absolute link as a guest path, and refuses links altogether with symlinks: false', async () => {
  const secret = await hostSecret();
  const pack = tar.pack();
  pack.entry({ name: 'manifest.json', mode: 0o644 }, '{}');
  pack.entry({ name: 'rootfs.ext4', type: 'symlink', linkname: secret });
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  const archive = Buffer.concat(chunks);
  const base = await tmp('sx-');
  const limits = { label: 'test bundle', runner: new ProcessRunner(), maxBytes: 1 << 20, maxEntries: 16 };
  await assert.rejects(
    safeExtract(Readable.from([archive]), { ...limits, dest: join(base, 'strict'), symlinks: false }),
    /"rootfs\.ext4" rejected: symlinks are not allowed/,
  );
  assert.equal(existsSync(join(base, 'strict')), false, 'the partial tree is removed');
  // Default: kept (it is the guest's /...), and host code that resolves it is stopped.
  await safeExtract(Readable.from([archive]), { ...limits, dest: join(base, 'guest') });
  await assert.rejects(realPathUnder(join(base, 'guest'), join(base, 'guest', 'rootfs.ext4'), 'rootfs'), /leads outside/);
  await assert.rejects(readRegularNoFollow(join(base, 'guest', 'rootfs.ext4'), 1 << 20), /is a symlink/);
});
