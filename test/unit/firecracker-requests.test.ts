import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import {
  type BootOptions,
  buildBootRequests,
  ctrlAltDelRequest,
  describeInstanceRequest,
  type FcRequest,
  FirecrackerConfigError,
  instanceIdFor,
  instanceStateOf,
  resumeRequest,
} from '../../src/vmm/firecracker/requests.js';
import { FakeFirecrackerApi } from '../helpers/fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, loadFirecrackerSpec, NO_FIRECRACKER_SPEC, SpecValidator } from '../helpers/fake-firecracker-spec.js';

/** Contract tests: they hold banger to the official spec, so without it they skip, saying why. */
const skip = firecrackerSpecAvailable() ? false : NO_FIRECRACKER_SPEC;

// The contract test: banger's requests against the official Firecracker API description.
const validator = new SpecValidator(firecrackerSpecAvailable() ? loadFirecrackerSpec() : lenientFirecrackerSpec());
/** banger never pauses a VM; the test does, to check that resuming (shutdown's first step when paused) is accepted. */
const PAUSE: FcRequest = { method: 'PATCH', path: '/vm', body: { state: 'Paused' } };

const spec = (over: Partial<VmLaunchSpec> = {}): VmLaunchSpec => ({
  vmId: '0123456789abcdef0123456789abcdef',
  name: 'dev',
  vcpus: 2,
  memoryMib: 1024,
  kernelPath: '/k/vmlinux',
  cmdline: 'console=ttyS0 reboot=k panic=1 root=/dev/vda',
  disks: [{ id: 'root', path: '/v/root.ext4', format: 'raw' }],
  nets: [],
  runDir: '/r',
  serialLogPath: '/v/serial.log',
  vmmLogPath: '/v/vmm.log',
  agentSocketPath: '/r/agent.sock',
  accel: 'kvm',
  ...over,
});

const SPECS: Record<string, VmLaunchSpec> = {
  'root disk only, no initrd': spec(),
  'initrd, root and work disks': spec({
    initrdPath: '/v/initrd.img',
    disks: [
      { id: 'root', path: '/v/root.ext4', format: 'raw' },
      { id: 'work', path: '/v/work.ext4', format: 'raw' },
    ],
  }),
  'three disks, two nets': spec({
    vcpus: 1,
    memoryMib: 256,
    disks: [
      { id: 'root', path: '/v/root.ext4', format: 'raw' },
      { id: 'work', path: '/v/work.ext4', format: 'raw' },
      { id: 'Scratch_2', path: '/v/scratch.img', format: 'raw' },
    ],
    nets: [
      { id: 'eth0', tapName: 'tap-dev0', mac: '06:00:AC:10:00:02' },
      { id: 'eth_1', tapName: 'tap-dev1', mac: '06:00:ac:10:00:03' },
    ],
  }),
  'no disks (initrd-only guest), 32 vCPUs': spec({ vcpus: 32, initrdPath: '/v/initrd.img', disks: [] }),
};
const OPTIONS: Record<string, BootOptions> = {
  'without logger': {},
  'with logger': { logger: { logPath: '/v/vmm.log' } },
};

const line = (r: FcRequest) => `${r.method} ${r.path}`;
const errorsOf = (r: FcRequest) => validator.checkRequest(r.method, r.path, r.body).errors;

for (const [name, s] of Object.entries(SPECS)) {
  for (const [optName, opts] of Object.entries(OPTIONS)) {
    test(`contract: every boot request for "${name}" (${optName}) matches the Firecracker spec`, () => {
      const requests = buildBootRequests(s, opts);
      assert.ok(requests.length >= 4);
      for (const r of requests) assert.deepEqual(errorsOf(r), [], line(r));
    });

    test(`contract: the fake Firecracker accepts "${name}" (${optName}) in order, then the post-boot requests`, () => {
      const fake = new FakeFirecrackerApi({ validator });
      const sequence = [...buildBootRequests(s, opts), describeInstanceRequest(), PAUSE, resumeRequest(), ctrlAltDelRequest()];
      for (const r of sequence) {
        const res = fake.handle(r.method, r.path, r.body && JSON.stringify(r.body));
        assert.ok(res.status === 204 || res.status === 200, `${line(r)} -> ${JSON.stringify(res)}`);
      }
      assert.equal(fake.state, 'Running');
      assert.equal(fake.config.drives.size, s.disks.length);
      assert.equal(fake.config.nets.size, s.nets.length);
    });
  }
}

