import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeFirecrackerApi } from '../helpers/fake-firecracker.js';
import { firecrackerSpecAvailable, lenientFirecrackerSpec, loadFirecrackerSpec, NO_FIRECRACKER_SPEC, SpecValidator } from '../helpers/fake-firecracker-spec.js';

/** Contract tests: they hold banger to the official spec, so without it they skip, saying why. */
const skip = firecrackerSpecAvailable() ? false : NO_FIRECRACKER_SPEC;

// The contract test is only worth something if its validator and the fake can say no.
const spec = firecrackerSpecAvailable() ? loadFirecrackerSpec() : lenientFirecrackerSpec();
const validator = new SpecValidator(spec);

const MACHINE = { vcpu_count: 2, mem_size_mib: 256, smt: false };
const BOOT = { kernel_image_path: '/k/vmlinux', boot_args: 'console=ttyS0' };
const DRIVE = { drive_id: 'root', path_on_host: '/v/root.ext4', is_root_device: true, is_read_only: false };
const NET = { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: '06:00:00:00:00:01' };

const errors = (method: string, path: string, body?: unknown) => validator.checkRequest(method, path, body).errors;
const rejects = (method: string, path: string, body: unknown, pattern: RegExp) => {
  const e = errors(method, path, body);
  assert.ok(
    e.some((m) => pattern.test(m)),
    `${method} ${path} ${JSON.stringify(body)}: want ${pattern}, got ${JSON.stringify(e)}`,
  );
};

function started(): FakeFirecrackerApi {
  const fake = new FakeFirecrackerApi({ validator });
  for (const [path, body] of [
    ['/machine-config', MACHINE],
    ['/boot-source', BOOT],
    ['/drives/root', DRIVE],
    ['/actions', { action_type: 'InstanceStart' }],
  ] as const) {
    assert.equal(fake.handle('PUT', path, JSON.stringify(body)).status, 204, path);
  }
  return fake;
}

const faultOf = (r: { status: number; body?: unknown }) => {
  assert.equal(r.status, 400);
  assert.deepEqual(validator.validateDefinition('Error', r.body), []);
  return (r.body as { fault_message: string }).fault_message;
};

test('the spec is the Firecracker API description and has what banger uses', { skip }, () => {
  assert.match(spec.info.version, /^1\.\d+\.\d+/);
  const used = ['/', '/actions', '/boot-source', '/drives/{drive_id}', '/logger', '/machine-config'];
  for (const p of [...used, '/network-interfaces/{iface_id}', '/vm', '/vsock']) assert.ok(spec.paths[p], p);
  assert.ok(Object.keys(spec.definitions).length >= 40);
});

test('the validator refuses schema keywords it does not implement instead of ignoring them', { skip }, () => {
  const withPattern = { ...spec, definitions: { ...spec.definitions, X: { type: 'string', pattern: '^a$' } } };
  assert.throws(() => new SpecValidator(withPattern), /keyword "pattern"/);
  const withAllOf = { ...spec, definitions: { ...spec.definitions, Y: { type: 'object', properties: { a: { allOf: [] } } } } };
  assert.throws(() => new SpecValidator(withAllOf), /keyword "allOf"/);
});

test('valid baselines pass, so the rejections below are real', { skip }, () => {
  assert.deepEqual(errors('PUT', '/machine-config', MACHINE), []);
  assert.deepEqual(errors('PUT', '/boot-source', BOOT), []);
  assert.deepEqual(errors('PUT', '/drives/root', DRIVE), []);
  assert.deepEqual(errors('PUT', '/network-interfaces/eth0', NET), []);
  assert.deepEqual(errors('PUT', '/vsock', { guest_cid: 3, uds_path: '/r/a.sock' }), []);
  assert.deepEqual(errors('PATCH', '/vm', { state: 'Paused' }), []);
  assert.deepEqual(errors('GET', '/'), []);
  const limited = { ...DRIVE, rate_limiter: { bandwidth: { size: 1, refill_time: 100 } } };
  assert.deepEqual(errors('PUT', '/drives/root', limited), []);
});

