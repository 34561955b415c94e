import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { lookupUser } from '../../src/host/users.js';
import { type VmLaunchSpec, VmmError } from '../../src/vmm/driver.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/driver.js';
import type { JailerOptions } from '../../src/vmm/firecracker/jailer.js';
import { isProcessAlive, processStartTime } from '../../src/vmm/process.js';
import type { RecordedRequest } from '../helpers/fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, loadFirecrackerSpec, NO_FIRECRACKER_SPEC, SpecValidator } from '../helpers/fake-firecracker-spec.js';
import { parseJailerArgv } from '../helpers/fake-jailer-spec.js';

/**
 * FirecrackerDriver through the FAKE jailer (test/helpers/fake-jailer-bin.ts), which checks its argv
 * against the jailer's documented arguments and runs the FAKE Firecracker "inside" the jail: every
 * path Firecracker is given must resolve inside the chroot.
 */
const skip = firecrackerSpecAvailable() ? false : NO_FIRECRACKER_SPEC;
const HELPERS = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers');
const validator = new SpecValidator(firecrackerSpecAvailable() ? loadFirecrackerSpec() : lenientFirecrackerSpec());
const sh = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const script = (env: Record<string, string>, bin: string) =>
  ['#!/bin/sh', ...Object.entries(env).map(([k, v]) => `export ${k}=${sh(v)}`), `exec ${sh(process.execPath)} ${sh(bin)} "$@"`, ''].join('\n');

interface Env {
  dir: string;
  spec: VmLaunchSpec;
  jailer: JailerOptions;
  chroot: string;
  jailerArgv(): string[] | undefined;
  records(): RecordedRequest[];
}

