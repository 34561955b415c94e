import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { lstat, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { VmLaunchSpec, VmmHandle } from '../../src/vmm/driver.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { createMemoryFile, StateReceiver, sparseCopyExclusive } from '../../src/vmm/qemu/migration.js';
import type { QemuConfinementCheck } from '../../src/vmm/qemu/sandbox.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qmig-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the RAM file is created 0600 at its full (sparse) size, and never over an existing name or through a planted link', async () => {
  const ram = join(dir, 'vm.ram');
  await createMemoryFile(ram, 64 * 1024 * 1024);
  const st = await lstat(ram);
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.size, 64 * 1024 * 1024);
  assert.equal(st.blocks, 0, 'sparse: nothing allocated before the guest touches it');
  const canary = join(dir, 'canary');
  await writeFile(canary, 'canary');
  const planted = join(dir, 'planted.ram');
  await symlink(canary, planted);
  await assert.rejects(createMemoryFile(planted, 4096), /already exists/);
  await assert.rejects(createMemoryFile(ram, 4096), /already exists/);
  assert.equal(await readFile(canary, 'utf8'), 'canary');
  assert.equal((await lstat(ram)).size, 64 * 1024 * 1024);
});

test('the sparse copy keeps content and holes, is 0600, and refuses a link at either end', async () => {
  const src = join(dir, 'src.ram');
  await createMemoryFile(src, 16 * 1024 * 1024);
  await writeFile(src, Buffer.alloc(8192, 7), { flag: 'r+' });
  const out = join(dir, 'copy.ram');
  const bytes = await sparseCopyExclusive(src, out);
  const st = await lstat(out);
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.size, 16 * 1024 * 1024);
  assert.equal(bytes, st.blocks * 512);
  assert.ok(bytes < 1024 * 1024, `holes kept (${bytes} bytes allocated)`);
  assert.deepEqual(await readFile(out), await readFile(src));
  const canary = join(dir, 'canary2');
  await writeFile(canary, 'canary');
  const plantedOut = join(dir, 'planted-out');
  await symlink(canary, plantedOut);
  await assert.rejects(sparseCopyExclusive(src, plantedOut), /already exists/);
  assert.equal(await readFile(canary, 'utf8'), 'canary');
  const plantedIn = join(dir, 'planted-in');
  await symlink(canary, plantedIn);
  await assert.rejects(sparseCopyExclusive(plantedIn, join(dir, 'never')), /cannot open/);
  assert.equal(existsSync(join(dir, 'never')), false);
});

test('the state receiver writes one stream to a new 0600 file, turns a second connection away, and refuses an oversized stream', async () => {
  const sock = join(dir, 'out.sock');
  const statePath = join(dir, 'state');
  const r = await StateReceiver.listen(sock, statePath, 1024);
  const first = connect(sock);
  await new Promise((resolve) => first.once('connect', resolve));
  const second = connect(sock);
  const secondClosed = new Promise((resolve) => second.once('close', resolve));
  second.on('error', () => {});
  first.end(Buffer.alloc(100, 1));
  assert.equal(await r.done, 100);
  await secondClosed;
  await r.close();
  assert.equal(existsSync(sock), false);
  assert.equal((await lstat(statePath)).mode & 0o777, 0o600);
  assert.deepEqual(await readFile(statePath), Buffer.alloc(100, 1));
  await assert.rejects(StateReceiver.listen(sock, statePath), /already exists/);

  const big = await StateReceiver.listen(sock, join(dir, 'big'), 1024);
  const c = connect(sock);
  c.on('error', () => {});
  c.end(Buffer.alloc(4096));
  await assert.rejects(big.done, /exceeded 1024 bytes/);
  await big.close();
});

const fakeCheck = { check: async () => 'runas' } as unknown as QemuConfinementCheck;
const handle: VmmHandle = {
  kind: 'qemu',
  pid: 1,
  pidStartTime: '0',
  controlSocket: '/nonexistent/qmp.sock',
  agentSocket: '/nonexistent/agent.sock',
  agentTransport: 'virtio-serial',
  accel: 'tcg',
};

test('saveState on a VM with anonymous RAM fails with a clear error before touching QEMU or the output paths', async () => {
  const d = new QemuDriver('/nonexistent/qemu', { isRoot: () => false, confinementCheck: fakeCheck });
  await assert.rejects(d.saveState(handle, { statePath: join(dir, 's'), memoryPath: join(dir, 'm') }), /anonymous RAM/);
  assert.equal(existsSync(join(dir, 's')), false);
});

test('a restore needs a memoryFile; under vmm_user memory snapshots are refused up front', async () => {
  const spec = {
    vmId: 'x',
    name: 'x',
    vcpus: 1,
    memoryMib: 64,
    kernelPath: '/k',
    cmdline: '',
    disks: [],
    nets: [],
    runDir: dir,
    serialLogPath: join(dir, 'serial'),
    vmmLogPath: join(dir, 'vmm.log'),
    agentSocketPath: join(dir, 'agent.sock'),
    accel: 'tcg',
    restore: { statePath: join(dir, 'state'), memoryPath: join(dir, 'mem') },
  } satisfies VmLaunchSpec;
  const d = new QemuDriver('/nonexistent/qemu', { isRoot: () => false, confinementCheck: fakeCheck });
  await assert.rejects(d.launch(spec), /no memoryFile/);
  const asRoot = new QemuDriver('/nonexistent/qemu', { isRoot: () => true, vmmUser: 'nobody', confinementCheck: fakeCheck });
  await assert.rejects(asRoot.launch({ ...spec, memoryFile: join(dir, 'r.ram') }), /vmm_user/);
  assert.equal(existsSync(join(dir, 'r.ram')), false);
  await assert.rejects(
    asRoot.saveState({ ...handle, memoryFile: join(dir, 'r.ram') }, { statePath: join(dir, 's2'), memoryPath: join(dir, 'm2') }),
    /vmm_user/,
  );
});

test('saveState refuses an existing memory copy before it migrates (QEMU is never left in postmigrate for nothing)', async () => {
  const d = new QemuDriver('/nonexistent/qemu', { isRoot: () => false, confinementCheck: fakeCheck });
  const existing = join(dir, 'existing-mem');
  await writeFile(existing, 'old');
  // The QMP socket does not exist: reaching QEMU would fail with a different message.
  await assert.rejects(d.saveState({ ...handle, memoryFile: join(dir, 'vm.ram') }, { statePath: join(dir, 's3'), memoryPath: existing }), /already exists/);
  assert.equal(await readFile(existing, 'utf8'), 'old');
  assert.equal(existsSync(join(dir, 's3')), false);
});
