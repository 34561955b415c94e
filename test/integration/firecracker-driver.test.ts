import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { dirname, join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../../src/api/errors.js';
import { type VmLaunchSpec, VmmError } from '../../src/vmm/driver.js';
import { FirecrackerApiClient, FirecrackerApiError } from '../../src/vmm/firecracker/api-client.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/driver.js';
import { buildBootRequests } from '../../src/vmm/firecracker/requests.js';
import { isProcessAlive, processStartTime } from '../../src/vmm/process.js';
import { FakeFirecrackerApi, type RecordedRequest, serveFakeFirecracker } from '../helpers/fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, loadFirecrackerSpec, NO_FIRECRACKER_SPEC, SpecValidator } from '../helpers/fake-firecracker-spec.js';

/** Contract tests: they hold banger to the official spec, so without it they skip, saying why. */
const skip = firecrackerSpecAvailable() ? false : NO_FIRECRACKER_SPEC;

// FirecrackerDriver against the FAKE Firecracker executable (test/helpers/fake-firecracker-bin.ts).
const FAKE_BIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'helpers', 'fake-firecracker-bin.js');
const validator = new SpecValidator(firecrackerSpecAvailable() ? loadFirecrackerSpec() : lenientFirecrackerSpec());

const sh = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

interface Env {
  dir: string;
  bin: string;
  spec: VmLaunchSpec;
  pidFile: string;
  records(): RecordedRequest[];
}

/** A temp dir (short: socket paths max out at 107 bytes) with a `firecracker` wrapper script. */
interface SetupOptions {
  /** Extra environment for the fake binary. */
  env?: Record<string, string>;
  /** Replaces the wrapper script (which must write its pid to pidFile). */
  script?: (e: { pidFile: string }) => string;
}

