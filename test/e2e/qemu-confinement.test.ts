import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import { processesNaming } from '../../src/host/orphans.js';
import { lookupUser } from '../../src/host/users.js';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import { isHandleAlive, processStartTime } from '../../src/vmm/process.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { QmpClient } from '../../src/vmm/qemu/qmp.js';
import { QEMU_SANDBOX_POLICY } from '../../src/vmm/qemu/sandbox.js';
import { guestAssets } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The QEMU driver's confinement on a real QEMU: the seccomp sandbox is in force in the running
 * process (read from the host's /proc, not from the argv), and with a vmm user the process really
 * runs as that user while the root daemon still drives it (QMP, liveness, orphan sweep, kill).
 * The guest need not finish booting for any of this, so each test launches and kills at once.
 */
const assets = guestAssets();

async function launch(t: TestContext, driver: QemuDriver) {
  const dir = await mkdtemp('/tmp/qc-');
  await mkdir(join(dir, 'run'), { mode: 0o700 });
  t.after(() => rm(dir, { recursive: true, force: true }));
  const spec: VmLaunchSpec = {
    vmId: 'confinement',
    name: 'confinement',
    vcpus: 1,
    memoryMib: 256,
    kernelPath: (assets as NonNullable<typeof assets>).kernel,
    cmdline: 'console=ttyS0',
    disks: [],
    nets: [],
    runDir: join(dir, 'run'),
    serialLogPath: join(dir, 'serial.log'),
    vmmLogPath: join(dir, 'vmm.log'),
    agentSocketPath: join(dir, 'run', 'agent.sock'),
    accel: 'tcg',
  };
  const handle = await driver.launch(spec);
  t.after(async () => {
    if (await isHandleAlive(handle)) process.kill(handle.pid, 'SIGKILL');
  });
  return { handle, spec };
}

/** `Field:\tvalue` lines of /proc/<pid>/status. */
async function status(pid: number): Promise<Record<string, string>> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  return Object.fromEntries(text.split('\n').map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]));
}

describe('QEMU confinement (real QEMU)', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  test('a launched QEMU runs in seccomp filter mode with the strict policy', async (t) => {
    const driver = new QemuDriver('qemu-system-x86_64', { isRoot: () => false, vmmUser: 'nobody' });
    const { handle } = await launch(t, driver);
    const s = await status(handle.pid);
    assert.equal(s.Seccomp, '2', 'seccomp mode 2 (filter) in /proc/<pid>/status');
    // A non-root daemon ignores vmm_user: QEMU is already as unprivileged as the daemon.
    assert.equal(s.Uid?.split(/\s+/)[0], String(process.getuid?.()));
    const argv = (await readFile(`/proc/${handle.pid}/cmdline`, 'utf8')).split('\0');
    assert.equal(argv[argv.indexOf('-sandbox') + 1], QEMU_SANDBOX_POLICY);
    assert.equal(argv.includes('-runas'), false);
    await driver.kill(handle);
    assert.equal(await processStartTime(handle.pid), undefined);
  });

  test('with vmm_user, a root daemon’s QEMU drops to that user and is still driven, swept and killed', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('needs root: only a root daemon drops QEMU to vmm_user');
    const nobody = lookupUser('nobody');
    if (!nobody) return t.skip('no "nobody" user in /etc/passwd');
    const driver = new QemuDriver('qemu-system-x86_64', { vmmUser: 'nobody' });
    const { handle, spec } = await launch(t, driver);
    // The drop happens after QEMU's start-up; QMP answering proves start-up is over.
    const q = await QmpClient.connect(handle.controlSocket);
    try {
      assert.equal((await q.execute<{ running: boolean }>('query-status')).running, true);
    } finally {
      q.close();
    }
    const s = await status(handle.pid);
    assert.deepEqual(s.Uid?.split(/\s+/), Array(4).fill(String(nobody.uid)), 'real, effective, saved and fs uid');
    assert.deepEqual(s.Gid?.split(/\s+/), Array(4).fill(String(nobody.gid)));
    assert.equal(s.Seccomp, '2');
    assert.equal(await isHandleAlive(handle), true, 'liveness still reads the dropped process');
    // The orphan sweep of a daemon that died while launching it must see it, under vmm_user only.
    assert.deepEqual(
      (await processesNaming(spec.runDir)).map((p) => p.pid),
      [],
      'control: /proc/<pid> now belongs to the vmm user',
    );
    assert.deepEqual(
      (await processesNaming(spec.runDir, { vmmUids: [nobody.uid] })).map((p) => p.pid),
      [handle.pid],
    );
    await driver.kill(handle);
    assert.equal(await isHandleAlive(handle), false);
    assert.deepEqual(await readdir(spec.runDir), [], 'QMP and agent sockets removed');
  });
});
