import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import {
  buildBootRequests,
  buildRestoreRequests,
  describeInstanceRequest,
  type FcRequest,
  pauseRequest,
  restoreDrivePatches,
  restoreMismatches,
  resumeRequest,
  snapshotCreateRequest,
  vmConfigRequest,
} from '../../src/vmm/firecracker/requests.js';
import { FakeFirecrackerApi, type FakeResponse, type FakeSnapshot } from '../helpers/fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, loadFirecrackerSpec, NO_FIRECRACKER_SPEC, SpecValidator } from '../helpers/fake-firecracker-spec.js';

/**
 * Contract tests of the warm-start requests (PATCH /vm, PUT /snapshot/create, PUT /snapshot/load,
 * GET /vm/config, PATCH /drives) against the official spec, and of the order the FAKE Firecracker
 * (which holds them to the spec's state rules) accepts. Without the spec they skip, saying why.
 */
const skip = firecrackerSpecAvailable() ? false : NO_FIRECRACKER_SPEC;
const validator = new SpecValidator(firecrackerSpecAvailable() ? loadFirecrackerSpec() : lenientFirecrackerSpec());

const source: VmLaunchSpec = {
  vmId: 'src',
  name: 'src',
  vcpus: 2,
  memoryMib: 256,
  kernelPath: '/k/vmlinux',
  cmdline: 'console=ttyS0',
  disks: [
    { id: 'root', path: '/v/src/root.ext4', format: 'raw' },
    { id: 'work', path: '/v/src/work.ext4', format: 'raw' },
  ],
  nets: [{ id: 'net0', tapName: 'tap-src', mac: '52:54:00:00:00:01' }],
  runDir: '/r/src',
  serialLogPath: '/v/src/serial.log',
  vmmLogPath: '/v/src/vmm.log',
  agentSocketPath: '/r/src/agent.sock',
  accel: 'kvm',
};
const snapshotFiles = { statePath: '/s/vm.state', memoryPath: '/s/vm.mem' };
const clone: VmLaunchSpec = {
  ...source,
  vmId: 'clone',
  name: 'clone',
  kernelPath: '',
  disks: [
    { id: 'root', path: '/v/clone/root.ext4', format: 'raw' },
    { id: 'work', path: '/v/clone/work.ext4', format: 'raw' },
  ],
  nets: [{ id: 'net0', tapName: 'tap-clone', mac: '52:54:00:00:00:02' }],
  runDir: '/r/clone',
  agentSocketPath: '/r/clone/agent.sock',
  restore: snapshotFiles,
};

const line = (r: FcRequest) => `${r.method} ${r.path}`;
const send = (fake: FakeFirecrackerApi, r: FcRequest): FakeResponse => fake.handle(r.method, r.path, r.body && JSON.stringify(r.body));
const faultOf = (res: FakeResponse) => (res.body as { fault_message?: string } | undefined)?.fault_message ?? '';

/** A fake whose snapshots live in `store` (the FAKE binary writes files instead). */
function fakeWith(store: Map<string, FakeSnapshot>): FakeFirecrackerApi {
  return new FakeFirecrackerApi({
    validator,
    hooks: {
      onSnapshotCreate(statePath, memoryPath, snapshot) {
        store.set(`${statePath}|${memoryPath}`, snapshot);
        return undefined;
      },
      onSnapshotLoad(statePath, memoryPath) {
        return store.get(`${statePath}|${memoryPath}`) ?? `no snapshot at ${statePath}`;
      },
    },
  });
}

/** A booted source VM, paused and saved into `store`. */
function savedSource(store: Map<string, FakeSnapshot>): FakeFirecrackerApi {
  const fake = fakeWith(store);
  for (const r of [...buildBootRequests(source, { logger: { logPath: '/v/src/vmm.log' } }), pauseRequest(), snapshotCreateRequest(snapshotFiles)]) {
    const res = send(fake, r);
    assert.equal(res.status, 204, `${line(r)}: ${faultOf(res)}`);
  }
  return fake;
}

test('contract: the warm-start requests match the Firecracker spec', { skip }, () => {
  const config = { drives: [{ drive_id: 'root', path_on_host: '/v/src/root.ext4' }] };
  const requests = [
    pauseRequest(),
    resumeRequest(),
    snapshotCreateRequest(snapshotFiles),
    ...buildRestoreRequests(clone, snapshotFiles, { logger: { logPath: '/v/clone/vmm.log' } }),
    ...buildRestoreRequests({ ...clone, nets: [] }, snapshotFiles),
    vmConfigRequest(),
    ...restoreDrivePatches(clone, config),
  ];
  for (const r of requests) assert.deepEqual(validator.checkRequest(r.method, r.path, r.body).errors, [], line(r));
  assert.equal(vmConfigRequest().body, undefined, 'a GET carries no body');
});