test('contract: post-boot requests match the spec', { skip }, () => {
  for (const r of [PAUSE, resumeRequest(), ctrlAltDelRequest(), describeInstanceRequest()]) {
    assert.deepEqual(errorsOf(r), [], line(r));
  }
  assert.equal(describeInstanceRequest().body, undefined, 'a GET must not carry a body');
});

test('order: logger, machine, boot source, drives in order, nets, vsock, InstanceStart last', { skip }, () => {
  const s = SPECS['three disks, two nets'] as VmLaunchSpec;
  assert.deepEqual(buildBootRequests(s, { logger: { logPath: '/v/vmm.log' } }).map(line), [
    'PUT /logger',
    'PUT /machine-config',
    'PUT /boot-source',
    'PUT /drives/root',
    'PUT /drives/work',
    'PUT /drives/Scratch_2',
    'PUT /network-interfaces/eth0',
    'PUT /network-interfaces/eth_1',
    'PUT /vsock',
    'PUT /actions',
  ]);
  for (const [name, x] of Object.entries(SPECS)) {
    const last = buildBootRequests(x).at(-1);
    assert.deepEqual(last, { method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } }, name);
  }
});

test('bodies carry the launch spec', { skip }, () => {
  const s = SPECS['three disks, two nets'] as VmLaunchSpec;
  const byLine = new Map(buildBootRequests(s).map((r) => [line(r), r.body]));
  assert.deepEqual(byLine.get('PUT /machine-config'), { vcpu_count: 1, mem_size_mib: 256, smt: false });
  assert.deepEqual(byLine.get('PUT /boot-source'), { kernel_image_path: '/k/vmlinux', boot_args: s.cmdline });
  assert.deepEqual(byLine.get('PUT /drives/root'), {
    drive_id: 'root',
    path_on_host: '/v/root.ext4',
    is_root_device: true,
    is_read_only: false,
  });
  assert.deepEqual(byLine.get('PUT /drives/work'), {
    drive_id: 'work',
    path_on_host: '/v/work.ext4',
    is_root_device: false,
    is_read_only: false,
  });
  assert.equal((byLine.get('PUT /drives/Scratch_2') as { is_read_only: boolean }).is_read_only, false);
  assert.deepEqual(byLine.get('PUT /network-interfaces/eth0'), {
    iface_id: 'eth0',
    host_dev_name: 'tap-dev0',
    guest_mac: '06:00:ac:10:00:02',
  });
  assert.deepEqual(byLine.get('PUT /vsock'), { guest_cid: 3, uds_path: '/r/agent.sock' });

  const withInitrd = buildBootRequests(SPECS['initrd, root and work disks'] as VmLaunchSpec);
  assert.deepEqual(withInitrd.find((r) => r.path === '/boot-source')?.body, {
    kernel_image_path: '/k/vmlinux',
    boot_args: s.cmdline,
    initrd_path: '/v/initrd.img',
  });
  assert.deepEqual(buildBootRequests(s, { logger: { logPath: '/v/vmm.log' } })[0]?.body, {
    log_path: '/v/vmm.log',
    level: 'Info',
    show_level: true,
    show_log_origin: false,
  });
});

