import { createHash } from 'node:crypto';
import type { SnapshotManifest } from '../../api/schemas.js';

/**
 * Bumped whenever the devices banger gives a VM change shape (their order, kinds or ids in the
 * VMM's configuration): a saved device state only loads into the same devices.
 */
export const DEVICE_MODEL_VERSION = 2;

/** Pure: the hash of the device configuration a restore must reproduce. */
export function deviceHash(o: { vmm: string; vcpus: number; memoryMib: number }): string {
  const model = { model: DEVICE_MODEL_VERSION, vmm: o.vmm, vcpus: o.vcpus, memoryMib: o.memoryMib, disks: ['root', 'work'], nets: ['net0'] };
  return createHash('sha256').update(JSON.stringify(model)).digest('hex');
}

/** What this daemon would run a restored VM with: every field a manifest must match. */
export interface RestoreTarget {
  vmm: string;
  vmmVersion: string;
  agentHash: string;
  /** The kernel the snapshot's image boots with today (an image can be re-pointed). */
  kernelId: string;
}

export interface Incompatibility {
  field: 'vmm' | 'vmmVersion' | 'kernelId' | 'agentHash' | 'deviceHash';
  snapshot: string;
  here: string;
}

/** Pure: the first field in which a snapshot's manifest differs from what a restore here would use (undefined: compatible). */
export function incompatibility(m: SnapshotManifest, t: RestoreTarget): Incompatibility | undefined {
  const checks: Array<[Incompatibility['field'], string, string]> = [
    ['vmm', m.vmm, t.vmm],
    ['vmmVersion', m.vmmVersion, t.vmmVersion],
    ['kernelId', m.kernelId, t.kernelId],
    ['agentHash', m.agentHash, t.agentHash],
    ['deviceHash', m.deviceHash, deviceHash({ vmm: t.vmm, vcpus: m.vcpus, memoryMib: m.memoryMib })],
  ];
  for (const [field, snapshot, here] of checks) if (snapshot !== here) return { field, snapshot, here };
  return undefined;
}

/** Pure: how warm snapshots are found for a create — the image and the whole size. */
export function warmKey(o: { imageId: string; vcpus: number; memoryMib: number; diskSizeBytes: number }): string {
  return `${o.imageId}:${o.vcpus}:${o.memoryMib}:${o.diskSizeBytes}`;
}

/** Pure: a readable line for an incompatibility (operation logs, error messages). */
export function describeIncompatibility(i: Incompatibility): string {
  const short = (v: string) => (v.length > 24 ? `${v.slice(0, 12)}…` : v);
  return `${i.field} differs (snapshot: ${short(i.snapshot)}, here: ${short(i.here)})`;
}
