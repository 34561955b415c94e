import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { constants, existsSync } from 'node:fs';
import { lstat, mkdtemp, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { VmLaunchSpec, VmmHandle } from '../../src/vmm/driver.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { copyOpenToNew, fillOpenFromFile, openGuestMemory, StateReceiver, sparseCopyExclusive } from '../../src/vmm/qemu/migration.js';
import type { QemuConfinementCheck } from '../../src/vmm/qemu/sandbox.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qmig-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the sparse copy keeps content and holes, is 0600, and refuses a link at either end', async () => {
  const src = join(dir, 'src.ram');
  await writeFile(src, '');
  await truncate(src, 16 * 1024 * 1024);
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

/** A process holding a memfd named as QEMU names its guest RAM (python3's os.memfd_create), until killed. */
async function memfdHolder(bytes: number, name = 'memory-backend-memfd') {
  const child = spawn(
    'python3',
    [
      '-c',
      `import os,sys,time\nfd=os.memfd_create(${JSON.stringify(name)})\nos.ftruncate(fd,${bytes})\nos.pwrite(fd,b"\\x07"*4096,2097152)\nprint(fd,flush=True)\ntime.sleep(600)`,
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  await once(child.stdout as NonNullable<typeof child.stdout>, 'data');
  return child;
}

test('the guest memfd is found through /proc/<pid>/fd by name and exact size, re-checked as ours once open, filled without truncation', async (t) => {
  const bytes = 4 * 1024 * 1024;
  const holder = await memfdHolder(bytes);
  const other = await memfdHolder(bytes, 'something-else');
  t.after(() => {
    holder.kill('SIGKILL');
    other.kill('SIGKILL');
  });
  const pid = holder.pid as number;
  // Reading: the bytes the process wrote are there.
  const ro = await openGuestMemory(pid, bytes, constants.O_RDONLY, async () => true);
  const copy = join(dir, 'memfd-copy');
  const used = await copyOpenToNew(ro, 'memfd', copy);
  await ro.close();
  const data = await readFile(copy);
  assert.equal(data.length, bytes);
  assert.equal(data[2 * 1024 * 1024], 7);
  assert.ok(used < bytes, 'the copy is sparse');
  // A wrong size, a memfd of another name, or a process that is no longer the one we meant: refused.
  await assert.rejects(
    openGuestMemory(pid, bytes * 2, constants.O_RDONLY, async () => true),
    /no guest-memory memfd/,
  );
  await assert.rejects(
    openGuestMemory(other.pid as number, bytes, constants.O_RDONLY, async () => true),
    /no guest-memory memfd/,
  );
  await assert.rejects(
    openGuestMemory(pid, bytes, constants.O_RDONLY, async () => false),
    /no guest-memory memfd/,
  );
  // Writing: a saved image goes in with holes skipped and the memfd's size unchanged.
  const image = join(dir, 'image');
  await writeFile(image, '');
  await truncate(image, bytes);
  await writeFile(image, Buffer.alloc(4096, 9), { flag: 'r+' });
  const rw = await openGuestMemory(pid, bytes, constants.O_WRONLY, async () => true);
  await fillOpenFromFile(image, rw, bytes);
  await rw.close();
  const back = await openGuestMemory(pid, bytes, constants.O_RDONLY, async () => true);
  const after2 = join(dir, 'memfd-after');
  await copyOpenToNew(back, 'memfd', after2);
  await back.close();
  const got = await readFile(after2);
  assert.equal(got.length, bytes, 'never truncated');
  assert.equal(got[0], 9, 'the image was written');
  assert.equal(got[2 * 1024 * 1024], 7, 'an all-zero 1 MiB block of the image was skipped, not written over what was there');
  // An image of another size is refused before anything is written.
  const small = join(dir, 'small');
  await writeFile(small, Buffer.alloc(4096, 1));
  const rw2 = await openGuestMemory(pid, bytes, constants.O_WRONLY, async () => true);
  await assert.rejects(fillOpenFromFile(small, rw2, bytes), /a restore needs the saved VM's memory size/);
  await rw2.close();
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
  await assert.rejects(d.saveState(handle, { statePath: join(dir, 's'), memoryPath: join(dir, 'm') }), /private RAM/);
  assert.equal(existsSync(join(dir, 's')), false);
});

test('a restore needs shared memory; under vmm_user memory snapshots are refused up front', async () => {
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
  await assert.rejects(d.launch(spec), /not sharedMemory/);
  const asRoot = new QemuDriver('/nonexistent/qemu', { isRoot: () => true, vmmUser: 'nobody', confinementCheck: fakeCheck });
  await assert.rejects(asRoot.launch({ ...spec, sharedMemory: true }), /vmm_user/);
  await assert.rejects(asRoot.saveState({ ...handle, sharedMemory: true }, { statePath: join(dir, 's2'), memoryPath: join(dir, 'm2') }), /vmm_user/);
});

test('saveState refuses an existing memory copy before it migrates (QEMU is never left in postmigrate for nothing)', async () => {
  const d = new QemuDriver('/nonexistent/qemu', { isRoot: () => false, confinementCheck: fakeCheck });
  const existing = join(dir, 'existing-mem');
  await writeFile(existing, 'old');
  // The QMP socket does not exist: reaching QEMU would fail with a different message.
  await assert.rejects(d.saveState({ ...handle, sharedMemory: true }, { statePath: join(dir, 's3'), memoryPath: existing }), /already exists/);
  assert.equal(await readFile(existing, 'utf8'), 'old');
  assert.equal(existsSync(join(dir, 's3')), false);
});
