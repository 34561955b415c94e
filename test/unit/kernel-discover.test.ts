import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { discoverKernel } from '../../src/daemon/services/kernels.js';

const dirs: string[] = [];
const tree = async (files: string[]) => {
  const d = await mkdtemp(join(tmpdir(), 'kdisc-'));
  dirs.push(d);
  for (const f of files) {
    if (f.endsWith('/')) await mkdir(join(d, f), { recursive: true });
    else {
      await mkdir(join(d, f, '..'), { recursive: true });
      await writeFile(join(d, f), 'x');
    }
  }
  return d;
};
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('an extracted Debian kernel package: vmlinuz + modules of the same version', async () => {
  const d = await tree(['boot/vmlinuz-6.1.0-28-cloud-amd64', 'boot/config-6.1.0-28-cloud-amd64', 'lib/modules/6.1.0-28-cloud-amd64/kernel/x.ko']);
  const k = await discoverKernel(d);
  assert.equal(k.kernel, join(d, 'boot/vmlinuz-6.1.0-28-cloud-amd64'));
  assert.equal(k.version, '6.1.0-28-cloud-amd64');
  assert.equal(k.modulesDir, join(d, 'lib/modules/6.1.0-28-cloud-amd64'));
  assert.equal(k.initrd, undefined);
});

test('a bare vmlinux is preferred (it boots faster) and an initrd is picked up', async () => {
  const d = await tree(['vmlinux', 'boot/vmlinuz-6.1.0-1', 'boot/initrd.img-6.1.0-1']);
  const k = await discoverKernel(d);
  assert.equal(k.kernel, join(d, 'vmlinux'));
  assert.equal(k.initrd, join(d, 'boot/initrd.img-6.1.0-1'));
});

test('a manifest names the files; paths may not leave the directory', async () => {
  const d = await tree(['k/bz', 'mods/']);
  await writeFile(join(d, 'kernel.json'), JSON.stringify({ kernel: 'k/bz', modules: 'mods', version: '6.6.1' }));
  const k = await discoverKernel(d);
  assert.equal(k.kernel, join(d, 'k/bz'));
  assert.equal(k.version, '6.6.1');
  await writeFile(join(d, 'kernel.json'), JSON.stringify({ kernel: '../../etc/passwd' }));
  await assert.rejects(discoverKernel(d), /points outside/);
});

test('a directory without a kernel, or not a directory, is refused with a fix', async () => {
  const d = await tree(['README']);
  await assert.rejects(discoverKernel(d), /no kernel found.*/);
  await assert.rejects(discoverKernel(join(d, 'README')), /is not a directory/);
});