async function setup(t: TestContext, o: { jailBase?: string; uid?: number; gid?: number; env?: Record<string, string> } = {}): Promise<Env> {
  const dir = await mkdtemp('/tmp/fj-');
  const pidFile = join(dir, 'fake.pid');
  t.after(async () => {
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8')) : 0;
    if (pid > 0 && (await processStartTime(pid))) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  await mkdir(join(dir, 'run'), { mode: 0o700 });
  await mkdir(join(dir, 'vm'));
  const recordFile = join(dir, 'requests.jsonl');
  const argvFile = join(dir, 'jailer-argv.json');
  const jailerBin = join(dir, 'jailer');
  await writeFile(
    jailerBin,
    script({ FAKE_FC_RECORD: recordFile, FAKE_FC_PIDFILE: pidFile, FAKE_JAILER_RECORD: argvFile, ...o.env }, join(HELPERS, 'fake-jailer-bin.js')),
    {
      mode: 0o755,
    },
  );
  // What the jailer copies into the jail (the fake runs the fake Firecracker itself).
  const execFile = join(dir, 'firecracker');
  await writeFile(execFile, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  for (const f of ['vmlinux', 'initrd.img', 'root.ext4', 'work.ext4']) await writeFile(join(dir, 'vm', f), `${f}\n`, { mode: 0o600 });
  const spec: VmLaunchSpec = {
    vmId: '0123456789abcdef0123456789abcdef',
    name: 'dev',
    vcpus: 2,
    memoryMib: 512,
    kernelPath: join(dir, 'vm', 'vmlinux'),
    initrdPath: join(dir, 'vm', 'initrd.img'),
    cmdline: 'console=ttyS0 reboot=k panic=1',
    disks: [
      { id: 'root', path: join(dir, 'vm', 'root.ext4'), format: 'raw' },
      { id: 'work', path: join(dir, 'vm', 'work.ext4'), format: 'raw' },
    ],
    nets: [{ id: 'eth0', tapName: 'tap-dev', mac: '06:00:ac:10:00:02' }],
    runDir: join(dir, 'run'),
    serialLogPath: join(dir, 'vm', 'serial.log'),
    vmmLogPath: join(dir, 'vm', 'vmm.log'),
    agentSocketPath: join(dir, 'run', 'agent.sock'),
    accel: 'kvm',
  };
  const jailBase = o.jailBase ?? join(dir, 'jail');
  const jailer: JailerOptions = {
    jailerBin,
    execFile,
    chrootBaseDir: jailBase,
    uid: o.uid ?? (process.getuid?.() as number),
    gid: o.gid ?? (process.getgid?.() as number),
  };
  return {
    dir,
    spec,
    jailer,
    chroot: join(jailBase, 'firecracker', spec.vmId, 'root'),
    jailerArgv: () => (existsSync(argvFile) ? (JSON.parse(readFileSync(argvFile, 'utf8')) as string[]) : undefined),
    records: () =>
      existsSync(recordFile)
        ? readFileSync(recordFile, 'utf8')
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l) as RecordedRequest)
        : [],
  };
}

const ino = async (p: string) => (await stat(p)).ino;

test('through the jailer: documented argv, files hard-linked into the chroot, Firecracker sees only jail paths, the jail goes with the VM', {
  skip,
}, async (t) => {
  // As root the disks are handed to an unprivileged jail user; otherwise the jail keeps our ids.
  const nobody = process.getuid?.() === 0 ? lookupUser('nobody') : undefined;
  const e = await setup(t, nobody ?? {});
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  const handle = await driver.launch(e.spec);

  const argv = e.jailerArgv();
  assert.ok(argv, 'the jailer was run');
  const { parsed, errors } = parseJailerArgv(argv);
  assert.deepEqual(errors, [], 'the argv is valid per the jailer documentation');
  const value = (f: string) => parsed.values.get(f);
  assert.deepEqual(value('--id'), [e.spec.vmId]);
  assert.deepEqual(value('--exec-file'), [e.jailer.execFile]);
  assert.deepEqual(value('--uid'), [String(e.jailer.uid)]);
  assert.deepEqual(value('--gid'), [String(e.jailer.gid)]);
  assert.deepEqual(value('--chroot-base-dir'), [e.jailer.chrootBaseDir]);
  assert.deepEqual(value('--cgroup-version'), ['2']);
  assert.equal(parsed.flags.has('--daemonize'), false, 'stdout must stay the console log');
  assert.deepEqual(parsed.firecrackerArgs, ['--api-sock', '/fc.sock']);

  // The VM's own files, not copies: the guest writes the disks banger keeps.
  assert.equal(await ino(join(e.chroot, 'root.img')), await ino(e.spec.disks[0]?.path as string));
  assert.equal(await ino(join(e.chroot, 'work.img')), await ino(e.spec.disks[1]?.path as string));
  assert.equal(await ino(join(e.chroot, 'firecracker.log')), await ino(e.spec.vmmLogPath));
  if (nobody) {
    assert.equal((await stat(e.spec.disks[0]?.path as string)).uid, nobody.uid, 'the jail user can write the disk');
    // Kernel and initrd are 0600 root: not readable by the jail user, so they are copies it owns.
    assert.notEqual(await ino(join(e.chroot, 'vmlinux')), await ino(e.spec.kernelPath));
    assert.equal((await stat(join(e.chroot, 'vmlinux'))).uid, nobody.uid);
  } else {
    assert.equal(await ino(join(e.chroot, 'vmlinux')), await ino(e.spec.kernelPath));
  }
  assert.equal(await readFile(join(e.chroot, 'initrd.img'), 'utf8'), 'initrd.img\n');

  // Firecracker was configured with paths inside the jail only, and accepted every one (the fake
  // opens them inside the chroot, as the jailed Firecracker would).
  const boot = e.records();
  assert.ok(
    boot.every((r) => r.status === 204),
    JSON.stringify(boot),
  );
  for (const r of boot) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], `${r.method} ${r.path}`);
  const body = (p: string) => boot.find((r) => r.path === p)?.body as Record<string, unknown>;
  assert.equal(body('/boot-source').kernel_image_path, '/vmlinux');
  assert.equal(body('/boot-source').initrd_path, '/initrd.img');
  assert.equal(body('/drives/root').path_on_host, '/root.img');
  assert.equal(body('/drives/work').path_on_host, '/work.img');
  assert.equal(body('/vsock').uds_path, '/agent.sock');
  assert.equal(body('/logger').log_path, '/firecracker.log');
  assert.match(await readFile(e.spec.vmmLogPath, 'utf8'), /Running Firecracker/, 'the log is readable at its usual path');

  // The daemon reaches the sockets at their host paths inside the jail.
  assert.equal(handle.controlSocket, join(e.chroot, 'fc.sock'));
  assert.equal(handle.agentSocket, join(e.chroot, 'agent.sock'));
  assert.ok((await stat(handle.agentSocket)).isSocket());
  assert.equal(handle.jailDir, dirname(e.chroot));

  assert.equal(await driver.shutdown(handle, 5000), true);
  assert.equal(await isProcessAlive(handle.pid, handle.pidStartTime), false);
  assert.equal(existsSync(dirname(e.chroot)), false, 'the jail is removed');
  assert.equal(await readFile(e.spec.disks[0]?.path as string, 'utf8'), 'root.ext4\n', 'the disks stay');
  assert.deepEqual(await readdir(e.spec.runDir), []);
});

