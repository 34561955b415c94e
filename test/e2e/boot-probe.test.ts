import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { guestBinary } from '../../src/guest/binaries.js';
import { buildBaseInitramfs } from '../../src/guest/initramfs.js';
import { bootProbe } from '../../src/vmm/qemu/kvm-probe.js';
import { guestAssets } from '../helpers/banger.js';

/**
 * The KVM probe's mechanism, exercised where it can be checked on any host: under TCG the real
 * kernel must reach userspace (positive), and a kernel that cannot boot must be reported unusable
 * within the deadline (negative). Which answer KVM gets on a given host is the host's business.
 */
const assets = guestAssets();

describe('boot probe', { skip: assets ? false : 'guest assets missing: run scripts/guest-assets.sh' }, () => {
  let dir: string;
  let initrd: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'probe-test-'));
    initrd = join(dir, 'initramfs.cpio.gz');
    const a = assets as NonNullable<typeof assets>;
    await buildBaseInitramfs({ kernelTree: a.kernelDir, version: a.kernelVersion, initBinary: guestBinary('banger-init'), outPath: initrd });
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a real kernel reaches userspace under TCG within the deadline', async () => {
    const a = assets as NonNullable<typeof assets>;
    const r = await bootProbe({ qemuBin: 'qemu-system-x86_64', kernelPath: a.kernel, initrdPath: initrd, deadlineMs: 30_000 }, 'tcg');
    assert.equal(r.usable, true, r.detail);
    assert.match(r.detail, /reached userspace in \d+\.\ds/);
  });

  test('as root with vmm_user, the probe QEMU drops to that user like every VM and still boots; a user that does not exist is refused', {
    skip: process.getuid?.() === 0 ? false : 'needs root: only root can drop QEMU to another user',
  }, async () => {
    const a = assets as NonNullable<typeof assets>;
    const r = await bootProbe({ qemuBin: 'qemu-system-x86_64', kernelPath: a.kernel, initrdPath: initrd, deadlineMs: 30_000, vmmUser: 'nobody' }, 'tcg');
    assert.equal(r.usable, true, r.detail);
    await assert.rejects(
      bootProbe({ qemuBin: 'qemu-system-x86_64', kernelPath: a.kernel, initrdPath: initrd, deadlineMs: 30_000, vmmUser: 'banger-no-such-user' }, 'tcg'),
      (e: Error & { code?: string }) => e.code === 'invalid_config' && /vmm_user/.test(e.message),
    );
  });

  test('a kernel that cannot boot is reported unusable, with the reason', async () => {
    const bogus = join(dir, 'not-a-kernel');
    await writeFile(bogus, Buffer.alloc(4096, 0x41));
    const r = await bootProbe({ qemuBin: 'qemu-system-x86_64', kernelPath: bogus, deadlineMs: 5000 }, 'tcg');
    assert.equal(r.usable, false);
    assert.match(r.detail, /exited under tcg|did not reach userspace/);
  });
});