test('unknown fields are rejected, also nested ones (Firecracker denies unknown fields)', { skip }, () => {
  rejects('PUT', '/machine-config', { ...MACHINE, vcpus: 2 }, /unknown field vcpus/);
  rejects('PUT', '/boot-source', { ...BOOT, initrd: '/i' }, /unknown field initrd/);
  rejects('PUT', '/drives/root', { ...DRIVE, format: 'raw' }, /unknown field format/);
  rejects('PUT', '/actions', { action_type: 'InstanceStart', now: true }, /unknown field now/);
  const nested = { ...DRIVE, rate_limiter: { bandwidth: { size: 1, refill_time: 100, burst: 5 } } };
  rejects('PUT', '/drives/root', nested, /\$\.rate_limiter\.bandwidth: unknown field burst/);
});

test('wrong types, enum values, bounds and missing required fields are rejected', { skip }, () => {
  rejects('PUT', '/machine-config', { ...MACHINE, vcpu_count: '2' }, /vcpu_count: expected integer, got string/);
  rejects('PUT', '/machine-config', { ...MACHINE, mem_size_mib: 1.5 }, /mem_size_mib: expected integer/);
  rejects('PUT', '/machine-config', { ...MACHINE, vcpu_count: 0 }, /below the minimum 1/);
  rejects('PUT', '/machine-config', { ...MACHINE, vcpu_count: 33 }, /above the maximum 32/);
  rejects('PUT', '/machine-config', { mem_size_mib: 256 }, /missing required field vcpu_count/);
  rejects('PUT', '/drives/root', { ...DRIVE, is_root_device: 'true' }, /is_root_device: expected boolean/);
  rejects('PUT', '/drives/root', { drive_id: 'root', path_on_host: '/x' }, /missing required field is_root_device/);
  rejects('PUT', '/drives/root', { ...DRIVE, cache_type: 'WriteThrough' }, /is not one of/);
  rejects('PUT', '/boot-source', {}, /missing required field kernel_image_path/);
  rejects('PUT', '/boot-source', [BOOT], /expected object, got array/);
  rejects('PUT', '/boot-source', null, /expected object, got null/);
  rejects('PUT', '/vsock', { guest_cid: 2, uds_path: '/r/a.sock' }, /below the minimum 3/);
  rejects('PATCH', '/vm', { state: 'Stopped' }, /is not one of/);
  rejects('PUT', '/actions', { action_type: 'Reboot' }, /is not one of/);
});

test('path ids must be letters, digits and underscores, non-empty, and equal to the body id', { skip }, () => {
  for (const id of ['root-1', 'disk.0', 'r%C3%BC', 'a%20b']) {
    rejects('PUT', `/drives/${id}`, { ...DRIVE, drive_id: id }, /only contain alphanumeric characters and underscores/);
  }
  rejects('PUT', '/drives/', { ...DRIVE, drive_id: '' }, /cannot be empty/);
  rejects('PUT', '/network-interfaces/eth-0', { ...NET, iface_id: 'eth-0' }, /alphanumeric characters and underscores/);
  rejects('PUT', '/drives/root', { ...DRIVE, drive_id: 'work' }, /does not match the id from the body/);
  rejects('PUT', '/network-interfaces/eth0', { ...NET, iface_id: 'eth1' }, /does not match/);
});

test('unknown paths and methods, a GET with a body and a PUT without one are rejected', { skip }, () => {
  rejects('PUT', '/nope', {}, /Invalid request method and\/or path/);
  rejects('DELETE', '/drives/root', undefined, /Invalid request method and\/or path/);
  rejects('GET', '/drives/root', undefined, /Invalid request method and\/or path/);
  rejects('POST', '/actions', { action_type: 'InstanceStart' }, /Invalid request method and\/or path/);
  rejects('GET', '/', {}, /GET request cannot have a body/);
  rejects('PUT', '/machine-config', undefined, /Empty PUT request/);
  rejects('PATCH', '/vm', undefined, /Empty PATCH request/);
});

test('the fake refuses pause, resume and Ctrl-Alt-Del before InstanceStart', { skip }, () => {
  const fake = new FakeFirecrackerApi({ validator });
  assert.match(faultOf(fake.handle('PATCH', '/vm', '{"state":"Paused"}')), /not supported before starting/);
  assert.match(faultOf(fake.handle('PATCH', '/vm', '{"state":"Resumed"}')), /not supported before starting/);
  assert.match(faultOf(fake.handle('PUT', '/actions', '{"action_type":"SendCtrlAltDel"}')), /not supported before starting/);
  assert.equal(fake.state, 'Not started');
});

