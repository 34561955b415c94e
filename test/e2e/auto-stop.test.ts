import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Vm } from '../../src/api/schemas.js';
import { guestAssets, pidsMentioning, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

describe('auto_stop_stale_after', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  before(async () => {
    home = await TestHome.create('accel = "tcg"\nauto_stop_stale_after = "4s"\n[vm_defaults]\nvcpu = 2\nmemory_mib = 512\ndisk_size = "512M"\n', {
      netns: true,
    });
    const a = assets as NonNullable<typeof assets>;
    assert.equal((await home.banger(['kernel', 'import', 'k', '--from', a.kernelDir])).code, 0);
    assert.equal((await home.banger(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k'])).code, 0);
  });
  after(async () => {
    await home?.destroy();
  });

  test('a running VM nobody touches is stopped gracefully; `vm list` does not count as a touch', async () => {
    const c = await home.banger(['vm', 'create', '--name', 'idle']);
    assert.equal(c.code, 0, c.stderr);
    let vm: Vm | undefined;
    for (let i = 0; i < 90; i++) {
      vm = (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms[0];
      if (vm?.state === 'stopped') break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal(vm?.state, 'stopped');
    assert.equal(vm?.pid, null);
    const qemu = (await pidsMentioning(home.dir)).length;
    // Only the daemon may remain (it mentions the home through its environment, not its argv).
    assert.equal(qemu, 0);
    const logs = await home.banger(['daemon', 'logs', '-n', '50']);
    assert.match(logs.stdout, /stopping stale VM/);
  });
});
