import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import { AGENT_PORT_NAME, buildQemuArgs } from '../../src/vmm/qemu/args.js';

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