test('ids other than letters, digits and underscores are rejected with a clear error', { skip }, () => {
  for (const id of ['root-1', 'a b', '', 'disk.0', 'ü', '../x', 'a/b']) {
    assert.throws(
      () => buildBootRequests(spec({ disks: [{ id, path: '/v/x', format: 'raw' }] })),
      (e: Error) => e instanceof FirecrackerConfigError && /drive id .*letters, digits and underscores/.test(e.message),
      `drive ${JSON.stringify(id)}`,
    );
    assert.throws(
      () => buildBootRequests(spec({ nets: [{ id, tapName: 'tap0', mac: '06:00:00:00:00:01' }] })),
      /network interface id .*letters, digits and underscores/,
      `net ${JSON.stringify(id)}`,
    );
  }
});

test('a repeated drive or interface id is rejected (Firecracker would silently replace the first)', { skip }, () => {
  const disk = { id: 'root', path: '/v/a', format: 'raw' } as const;
  assert.throws(() => buildBootRequests(spec({ disks: [disk, { ...disk, path: '/v/b' }] })), /"root" is used twice/);
  const net = { id: 'eth0', tapName: 'tap0', mac: '06:00:00:00:00:01' };
  assert.throws(() => buildBootRequests(spec({ nets: [net, { ...net, tapName: 'tap1' }] })), /"eth0" is used twice/);
});

test('a qcow2 disk is rejected: Firecracker only reads raw images', { skip }, () => {
  assert.throws(
    () =>
      buildBootRequests(
        spec({
          disks: [
            { id: 'root', path: '/v/root.ext4', format: 'raw' },
            { id: 'work', path: '/v/work.qcow2', format: 'qcow2' },
          ],
        }),
      ),
    (e: Error) =>
      e instanceof FirecrackerConfigError && e.message.includes('"work"') && e.message.includes('/v/work.qcow2') && /qcow2.*only supports raw/.test(e.message),
  );
});

test('machine sizes and network settings outside what Firecracker takes are rejected', { skip }, () => {
  for (const vcpus of [0, 33, 1.5, Number.NaN]) assert.throws(() => buildBootRequests(spec({ vcpus })), /1-32 vCPUs/);
  for (const memoryMib of [0, -1, 0.5]) assert.throws(() => buildBootRequests(spec({ memoryMib })), /memory/);
  const net = (over: object) => spec({ nets: [{ id: 'eth0', tapName: 'tap0', mac: '06:00:00:00:00:01', ...over }] });
  for (const mac of ['06:00:00:00:00', '06-00-00-00-00-01', 'zz:00:00:00:00:01', '']) {
    assert.throws(() => buildBootRequests(net({ mac })), /invalid MAC/);
  }
  for (const tapName of ['', 'a-very-long-tap-name', 'tap 0']) {
    assert.throws(() => buildBootRequests(net({ tapName })), /invalid tap device name/);
  }
  assert.throws(() => buildBootRequests(spec({ kernelPath: '' })), /kernel path/);
});

test('the --id instance id is always one Firecracker accepts', { skip }, () => {
  const valid = /^[A-Za-z0-9-]{1,64}$/;
  for (const vmId of ['0123456789abcdef0123456789abcdef', 'my_vm', '', 'x'.repeat(100), 'ünï code', 'a.b/c']) {
    assert.match(instanceIdFor(vmId), valid, vmId);
  }
  assert.equal(instanceIdFor('0123456789abcdef0123456789abcdef'), '0123456789abcdef0123456789abcdef');
  assert.equal(instanceIdFor('my_vm'), 'my-vm');
});

test('instance state is read from GET / answers and garbage is refused', { skip }, () => {
  for (const state of ['Not started', 'Running', 'Paused'] as const) {
    const info = { app_name: 'Firecracker', id: 'x', state, vmm_version: '1.16.1' };
    assert.deepEqual(validator.validateDefinition('InstanceInfo', info), []);
    assert.equal(instanceStateOf(info), state);
  }
  for (const bad of [undefined, null, {}, { state: 'running' }, 'Running']) assert.throws(() => instanceStateOf(bad));
});
