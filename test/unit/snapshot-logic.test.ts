import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SnapshotManifest } from '../../src/api/schemas.js';
import { chainOf, liveLayerIds } from '../../src/daemon/services/layer-graph.js';
import { DEVICE_MODEL_VERSION, describeIncompatibility, deviceHash, incompatibility, warmKey } from '../../src/daemon/services/snapshot-manifest.js';

const L = (id: string, parent: string | null = null) => ({ id, parent_id: parent });

test('live layers: every VM top and snapshot layer, and everything below them; nothing else', () => {
  // image ← a0 (frozen by snapshot S) ← a1 (VM A's top) ; a0 ← b1 (clone B's top) ; x0 ← x1 (orphans)
  const layers = [L('a0'), L('a1', 'a0'), L('b1', 'a0'), L('x0'), L('x1', 'x0'), L('w0'), L('w1', 'w0')];
  const live = liveLayerIds(layers, ['a1', 'b1', 'w1'], ['a0']);
  assert.deepEqual([...live].sort(), ['a0', 'a1', 'b1', 'w0', 'w1']);
  // VM A deleted: its top goes; a0 stays for the snapshot and for B.
  assert.deepEqual([...liveLayerIds(layers, ['b1'], ['a0'])].sort(), ['a0', 'b1']);
  // Snapshot deleted too, B still reaches a0: deleting a snapshot never breaks a VM layered on it.
  assert.deepEqual([...liveLayerIds(layers, ['b1'], [])].sort(), ['a0', 'b1']);
  // Nothing left: nothing is live.
  assert.equal(liveLayerIds(layers, [null, null], [null]).size, 0);
  // An id without a row (a row already deleted) is ignored, not followed.
  assert.deepEqual([...liveLayerIds(layers, ['ghost'], [])], []);
});

test('a chain walk ends at the bottom, at an unknown id, and at a cycle', () => {
  assert.deepEqual(chainOf([L('a0'), L('a1', 'a0'), L('a2', 'a1')], 'a2'), ['a2', 'a1', 'a0']);
  assert.deepEqual(chainOf([L('a1', 'gone')], 'a1'), ['a1']);
  assert.deepEqual(chainOf([L('p', 'q'), L('q', 'p')], 'p'), ['p', 'q']);
});

const manifest = (over: Partial<SnapshotManifest> = {}): SnapshotManifest => ({
  format: 1,
  vmm: 'qemu',
  vmmVersion: 'QEMU emulator version 7.2.22',
  deviceHash: deviceHash({ vmm: 'qemu', vcpus: 2, memoryMib: 512 }),
  kernelId: 'k1',
  kernelName: 'debian-cloud',
  imageId: 'i1',
  imageName: 'img',
  agentHash: 'agent-1',
  vcpus: 2,
  memoryMib: 512,
  diskSizeBytes: 1024 ** 3,
  memory: true,
  stateBytes: 60_000,
  memoryBytes: 90_000_000,
  sourceVm: 'src',
  takenAt: 'running',
  ...over,
});
const here = { vmm: 'qemu', vmmVersion: 'QEMU emulator version 7.2.22', agentHash: 'agent-1', kernelId: 'k1' };

test('a manifest is compatible only when VMM, its version, kernel, agent and devices all match; the first difference is named', () => {
  assert.equal(incompatibility(manifest(), here), undefined);
  assert.equal(incompatibility(manifest(), { ...here, vmmVersion: 'QEMU emulator version 8.0.0' })?.field, 'vmmVersion');
  assert.equal(incompatibility(manifest(), { ...here, kernelId: 'k2' })?.field, 'kernelId');
  assert.equal(incompatibility(manifest(), { ...here, agentHash: 'agent-2' })?.field, 'agentHash');
  assert.equal(incompatibility(manifest(), { ...here, vmm: 'firecracker' })?.field, 'vmm');
  // A device layout from another banger (or a hash that does not fit the recorded size).
  const bad = incompatibility(manifest({ deviceHash: 'from-an-older-banger' }), here);
  assert.equal(bad?.field, 'deviceHash');
  assert.match(describeIncompatibility(bad as NonNullable<typeof bad>), /^deviceHash differs \(snapshot: from-an-older-banger, here: [0-9a-f]{12}…\)$/);
  assert.equal(describeIncompatibility({ field: 'kernelId', snapshot: 'k1', here: 'k2' }), 'kernelId differs (snapshot: k1, here: k2)');
});

test('the device hash changes with vCPUs, memory, the VMM and the device model; the warm key with every size field', () => {
  const base = deviceHash({ vmm: 'qemu', vcpus: 2, memoryMib: 512 });
  assert.notEqual(deviceHash({ vmm: 'qemu', vcpus: 1, memoryMib: 512 }), base, 'QEMU itself does not notice another vCPU count');
  assert.notEqual(deviceHash({ vmm: 'qemu', vcpus: 2, memoryMib: 1024 }), base);
  assert.notEqual(deviceHash({ vmm: 'firecracker', vcpus: 2, memoryMib: 512 }), base);
  assert.equal(deviceHash({ vmm: 'qemu', vcpus: 2, memoryMib: 512 }), base);
  assert.ok(DEVICE_MODEL_VERSION >= 1);
  const k = { imageId: 'i', vcpus: 2, memoryMib: 512, diskSizeBytes: 1 };
  assert.notEqual(warmKey({ ...k, diskSizeBytes: 2 }), warmKey(k));
  assert.notEqual(warmKey({ ...k, vcpus: 1 }), warmKey(k));
  assert.notEqual(warmKey({ ...k, imageId: 'j' }), warmKey(k));
});