test('the bodies: Full snapshot; load from a File backend, not resumed, the clone TAP and socket as overrides', { skip }, () => {
  assert.deepEqual(snapshotCreateRequest(snapshotFiles), {
    method: 'PUT',
    path: '/snapshot/create',
    body: { snapshot_type: 'Full', snapshot_path: '/s/vm.state', mem_file_path: '/s/vm.mem' },
  });
  assert.deepEqual(buildRestoreRequests(clone, snapshotFiles, { logger: { logPath: '/v/clone/vmm.log' } }).map(line), ['PUT /logger', 'PUT /snapshot/load']);
  assert.deepEqual(buildRestoreRequests(clone, snapshotFiles).at(-1)?.body, {
    snapshot_path: '/s/vm.state',
    mem_backend: { backend_type: 'File', backend_path: '/s/vm.mem' },
    resume_vm: false,
    network_overrides: [{ iface_id: 'net0', host_dev_name: 'tap-clone' }],
    vsock_override: { uds_path: '/r/clone/agent.sock' },
  });
  // A restore takes no kernel (the saved guest already runs one); a boot still needs it.
  assert.throws(() => buildBootRequests(clone), /kernel path/);
  assert.throws(() => buildRestoreRequests(clone, { statePath: '', memoryPath: '/s/vm.mem' }), /state path/);
});

test('fake: the whole sequence — boot, pause, save; a fresh process loads, is switched to its own disks, stays paused', { skip }, () => {
  const store = new Map<string, FakeSnapshot>();
  const src = savedSource(store);
  assert.equal(src.state, 'Paused', 'saving leaves the VM paused');

  const fake = fakeWith(store);
  for (const r of buildRestoreRequests(clone, snapshotFiles, { logger: { logPath: '/v/clone/vmm.log' } })) {
    assert.equal(send(fake, r).status, 204, line(r));
  }
  assert.equal(fake.state, 'Paused');
  const config = send(fake, vmConfigRequest());
  assert.equal(config.status, 200);
  assert.deepEqual(validator.validateDefinition('FullVmConfiguration', config.body), []);
  assert.deepEqual(restoreMismatches(clone, config.body), []);
  const patches = restoreDrivePatches(clone, config.body);
  assert.deepEqual(patches, [
    { method: 'PATCH', path: '/drives/root', body: { drive_id: 'root', path_on_host: '/v/clone/root.ext4' } },
    { method: 'PATCH', path: '/drives/work', body: { drive_id: 'work', path_on_host: '/v/clone/work.ext4' } },
  ]);
  for (const r of patches) assert.equal(send(fake, r).status, 204, line(r));
  assert.equal(fake.state, 'Paused', 'nothing in the restore resumes the guest');
  assert.deepEqual(
    [...fake.config.drives.values()].map((d) => d.path_on_host),
    ['/v/clone/root.ext4', '/v/clone/work.ext4'],
  );
  assert.equal(fake.config.nets.get('net0')?.host_dev_name, 'tap-clone');
  assert.equal(fake.config.vsock?.uds_path, '/r/clone/agent.sock');
  // Same disks: nothing to patch.
  assert.deepEqual(restoreDrivePatches(source, send(src, vmConfigRequest()).body), []);
  assert.equal(send(fake, resumeRequest()).status, 204);
  assert.equal(fake.state, 'Running');
});

test('fake: a load is refused once a boot resource was configured, and boot requests are refused after a load', { skip }, () => {
  const store = new Map<string, FakeSnapshot>();
  savedSource(store);
  const load = buildRestoreRequests(clone, snapshotFiles).at(-1) as FcRequest;

  const configured = fakeWith(store);
  assert.equal(send(configured, buildBootRequests(source)[0] as FcRequest).status, 204, 'PUT /machine-config');
  const refused = send(configured, load);
  assert.equal(refused.status, 400);
  assert.match(faultOf(refused), /not allowed after configuring boot-specific resources/);

  const loaded = fakeWith(store);
  assert.equal(send(loaded, load).status, 204);
  for (const r of buildBootRequests(source)) {
    const res = send(loaded, r);
    assert.equal(res.status, 400, `${line(r)} after a load`);
    assert.match(faultOf(res), /not supported after starting/);
  }
  assert.equal(send(loaded, load).status, 400, 'a second load');
});

