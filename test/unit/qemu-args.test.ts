import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import { AGENT_DATA_PORTS, AGENT_PORT_NAME, buildQemuArgs, microvmArgs } from '../../src/vmm/qemu/args.js';
import { QEMU_SANDBOX_POLICY, qemuSandboxPolicy, runAsSpellingOf } from '../../src/vmm/qemu/sandbox.js';

const spec = (over: Partial<VmLaunchSpec> = {}): VmLaunchSpec => ({
  vmId: 'abc',
  name: 'dev',
  vcpus: 2,
  memoryMib: 1024,
  kernelPath: '/k/vmlinuz',
  initrdPath: '/v/initrd.img',
  cmdline: 'console=ttyS0 root=/dev/vda',
  disks: [
    { id: 'root', path: '/v/root.qcow2', format: 'qcow2' },
    { id: 'work', path: '/v/work.ext4', format: 'raw' },
  ],
  nets: [],
  runDir: '/r',
  serialLogPath: '/v/serial.log',
  vmmLogPath: '/v/vmm.log',
  agentSocketPath: '/r/agent.sock',
  accel: 'tcg',
  ...over,
});

const after = (args: string[], flag: string) => args.filter((_, i) => args[i - 1] === flag);

test('TCG guests use multi-threaded TCG with -cpu max (svm=off breaks static binaries)', () => {
  const a = buildQemuArgs(spec(), '/r/qmp.sock');
  assert.deepEqual(after(a, '-accel'), ['tcg,thread=multi']);
  assert.deepEqual(after(a, '-cpu'), ['max']);
  assert.deepEqual(after(a, '-M'), ['microvm,acpi=on,pcie=off']);
});

test('KVM guests use the host CPU model', () => {
  const a = buildQemuArgs(spec({ accel: 'kvm' }), '/r/qmp.sock');
  assert.deepEqual(after(a, '-accel'), ['kvm']);
  assert.deepEqual(after(a, '-cpu'), ['host']);
});

test('disks keep their order (root = vda, work = vdb) and formats', () => {
  const a = buildQemuArgs(spec(), '/r/qmp.sock');
  const drives = after(a, '-drive');
  assert.equal(drives.length, 2);
  assert.match(drives[0] as string, /^id=root,file=\/v\/root\.qcow2,format=qcow2,/);
  assert.match(drives[1] as string, /^id=work,file=\/v\/work\.ext4,format=raw,/);
  assert.deepEqual(
    after(a, '-device').filter((d) => d.startsWith('virtio-blk')),
    ['virtio-blk-device,drive=root', 'virtio-blk-device,drive=work'],
  );
});

test('commas in paths are escaped so they cannot inject options', () => {
  const a = buildQemuArgs(spec({ serialLogPath: '/v/a,b.log', disks: [{ id: 'root', path: '/v/x,format=raw', format: 'qcow2' }] }), '/r/q,mp.sock');
  assert.ok(after(a, '-drive')[0]?.startsWith('id=root,file=/v/x,,format=raw,format=qcow2'));
  assert.ok(after(a, '-chardev').some((c) => c.includes('path=/v/a,,b.log')));
  assert.deepEqual(after(a, '-qmp'), ['unix:/r/q,,mp.sock,server=on,wait=off']);
});

test('the agent channel is a virtio-serial port backed by a host socket server', () => {
  const a = buildQemuArgs(spec(), '/r/qmp.sock');
  assert.ok(after(a, '-chardev').includes('socket,id=agent0,path=/r/agent.sock,server=on,wait=off'));
  assert.ok(after(a, '-device').includes(`virtserialport,chardev=agent0,name=${AGENT_PORT_NAME}`));
});

test('bulk data gets its own virtio-serial ports, one host socket each, beside the control socket', () => {
  const a = buildQemuArgs(spec(), '/r/qmp.sock');
  for (let k = 0; k < AGENT_DATA_PORTS; k++) {
    assert.ok(after(a, '-chardev').includes(`socket,id=agentdata${k},path=/r/agent-data-${k}.sock,server=on,wait=off`));
    assert.ok(after(a, '-device').includes(`virtserialport,chardev=agentdata${k},name=org.banger.data.${k}`));
  }
  assert.equal(after(a, '-chardev').filter((c) => c.includes('agent-data-')).length, AGENT_DATA_PORTS);
});

test('initrd is optional; kernel, append, smp and memory are passed through', () => {
  const a = buildQemuArgs(spec({ initrdPath: undefined } as Partial<VmLaunchSpec>), '/r/qmp.sock');
  assert.deepEqual(after(a, '-initrd'), []);
  assert.deepEqual(after(a, '-kernel'), ['/k/vmlinuz']);
  assert.deepEqual(after(a, '-append'), ['console=ttyS0 root=/dev/vda']);
  assert.deepEqual(after(a, '-smp'), ['2']);
  assert.deepEqual(after(a, '-m'), ['1024M']);
});