async function setup(t: TestContext, opts: SetupOptions = {}): Promise<Env> {
  const dir = await mkdtemp('/tmp/fc-');
  const run = join(dir, 'run');
  await mkdir(run, { mode: 0o700 });
  const recordFile = join(dir, 'requests.jsonl');
  const pidFile = join(dir, 'fake.pid');
  const env = { FAKE_FC_RECORD: recordFile, FAKE_FC_PIDFILE: pidFile, ...opts.env };
  const exports = Object.entries(env).map(([k, v]) => `export ${k}=${sh(v)}`);
  const script = opts.script?.({ pidFile }) ?? ['#!/bin/sh', ...exports, `exec ${sh(process.execPath)} ${sh(FAKE_BIN)} "$@"`, ''].join('\n');
  const bin = join(dir, 'firecracker');
  await writeFile(bin, script, { mode: 0o755 });
  t.after(async () => {
    // Safety net only: every test checks for leftovers itself.
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8')) : 0;
    if (pid > 0 && (await processStartTime(pid))) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  const spec: VmLaunchSpec = {
    vmId: '0123456789abcdef0123456789abcdef',
    name: 'dev',
    vcpus: 2,
    memoryMib: 512,
    kernelPath: join(dir, 'vmlinux'),
    initrdPath: join(dir, 'initrd.img'),
    cmdline: 'console=ttyS0 reboot=k panic=1',
    disks: [
      { id: 'root', path: join(dir, 'root.ext4'), format: 'raw' },
      { id: 'work', path: join(dir, 'work.ext4'), format: 'raw' },
    ],
    nets: [{ id: 'eth0', tapName: 'tap-dev', mac: '06:00:ac:10:00:02' }],
    runDir: run,
    serialLogPath: join(dir, 'serial.log'),
    vmmLogPath: join(dir, 'vmm.log'),
    agentSocketPath: join(run, 'agent.sock'),
    accel: 'kvm',
  };
  const records = () =>
    existsSync(recordFile)
      ? readFileSync(recordFile, 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as RecordedRequest)
      : [];
  return { dir, bin, spec, pidFile, records };
}

const lines = (rs: RecordedRequest[]) => rs.map((r) => `${r.method} ${r.path} ${r.status}`);
const isSocket = async (p: string) => (await stat(p).catch(() => undefined))?.isSocket() ?? false;
const fakePid = async (e: Env) => Number(await readFile(e.pidFile, 'utf8'));

async function assertNothingLeft(e: Env, pid?: number): Promise<void> {
  if (pid !== undefined) assert.equal(await processStartTime(pid), undefined, `process ${pid} is still running`);
  assert.deepEqual(await readdir(e.spec.runDir), [], 'sockets left in the run dir');
}

test('launch sends the spec-valid configuration in order; status, pause, resume and shutdown work', { skip }, async (t) => {
  const e = await setup(t);
  await writeFile(e.spec.serialLogPath, 'console of an earlier boot\n');
  await writeFile(e.spec.vmmLogPath, 'a stale Firecracker log that is longer than what the new launch writes first\n'.repeat(3));
  const driver = new FirecrackerDriver({ binaryPath: e.bin });

  const handle = await driver.launch(e.spec);
  assert.deepEqual(
    { ...handle, pid: 0, pidStartTime: '' },
    {
      kind: 'firecracker',
      pid: 0,
      pidStartTime: '',
      controlSocket: join(e.spec.runDir, 'fc.sock'),
      agentSocket: e.spec.agentSocketPath,
      agentTransport: 'hybrid-vsock',
      accel: 'kvm',
      // The boot id is recorded so a handle from an earlier boot is never taken for a live VMM.
      bootId: (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim(),
    },
  );
  assert.equal(handle.pid, await fakePid(e));
  assert.ok(await isProcessAlive(handle.pid, handle.pidStartTime));

  const boot = e.records();
  assert.deepEqual(lines(boot), [
    'PUT /logger 204',
    'PUT /machine-config 204',
    'PUT /boot-source 204',
    'PUT /drives/root 204',
    'PUT /drives/work 204',
    'PUT /network-interfaces/eth0 204',
    'PUT /vsock 204',
    'PUT /actions 204',
  ]);
  const expected = buildBootRequests(e.spec, { logger: { logPath: e.spec.vmmLogPath } });
  assert.deepEqual(
    boot.map((r) => ({ method: r.method, path: r.path, body: r.body })),
    expected.map((r) => ({ method: r.method, path: r.path, body: r.body })),
  );
  for (const r of boot) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], `${r.method} ${r.path}`);
  assert.deepEqual(boot.at(-1)?.body, { action_type: 'InstanceStart' });

  // stdout (the guest console) appends to the serial log; Firecracker's own log replaces the old one.
  const serial = await readFile(e.spec.serialLogPath, 'utf8');
  assert.match(serial, /^console of an earlier boot\nfake guest console: Linux version/);
  const vmmLog = await readFile(e.spec.vmmLogPath, 'utf8');
  assert.match(vmmLog, /^Running Firecracker v1\.\d+\.\d+ \(fake\)\n/);
  assert.doesNotMatch(vmmLog, /stale/);
  assert.ok(await isSocket(e.spec.agentSocketPath), 'the vsock socket was created by the fake');

  assert.equal(await driver.shutdown(handle, 5000), true);
  assert.equal(await isProcessAlive(handle.pid, handle.pidStartTime), false);
  await assertNothingLeft(e, handle.pid);

  const after = e.records().slice(boot.length);
  assert.deepEqual(lines(after), ['GET / 200', 'PUT /actions 204']);
  assert.deepEqual(after.at(-1)?.body, { action_type: 'SendCtrlAltDel' });
  for (const r of after) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, []);
});

test('shutdown resumes a paused guest first, since it could not react to Ctrl-Alt-Del', { skip }, async (t) => {
  const e = await setup(t);
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const handle = await driver.launch(e.spec);
  // banger never pauses a VM; someone with the API socket could.
  await new FirecrackerApiClient(handle.controlSocket).send({ method: 'PATCH', path: '/vm', body: { state: 'Paused' } });
  assert.equal(await driver.shutdown(handle, 5000), true);
  assert.deepEqual(lines(e.records().slice(-4)), ['PATCH /vm 204', 'GET / 200', 'PATCH /vm 204', 'PUT /actions 204']);
  assert.deepEqual(e.records().at(-2)?.body, { state: 'Resumed' });
  await assertNothingLeft(e, handle.pid);
});