test('a leftover jail of the same VM is replaced; kill removes the jail', { skip }, async (t) => {
  const e = await setup(t);
  await mkdir(e.chroot, { recursive: true });
  await writeFile(join(e.chroot, 'fc.sock'), 'stale');
  await writeFile(join(e.chroot, 'root.img'), 'a stale link target');
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  const handle = await driver.launch(e.spec);
  assert.equal(await ino(join(e.chroot, 'root.img')), await ino(e.spec.disks[0]?.path as string));
  await driver.kill(handle);
  assert.equal(existsSync(dirname(e.chroot)), false);
});

test('a disk on another filesystem than the jail is refused: no jailer runs, no jail is left', { skip }, async (t) => {
  const shm = await mkdtemp('/dev/shm/fj-').catch(() => undefined);
  if (!shm) return t.skip('no /dev/shm to put the jail on another filesystem');
  t.after(() => rm(shm, { recursive: true, force: true }));
  const e = await setup(t, { jailBase: shm });
  if ((await stat(shm)).dev === (await stat(e.dir)).dev) return t.skip('/dev/shm and /tmp are the same filesystem here');
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  await assert.rejects(driver.launch(e.spec), (err: Error) => err instanceof VmmError && /another filesystem/.test(err.message));
  assert.equal(e.jailerArgv(), undefined, 'the jailer never ran');
  assert.deepEqual(await readdir(join(shm, 'firecracker')).catch(() => []), [], 'no jail left');
  assert.equal(await readFile(e.spec.disks[0]?.path as string, 'utf8'), 'root.ext4\n');
});

test('a VM id that cannot name a jail is refused before anything is created', { skip }, async (t) => {
  const e = await setup(t);
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  for (const vmId of ['../../etc', 'a/b', '', 'x'.repeat(65), 'id with space']) {
    await assert.rejects(driver.launch({ ...e.spec, vmId }), (err: Error) => err instanceof VmmError && /cannot name a jail/.test(err.message), vmId);
  }
  assert.equal(e.jailerArgv(), undefined);
  assert.equal(existsSync(e.jailer.chrootBaseDir), false);
});

test('a jail that was asked for but cannot be set up fails the launch: Firecracker never runs unjailed', { skip }, async (t) => {
  const e = await setup(t);
  const why = new Error('vmm_user "banger-vmm" does not exist');
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailerError: why });
  await assert.rejects(driver.launch(e.spec), (err: Error) => err === why);
  assert.equal(e.jailerArgv(), undefined, 'no jailer ran');
  assert.deepEqual(await readdir(e.spec.runDir), [], 'nothing was created for the VM');
});