test('the fake refuses InstanceStart without a boot source', { skip }, () => {
  const fake = new FakeFirecrackerApi({ validator });
  assert.equal(fake.handle('PUT', '/machine-config', JSON.stringify(MACHINE)).status, 204);
  assert.match(faultOf(fake.handle('PUT', '/actions', '{"action_type":"InstanceStart"}')), /without kernel configuration/);
  assert.equal(fake.state, 'Not started');
});

test('the fake refuses configuration and a second InstanceStart after the start', { skip }, () => {
  const fake = started();
  for (const [path, body] of [
    ['/machine-config', MACHINE],
    ['/boot-source', BOOT],
    ['/drives/work', { ...DRIVE, drive_id: 'work', is_root_device: false }],
    ['/network-interfaces/eth0', NET],
    ['/vsock', { guest_cid: 3, uds_path: '/r/a.sock' }],
    ['/logger', { log_path: '/v/vmm.log' }],
    ['/actions', { action_type: 'InstanceStart' }],
  ] as const) {
    assert.match(faultOf(fake.handle('PUT', path, JSON.stringify(body))), /not supported after starting/, path);
  }
  assert.equal(fake.state, 'Running');
});

test('the fake tracks pause and resume in GET /, whose answer matches InstanceInfo', { skip }, () => {
  const fake = started();
  const info = () => {
    const r = fake.handle('GET', '/', undefined);
    assert.equal(r.status, 200);
    assert.deepEqual(validator.validateDefinition('InstanceInfo', r.body), []);
    return (r.body as { state: string }).state;
  };
  assert.equal(info(), 'Running');
  assert.equal(fake.handle('PATCH', '/vm', '{"state":"Paused"}').status, 204);
  assert.equal(info(), 'Paused');
  assert.equal(fake.handle('PATCH', '/vm', '{"state":"Resumed"}').status, 204);
  assert.equal(info(), 'Running');
  assert.equal(fake.handle('PUT', '/actions', '{"action_type":"SendCtrlAltDel"}').status, 204);
});

test('the fake refuses a second root drive, a reused tap device and malformed JSON', { skip }, () => {
  const fake = new FakeFirecrackerApi({ validator });
  assert.equal(fake.handle('PUT', '/drives/root', JSON.stringify(DRIVE)).status, 204);
  const second = JSON.stringify({ ...DRIVE, drive_id: 'other' });
  assert.match(faultOf(fake.handle('PUT', '/drives/other', second)), /root block device already exists/);
  assert.equal(fake.handle('PUT', '/drives/root', JSON.stringify(DRIVE)).status, 204, 'updating the root drive itself is fine');
  assert.equal(fake.handle('PUT', '/network-interfaces/eth0', JSON.stringify(NET)).status, 204);
  const clash = { ...NET, iface_id: 'eth1', guest_mac: '06:00:00:00:00:02' };
  assert.match(faultOf(fake.handle('PUT', '/network-interfaces/eth1', JSON.stringify(clash))), /tap0 is already in use/);
  assert.match(faultOf(fake.handle('PUT', '/machine-config', '{"vcpu_count": 2,')), /deserializing the json body/);
});

test('the fake records every request with its answer', { skip }, () => {
  const fake = new FakeFirecrackerApi({ validator });
  fake.handle('PUT', '/boot-source', JSON.stringify(BOOT));
  fake.handle('PUT', '/drives/bad-id', JSON.stringify({ ...DRIVE, drive_id: 'bad-id' }));
  fake.handle('GET', '/', undefined);
  assert.deepEqual(
    fake.requests.map((r) => [r.method, r.path, r.status]),
    [
      ['PUT', '/boot-source', 204],
      ['PUT', '/drives/bad-id', 400],
      ['GET', '/', 200],
    ],
  );
  assert.deepEqual(fake.requests[0]?.body, BOOT);
  assert.match(fake.requests[1]?.fault ?? '', /alphanumeric/);
});

test('a fault can be injected for one request', { skip }, () => {
  const fake = new FakeFirecrackerApi({ validator, failOn: 'PUT /vsock' });
  assert.match(faultOf(fake.handle('PUT', '/vsock', '{"guest_cid":3,"uds_path":"/r/a.sock"}')), /fake failure injected/);
});