test('shutdown gives up after the timeout when the guest ignores Ctrl-Alt-Del; kill then ends it', { skip }, async (t) => {
  const e = await setup(t, { env: { FAKE_FC_IGNORE_CTRL_ALT_DEL: '1' } });
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const handle = await driver.launch(e.spec);
  // false: it gave up (the guest never powers off, so a shutdown that ignored its timeout would
  // never return at all).
  assert.equal(await driver.shutdown(handle, 300), false);
  assert.equal(await isProcessAlive(handle.pid, handle.pidStartTime), true);
  assert.ok(await isSocket(handle.controlSocket), 'a running VMM keeps its API socket');

  await driver.kill(handle);
  assert.equal(await isProcessAlive(handle.pid, handle.pidStartTime), false);
  await assertNothingLeft(e, handle.pid);
  await driver.kill(handle); // already gone: nothing to do, no error
});

test('kill ends a running VMM and removes its sockets', { skip }, async (t) => {
  const e = await setup(t);
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const handle = await driver.launch(e.spec);
  await driver.kill(handle);
  assert.equal(await isProcessAlive(handle.pid, handle.pidStartTime), false);
  assert.equal(await driver.shutdown(handle, 100), true, 'shutting down a gone VMM succeeds at once');
  await assertNothingLeft(e, handle.pid);
});

test('with one log file for both, no logger is configured and everything appends there', { skip }, async (t) => {
  const e = await setup(t);
  const spec = { ...e.spec, vmmLogPath: e.spec.serialLogPath };
  await writeFile(spec.serialLogPath, 'earlier\n');
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const handle = await driver.launch(spec);
  assert.equal(e.records()[0]?.path, '/machine-config');
  assert.match(await readFile(spec.serialLogPath, 'utf8'), /^earlier\nfake guest console/);
  await driver.kill(handle);
  await assertNothingLeft(e, handle.pid);
});

test('a binary that exits at once fails the launch with its output in the VmmError', { skip }, async (t) => {
  const e = await setup(t, {
    script: ({ pidFile }) =>
      ['#!/bin/sh', `echo $$ > ${sh(pidFile)}`, 'echo "Error creating the Kvm object: No such file or directory (os error 2)" >&2', 'exit 1'].join('\n'),
  });
  await writeFile(e.spec.serialLogPath, 'an older boot said something else\n');
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  await assert.rejects(driver.launch(e.spec), (err: Error) => {
    assert.ok(err instanceof VmmError);
    assert.match(err.logTail ?? '', /Error creating the Kvm object/);
    assert.doesNotMatch(err.logTail ?? '', /older boot/, 'only this launch is quoted');
    assert.match(err.message, /Firecracker failed to start[\s\S]*Error creating the Kvm object/);
    return true;
  });
  await assertNothingLeft(e, await fakePid(e));
});

test('a rejected configuration request kills the VMM and reports the fault and both logs', { skip }, async (t) => {
  const e = await setup(t, { env: { FAKE_FC_FAIL: 'PUT /vsock' } });
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  await assert.rejects(driver.launch(e.spec), (err: Error) => {
    assert.ok(err instanceof VmmError);
    assert.match(err.message, /rejected PUT \/vsock \(HTTP 400\): fake failure injected/);
    assert.match(err.logTail ?? '', /\[Firecracker log: .*vmm\.log\][\s\S]*PUT \/vsock -> 400/);
    return true;
  });
  assert.deepEqual(lines(e.records()).at(-1), 'PUT /vsock 400');
  assert.ok(!e.records().some((r) => r.path === '/actions'), 'no InstanceStart after a failure');
  await assertNothingLeft(e, await fakePid(e));
});

test('a binary that never opens its API socket is killed after the start timeout', { skip }, async (t) => {
  const e = await setup(t, { script: ({ pidFile }) => `#!/bin/sh\necho $$ > ${sh(pidFile)}\nexec sleep 30\n` });
  const driver = new FirecrackerDriver({ binaryPath: e.bin, startTimeoutMs: 300 });
  await assert.rejects(driver.launch(e.spec), (err: Error) => err instanceof VmmError && /timed out after 300 ms/.test(err.message));
  await assertNothingLeft(e, await fakePid(e));
});