test('TAP networks become virtio-net devices', () => {
  const a = buildQemuArgs(spec({ nets: [{ id: 'net0', tapName: 'bgtap0', mac: '52:54:00:00:00:01' }] }), '/r/qmp.sock');
  assert.deepEqual(after(a, '-netdev'), ['tap,id=net0,ifname=bgtap0,script=no,downscript=no']);
  assert.ok(after(a, '-device').includes('virtio-net-device,netdev=net0,mac=52:54:00:00:00:01'));
});

test('every QEMU runs under the strict seccomp sandbox; no privilege drop unless configured', () => {
  for (const accel of ['tcg', 'kvm'] as const) {
    const a = buildQemuArgs(spec({ accel }), '/r/qmp.sock');
    assert.deepEqual(after(a, '-sandbox'), [QEMU_SANDBOX_POLICY]);
    assert.equal(QEMU_SANDBOX_POLICY, 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    assert.deepEqual(after(a, '-runas'), []);
    assert.equal(a.includes('-run-with'), false);
  }
  // The KVM boot probe boots on the same machine arguments, so it is sandboxed too.
  const probe = microvmArgs({ accel: 'kvm', vcpus: 1, memoryMib: 256, serialLogPath: '/p/s.log', kernelPath: '/k', cmdline: 'x' });
  assert.deepEqual(after(probe, '-sandbox'), [QEMU_SANDBOX_POLICY]);
});

test('with a vmm user QEMU drops to it (-runas on 7.2, -run-with user= on newer QEMU); set*id is then allowed for that one drop', () => {
  const a = buildQemuArgs(spec(), '/r/qmp.sock', { runAs: 'banger-vmm' });
  assert.deepEqual(after(a, '-runas'), ['banger-vmm']);
  assert.deepEqual(after(a, '-sandbox'), ['on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny']);
  assert.equal(qemuSandboxPolicy({ runAs: 'x' }), after(a, '-sandbox')[0]);
  const newer = buildQemuArgs(spec(), '/r/qmp.sock', { runAs: '123:456', runAsSpelling: 'run-with' });
  assert.deepEqual(after(newer, '-run-with'), ['user=123:456']);
  assert.deepEqual(after(newer, '-runas'), []);
});

test('a vmm user that is not a plain user name or uid:gid never reaches the argv', () => {
  for (const bad of ['root,foo=bar', '-daemonize', 'a b', '../x', '', 'x:y']) {
    assert.throws(
      () => buildQemuArgs(spec(), '/r/qmp.sock', { runAs: bad }),
      (e: unknown) => e instanceof BangerError && e.code === 'invalid_config',
      bad,
    );
  }
});

test('the privilege-drop spelling is read from QEMU -help', () => {
  assert.equal(runAsSpellingOf('-runas user     change to user id user just before starting the VM\n'), 'runas');
  assert.equal(runAsSpellingOf('-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]\n'), 'run-with');
  assert.equal(runAsSpellingOf(''), 'runas');
});

test('sharedMemory makes guest RAM a shared memfd, the machine memory backend (no file name anywhere); without it RAM stays anonymous', () => {
  const a = buildQemuArgs(spec({ sharedMemory: true }), '/r/qmp.sock');
  assert.deepEqual(after(a, '-M'), ['microvm,acpi=on,pcie=off,memory-backend=ram0']);
  assert.deepEqual(after(a, '-object'), ['memory-backend-memfd,id=ram0,size=1024M,share=on']);
  assert.deepEqual(after(a, '-m'), ['1024M'], 'the backend size and -m agree (QEMU refuses a mismatch)');
  assert.equal(
    a.some((x) => x.includes('/dev/shm') || x.includes('mem-path')),
    false,
  );
  const plain = buildQemuArgs(spec(), '/r/qmp.sock');
  assert.deepEqual(after(plain, '-object'), []);
  assert.equal(plain.includes('-incoming'), false);
});

test('a restore starts with stopped vCPUs and waits for the state over QMP (-S -incoming defer), never an exec: or file URI on the command line', () => {
  const a = buildQemuArgs(spec({ sharedMemory: true, restore: { statePath: '/s/state', memoryPath: '/s/mem' } }), '/r/qmp.sock');
  assert.deepEqual(after(a, '-incoming'), ['defer']);
  assert.equal(a.filter((x) => x === '-S').length, 1);
  assert.equal(
    a.some((x) => x.includes('/s/state') || x.includes('/s/mem')),
    false,
    'the saved files are read by the driver, not named to QEMU',
  );
  assert.equal(buildQemuArgs(spec({ sharedMemory: true }), '/r/qmp.sock').includes('-S'), false);
});