test('warm start through the jailer: saveState writes the daemon-owned files via links in the jail; a clone jail holds the snapshot read-only and its own disks', {
  skip,
}, async (t) => {
  const nobody = process.getuid?.() === 0 ? lookupUser('nobody') : undefined;
  const e = await setup(t, { ...nobody, env: { FAKE_FC_TOUCH_DISKS: '1' } });
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  const src = await driver.launch(e.spec);
  await driver.pause(src);

  // What a hostile jailed process could leave at the in-jail output name: a link to a host file.
  const canary = join(e.dir, 'canary');
  await writeFile(canary, 'canary\n');
  await symlink(canary, join(e.chroot, 'snapshot-out.state'));
  await mkdir(join(e.dir, 'snap'));
  const out = { statePath: join(e.dir, 'snap', 'vm.state'), memoryPath: join(e.dir, 'snap', 'vm.mem') };
  const saved = await driver.saveState(src, out);
  assert.equal(await readFile(canary, 'utf8'), 'canary\n', 'the link was removed, never followed');
  assert.equal(saved.memoryBytes, e.spec.memoryMib * 1024 * 1024);
  const create = e.records().at(-1);
  assert.deepEqual(create?.body, { snapshot_type: 'Full', snapshot_path: '/snapshot-out.state', mem_file_path: '/snapshot-out.mem' });
  assert.deepEqual(validator.checkRequest('PUT', '/snapshot/create', create?.body).errors, []);
  for (const p of [out.statePath, out.memoryPath]) {
    const st = await stat(p);
    assert.deepEqual([st.uid, st.mode & 0o777, st.nlink], [process.getuid?.(), 0o600, 1], `${p}: taken back from the jail`);
  }
  assert.deepEqual(
    (await readdir(e.chroot)).filter((f) => f.startsWith('snapshot')),
    [],
    'nothing of the snapshot stays in the jail',
  );

  // The clone: another jail, its own disks (copies), TAP and socket; same in-jail names.
  const cloneId = 'fedcba9876543210fedcba9876543210';
  const cloneChroot = join(e.jailer.chrootBaseDir, 'firecracker', cloneId, 'root');
  const disks = e.spec.disks.map((d) => ({ ...d, path: join(e.dir, 'vm', `clone-${d.id}.ext4`) }));
  for (const d of disks) await writeFile(d.path, 'clone disk\n', { mode: 0o600 });
  const clone: VmLaunchSpec = {
    ...e.spec,
    vmId: cloneId,
    disks,
    nets: [{ id: 'eth0', tapName: 'tap-clone', mac: '06:00:ac:10:00:03' }],
    serialLogPath: join(e.dir, 'vm', 'clone-serial.log'),
    vmmLogPath: join(e.dir, 'vm', 'clone-vmm.log'),
    restore: out,
  };
  const start = e.records().length;
  const cl = await driver.launch(clone);
  const restore = e.records().slice(start);
  assert.deepEqual(
    restore.map((r) => `${r.method} ${r.path} ${r.status}`),
    ['PUT /logger 204', 'PUT /snapshot/load 204', 'GET /vm/config 200'],
    'the in-jail drive names are the saved ones: nothing to patch',
  );
  assert.deepEqual(restore[1]?.body, {
    snapshot_path: '/snapshot.state',
    mem_backend: { backend_type: 'File', backend_path: '/snapshot.mem' },
    resume_vm: false,
    network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap-clone' }],
    vsock_override: { uds_path: '/agent.sock' },
  });
  for (const r of restore) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], `${r.method} ${r.path}`);
  assert.equal(await ino(join(cloneChroot, 'snapshot.state')), await ino(out.statePath), 'hard-linked, not copied');
  assert.equal(await ino(join(cloneChroot, 'snapshot.mem')), await ino(out.memoryPath));
  assert.equal(await ino(join(cloneChroot, 'root.img')), await ino(disks[0]?.path as string), "the clone's own disk");
  assert.equal(existsSync(join(cloneChroot, 'vmlinux')), false, 'a restore needs no kernel');
  if (nobody) {
    // Readable, never writable, by the jail's user: owner stays, group the jail's, g=r.
    const st = await stat(out.memoryPath);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [0, nobody.gid, 0o640]);
  }

  await driver.resume(cl);
  assert.match(await readFile(disks[0]?.path as string, 'utf8'), /^clone disk\nwritten by fedcba98/);
  assert.equal(await readFile(e.spec.disks[0]?.path as string, 'utf8'), 'root.ext4\n', "the source's disk is not the clone's");
  await driver.kill(cl);
  await driver.kill(src);
  assert.equal(existsSync(dirname(cloneChroot)), false, 'the clone jail is removed');
  assert.ok(existsSync(out.memoryPath), 'the snapshot stays');
});

test('saveState under the jailer refuses an output on another filesystem than the jail and leaves nothing', { skip }, async (t) => {
  const shm = await mkdtemp('/dev/shm/fj-').catch(() => undefined);
  if (!shm) return t.skip('no /dev/shm for an output on another filesystem');
  t.after(() => rm(shm, { recursive: true, force: true }));
  const e = await setup(t);
  if ((await stat(shm)).dev === (await stat(e.dir)).dev) return t.skip('/dev/shm and /tmp are the same filesystem here');
  const driver = new FirecrackerDriver({ binaryPath: '/unused/firecracker', jailer: e.jailer });
  const src = await driver.launch(e.spec);
  await driver.pause(src);
  await assert.rejects(driver.saveState(src, { statePath: join(shm, 'vm.state'), memoryPath: join(shm, 'vm.mem') }), /another filesystem than the jail/);
  assert.deepEqual(await readdir(shm), []);
  assert.deepEqual(
    (await readdir(e.chroot)).filter((f) => f.startsWith('snapshot')),
    [],
  );
  await driver.kill(src);
});