test('bad input and a missing binary fail before or without leftovers', { skip }, async (t) => {
  const e = await setup(t);
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const qcow = { ...e.spec, disks: [{ id: 'root', path: '/v/root.qcow2', format: 'qcow2' as const }] };
  await assert.rejects(driver.launch(qcow), (err: Error) => err instanceof VmmError && /only supports raw/.test(err.message));
  await assert.rejects(driver.launch({ ...e.spec, accel: 'tcg' }), /Firecracker needs KVM/);
  assert.equal(existsSync(e.pidFile), false, 'nothing was started');

  const missing = new FirecrackerDriver({ binaryPath: join(e.dir, 'no-such-firecracker') });
  await assert.rejects(missing.launch(e.spec), (err: Error) => err instanceof VmmError && /not found/.test(err.message));
  await assertNothingLeft(e);
});

// ---- the API client, against the fake served in-process and against misbehaving servers ----

async function listen(t: TestContext, server: Server): Promise<string> {
  const dir = await mkdtemp('/tmp/fc-');
  const socket = join(dir, 'api.sock');
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  return socket;
}

test('api client: 204, 200 with JSON, and faults as FirecrackerApiError', { skip }, async (t) => {
  const dir = await mkdtemp('/tmp/fc-');
  const fake = new FakeFirecrackerApi({ validator, instanceId: 'vm-1' });
  const server = await serveFakeFirecracker(fake, join(dir, 'api.sock'));
  t.after(async () => {
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  const api = new FirecrackerApiClient(join(dir, 'api.sock'));
  assert.equal(await api.send({ method: 'PUT', path: '/boot-source', body: { kernel_image_path: '/k' } }), undefined);
  const info = await api.send({ method: 'GET', path: '/' });
  assert.deepEqual(validator.validateDefinition('InstanceInfo', info), []);
  assert.equal((info as { id: string }).id, 'vm-1');
  const unknownField = { vcpu_count: 1, mem_size_mib: 128, x: 1 };
  await assert.rejects(api.send({ method: 'PUT', path: '/machine-config', body: unknownField }), (err: Error) => {
    assert.ok(err instanceof FirecrackerApiError && err instanceof VmmError);
    assert.equal(err.statusCode, 400);
    assert.equal(err.faultMessage, '$: unknown field x');
    return true;
  });
  assert.deepEqual(
    fake.requests.map((r) => r.status),
    [204, 200, 400],
  );
});

test('api client: a non-JSON error body, a timeout, an oversized answer and a missing socket', { skip }, async (t) => {
  const socket = await listen(
    t,
    createServer((req, res) => {
      if (req.url === '/plain') res.writeHead(500).end('internal trouble');
      else if (req.url === '/big') res.writeHead(200, { 'Content-Type': 'application/json' }).end(`"${'x'.repeat(100_000)}"`);
      // '/hang': never answer
    }),
  );
  const api = new FirecrackerApiClient(socket, { timeoutMs: 300, maxResponseBytes: 1024 });
  await assert.rejects(api.send({ method: 'GET', path: '/plain' }), (err: Error) => {
    assert.ok(err instanceof FirecrackerApiError);
    assert.equal(err.statusCode, 500);
    assert.equal(err.faultMessage, 'internal trouble');
    return true;
  });
  await assert.rejects(api.send({ method: 'GET', path: '/hang' }), /no answer within 300 ms/);
  await assert.rejects(api.send({ method: 'GET', path: '/big' }), /larger than 1024 bytes/);
  const controller = new AbortController();
  const pending = api.send({ method: 'GET', path: '/hang' }, controller.signal);
  controller.abort();
  await assert.rejects(pending, /aborted/);
  const nowhere = new FirecrackerApiClient('/tmp/no-such-dir/fc.sock');
  await assert.rejects(nowhere.send({ method: 'GET', path: '/' }), (err: Error) => {
    return err instanceof VmmError && /no-such-dir\/fc\.sock/.test(err.message);
  });
});

// ---- warm start: pause, resume, saveState, launch with `restore` (docs/firecracker.md) ----

const body = (rs: RecordedRequest[], line: string) => rs.find((r) => `${r.method} ${r.path}` === line)?.body;

/** The source VM's disks exist (a load opens the saved paths), and a clone spec with its own disks, TAP and sockets. */
async function warmSetup(t: TestContext, env: Record<string, string> = {}) {
  const e = await setup(t, { env: { FAKE_FC_TOUCH_DISKS: '1', ...env } });
  for (const d of e.spec.disks) await writeFile(d.path, `${d.id} of the source\n`);
  const snap = join(e.dir, 'snap');
  await mkdir(snap, { mode: 0o700 });
  const out = { statePath: join(snap, 'vm.state'), memoryPath: join(snap, 'vm.mem') };
  const cloneRun = join(e.dir, 'crun');
  await mkdir(cloneRun, { mode: 0o700 });
  const clone: VmLaunchSpec = {
    ...e.spec,
    vmId: 'fedcba9876543210fedcba9876543210',
    name: 'clone',
    disks: e.spec.disks.map((d) => ({ ...d, path: join(e.dir, `clone-${d.id}.ext4`) })),
    nets: [{ id: 'eth0', tapName: 'tap-clone', mac: '06:00:ac:10:00:03' }],
    runDir: cloneRun,
    serialLogPath: join(e.dir, 'clone-serial.log'),
    vmmLogPath: join(e.dir, 'clone-vmm.log'),
    agentSocketPath: join(cloneRun, 'agent.sock'),
    restore: out,
  };
  return { e, out, clone };
}

test('warm start: pause, saveState (Full, exclusive 0600 files), a clone restored on its own disks, TAP and socket, left paused', { skip }, async (t) => {
  const { e, out, clone } = await warmSetup(t);
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  assert.deepEqual(driver.snapshotSupport, { memory: true, diskLayers: 'copy' });
  const src = await driver.launch(e.spec);
  const booted = e.records().length;

  // Refused while running (the driver never pauses behind the caller's back); nothing is written.
  await assert.rejects(driver.saveState(src, out), (err: Error) => {
    assert.ok(err instanceof BangerError && err.code === 'precondition_failed', String(err));
    assert.match(err.message, /it is Running, not paused/);
    return true;
  });
  assert.equal(existsSync(out.statePath) || existsSync(out.memoryPath), false);

  await driver.pause(src);
  await driver.pause(src); // idempotent: the second sees Paused and sends nothing
  const saved = await driver.saveState(src, out);
  assert.equal(saved.memoryBytes, e.spec.memoryMib * 1024 * 1024);
  assert.equal(saved.stateBytes, (await stat(out.statePath)).size);
  for (const p of [out.statePath, out.memoryPath]) assert.equal((await stat(p)).mode & 0o777, 0o600, p);
  const srcRecords = e.records().slice(booted);
  assert.deepEqual(lines(srcRecords), ['GET / 200', 'GET / 200', 'PATCH /vm 204', 'GET / 200', 'GET / 200', 'PUT /snapshot/create 204']);
  assert.deepEqual(body(srcRecords, 'PATCH /vm'), { state: 'Paused' });
  assert.deepEqual(body(srcRecords, 'PUT /snapshot/create'), { snapshot_type: 'Full', snapshot_path: out.statePath, mem_file_path: out.memoryPath });
  for (const r of srcRecords) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], `${r.method} ${r.path}`);

  // Never overwritten.
  const before = await readFile(out.statePath);
  await assert.rejects(driver.saveState(src, out), (err: Error) => err instanceof BangerError && err.code === 'conflict' && /exists/.test(err.message));
  assert.deepEqual(await readFile(out.statePath), before, 'the existing snapshot is untouched');

  // The caller copies the disks while the source is paused (snapshotSupport.diskLayers = 'copy').
  for (const [i, d] of clone.disks.entries()) await writeFile(d.path, await readFile(e.spec.disks[i]?.path as string));
  const cloneStart = e.records().length;
  const cl = await driver.launch(clone);
  const restore = e.records().slice(cloneStart);
  assert.deepEqual(lines(restore), ['PUT /logger 204', 'PUT /snapshot/load 204', 'GET /vm/config 200', 'PATCH /drives/root 204', 'PATCH /drives/work 204']);
  assert.deepEqual(body(restore, 'PUT /snapshot/load'), {
    snapshot_path: out.statePath,
    mem_backend: { backend_type: 'File', backend_path: out.memoryPath },
    resume_vm: false,
    network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap-clone' }],
    vsock_override: { uds_path: clone.agentSocketPath },
  });
  assert.deepEqual(body(restore, 'PATCH /drives/root'), { drive_id: 'root', path_on_host: clone.disks[0]?.path });
  assert.deepEqual(body(restore, 'PATCH /drives/work'), { drive_id: 'work', path_on_host: clone.disks[1]?.path });
  for (const r of restore) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], `${r.method} ${r.path}`);
  assert.ok(await isSocket(clone.agentSocketPath), "the clone's own agent socket");
  const api = new FirecrackerApiClient(cl.controlSocket);
  assert.equal(((await api.send({ method: 'GET', path: '/' })) as { state: string }).state, 'Paused');

  // The clone's guest writes its own disks; the source's stay as they were.
  await driver.resume(cl);
  await driver.resume(cl);
  for (const d of clone.disks) assert.match(await readFile(d.path, 'utf8'), /written by fedcba9876543210fedcba9876543210\n$/, d.path);
  for (const d of e.spec.disks) assert.equal(await readFile(d.path, 'utf8'), `${d.id} of the source\n`, d.path);
  assert.deepEqual(lines(e.records().slice(-3)), ['GET / 200', 'PATCH /vm 204', 'GET / 200'], 'the second resume sends nothing');

  await driver.resume(src);
  assert.match(await readFile(e.spec.disks[0]?.path as string, 'utf8'), /written by 0123456789abcdef/);
  await driver.kill(cl);
  await driver.kill(src);
  await assertNothingLeft(e, src.pid);
  assert.deepEqual(await readdir(clone.runDir), []);
  assert.ok(existsSync(out.memoryPath), 'the snapshot outlives its VMs');
});