test('fake: what the spec forbids around snapshots is refused', { skip }, () => {
  const store = new Map<string, FakeSnapshot>();
  const fresh = fakeWith(store);
  // Post-boot only: nothing to snapshot or patch before a guest exists.
  for (const r of [snapshotCreateRequest(snapshotFiles), pauseRequest(), ...restoreDrivePatches(clone, {})]) {
    assert.match(faultOf(send(fresh, r)), /not supported before starting/, line(r));
  }
  // A running VM is not snapshotted ("The microVM should be in the Paused state").
  const running = fakeWith(store);
  for (const r of buildBootRequests(source)) send(running, r);
  assert.match(faultOf(send(running, snapshotCreateRequest(snapshotFiles))), /not paused/);
  assert.equal(store.size, 0);
  // Exactly one of mem_file_path and mem_backend.
  savedSource(store);
  const load = (buildRestoreRequests(clone, snapshotFiles).at(-1) as FcRequest).body as Record<string, unknown>;
  const both = send(fakeWith(store), { method: 'PUT', path: '/snapshot/load', body: { ...load, mem_file_path: '/s/vm.mem' } });
  assert.match(faultOf(both), /Exactly one of mem_file_path and mem_backend/);
  const neither = { ...load };
  delete neither.mem_backend;
  assert.match(faultOf(send(fakeWith(store), { method: 'PUT', path: '/snapshot/load', body: neither })), /Exactly one/);
  // An override for an interface the snapshot does not have.
  const wrongNet = { ...load, network_overrides: [{ iface_id: 'eth9', host_dev_name: 'tap9' }] };
  assert.match(faultOf(send(fakeWith(store), { method: 'PUT', path: '/snapshot/load', body: wrongNet })), /no network interface eth9/);
  // Schema: an unknown field, a wrong backend type.
  const unknown = send(fakeWith(store), { method: 'PUT', path: '/snapshot/load', body: { ...load, resume: true } });
  assert.match(faultOf(unknown), /unknown field resume/);
  const uffdTypo = send(fakeWith(store), {
    method: 'PUT',
    path: '/snapshot/load',
    body: { ...load, mem_backend: { backend_type: 'file', backend_path: '/s/vm.mem' } },
  });
  assert.match(faultOf(uffdTypo), /is not one of/);
});

test('a snapshot whose devices differ from the VM is reported, one sentence per difference', { skip }, () => {
  const store = new Map<string, FakeSnapshot>();
  savedSource(store);
  const fake = fakeWith(store);
  send(fake, buildRestoreRequests(clone, snapshotFiles).at(-1) as FcRequest);
  const config = send(fake, vmConfigRequest()).body;
  const other: VmLaunchSpec = {
    ...clone,
    vcpus: 4,
    memoryMib: 512,
    disks: [{ id: 'root', path: '/v/clone/root.ext4', format: 'raw' }],
    nets: [{ id: 'net1', tapName: 'tap-clone', mac: '52:54:00:00:00:02' }],
  };
  const problems = restoreMismatches(other, config);
  assert.equal(problems.length, 4, problems.join('\n'));
  assert.match(
    problems.join('\n'),
    /2 vCPUs, the VM 4[\s\S]*256 MiB of memory, the VM 512[\s\S]*drives \["root","work"\], the VM \["root"\][\s\S]*interfaces \["net0"\], the VM \["net1"\]/,
  );
  assert.equal(send(fake, describeInstanceRequest()).status, 200);
});

const warmStartRequests = (): FcRequest[] => [
  pauseRequest(),
  resumeRequest(),
  snapshotCreateRequest(snapshotFiles),
  ...buildRestoreRequests(clone, snapshotFiles, { logger: { logPath: '/v/clone/vmm.log' } }),
  vmConfigRequest(),
  ...restoreDrivePatches(clone, {}),
];

test('the official spec has the snapshot endpoints and the fields banger sends', { skip }, () => {
  const official = loadFirecrackerSpec();
  for (const [path, method] of [
    ['/snapshot/create', 'put'],
    ['/snapshot/load', 'put'],
    ['/vm', 'patch'],
    ['/vm/config', 'get'],
    ['/drives/{drive_id}', 'patch'],
  ] as const) {
    assert.ok(official.paths[path]?.[method], `${method} ${path}`);
  }
  const load = official.definitions.SnapshotLoadParams?.properties ?? {};
  for (const f of ['snapshot_path', 'mem_backend', 'resume_vm', 'network_overrides', 'vsock_override']) assert.ok(load[f], f);
  assert.ok(official.definitions.PartialDrive?.properties?.path_on_host, 'PATCH /drives can change path_on_host');
});

test('the lenient stand-in (no spec: tests that need a Firecracker-shaped process) routes every warm-start request', () => {
  const lenient = new SpecValidator(lenientFirecrackerSpec());
  for (const r of warmStartRequests()) assert.deepEqual(lenient.checkRequest(r.method, r.path, r.body).errors, [], line(r));
});