test('saveState that fails midway removes both files and leaves the VM paused', { skip }, async (t) => {
  const { e, out } = await warmSetup(t, { FAKE_FC_SNAPSHOT_PARTIAL: '1' });
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const src = await driver.launch(e.spec);
  await driver.pause(src);
  await assert.rejects(driver.saveState(src, out), (err: Error) => err instanceof VmmError && /No space left on device/.test(err.message));
  assert.deepEqual(await readdir(dirname(out.statePath)), [], 'no partial snapshot is left');
  const api = new FirecrackerApiClient(src.controlSocket);
  assert.equal(((await api.send({ method: 'GET', path: '/' })) as { state: string }).state, 'Paused');
  await driver.kill(src);
  await assertNothingLeft(e, src.pid);
});

test('a restore that cannot be completed kills the clone and leaves nothing: wrong devices, missing or linked files', { skip }, async (t) => {
  const { e, out, clone } = await warmSetup(t);
  const driver = new FirecrackerDriver({ binaryPath: e.bin });
  const src = await driver.launch(e.spec);
  await driver.pause(src);
  await driver.saveState(src, out);
  await driver.kill(src);
  for (const d of clone.disks) await writeFile(d.path, 'clone disk\n');

  const pidsBefore = existsSync(e.pidFile) ? await fakePid(e) : 0;
  await assert.rejects(driver.launch({ ...clone, vcpus: 4 }), (err: Error) => {
    assert.ok(err instanceof VmmError);
    assert.match(err.message, /does not fit this VM: the snapshot has 2 vCPUs, the VM 4/);
    return true;
  });
  const failedPid = await fakePid(e);
  assert.notEqual(failedPid, pidsBefore);
  assert.equal(await processStartTime(failedPid), undefined, 'the clone process is gone');
  assert.deepEqual(await readdir(clone.runDir), []);
  assert.equal(await readFile(clone.disks[0]?.path as string, 'utf8'), 'clone disk\n', 'the failed clone never ran');

  // Refused before anything starts: a missing memory file, a symlink in place of the state file.
  const started = e.records().length;
  await assert.rejects(driver.launch({ ...clone, restore: { ...out, memoryPath: join(e.dir, 'nope.mem') } }), /snapshot file .*nope\.mem is missing/);
  const linked = join(e.dir, 'linked.state');
  await symlink(out.statePath, linked);
  await assert.rejects(driver.launch({ ...clone, restore: { ...out, statePath: linked } }), /linked\.state is not a regular file/);
  assert.equal(e.records().length, started, 'no Firecracker was asked anything');
  assert.deepEqual(await readdir(clone.runDir), []);
});
