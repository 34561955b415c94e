import type { VmLaunchSpec } from '../driver.js';
import { confinementArgs, type QemuConfinement, type RunAsSpelling } from './sandbox.js';

export const AGENT_PORT_NAME = 'org.banger.agent';
/** Virtio-serial ports for bulk sessions (docs/processes.md, data channels). */
export const AGENT_DATA_PORTS = 4;
export const agentDataPortName = (k: number) => `org.banger.data.${k}`;
/** Host socket of data port k: beside the control socket, `agent-data-<k>.sock`. */
export const agentDataSocketPath = (agentSocketPath: string, k: number) => agentSocketPath.replace(/[^/]*$/, `agent-data-${k}.sock`);

/** QEMU's option syntax uses ',' as separator; a literal comma in a value is written ',,'. */
const esc = (v: string) => v.replace(/,/g, ',,');

/** How a QEMU is confined (./sandbox.ts): the seccomp sandbox always, the privilege drop when configured. */
export interface ConfinementSpec extends QemuConfinement {
  runAsSpelling?: RunAsSpelling;
}

/** The id of the memory backend object of a VM whose RAM lives in a file. */
export const MEMORY_BACKEND_ID = 'ram0';

/**
 * Pure: the machine every banger guest boots on (VMs and the KVM boot probe alike): microvm with
 * no default devices, under the seccomp sandbox (and dropping to `runAs` when given), the serial
 * console appended to a file, a kernel, an optional initrd and a command line. With sharedMemory
 * the guest RAM is a memfd mapped shared (so a snapshot needs only a copy of it plus the device
 * state); without, anonymous RAM.
 */
export function microvmArgs(
  o: Pick<VmLaunchSpec, 'accel' | 'vcpus' | 'memoryMib' | 'serialLogPath' | 'kernelPath' | 'initrdPath' | 'cmdline' | 'sharedMemory'>,
  confinement: ConfinementSpec = {},
): string[] {
  const accel = o.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi', '-cpu', 'max'];
  const memory = o.sharedMemory ? ['-object', `memory-backend-memfd,id=${MEMORY_BACKEND_ID},size=${o.memoryMib}M,share=on`] : [];
  return [
    '-M',
    `microvm,acpi=on,pcie=off${o.sharedMemory ? `,memory-backend=${MEMORY_BACKEND_ID}` : ''}`,
    ...accel,
    '-smp',
    String(o.vcpus),
    '-m',
    `${o.memoryMib}M`,
    ...memory,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    ...confinementArgs(confinement, confinement.runAsSpelling),
    '-chardev',
    `file,id=serial0,path=${esc(o.serialLogPath)},append=on`,
    '-serial',
    'chardev:serial0',
    '-kernel',
    o.kernelPath,
    ...(o.initrdPath ? ['-initrd', o.initrdPath] : []),
    '-append',
    o.cmdline,
  ];
}

/**
 * Pure: the qemu-system-x86_64 argv for a microvm guest. Every device sits on virtio-mmio,
 * which `microvm,acpi=on` describes in ACPI (how Debian's cloud kernel finds them).
 */
export function buildQemuArgs(spec: VmLaunchSpec, qmpSocket: string, confinement: ConfinementSpec = {}): string[] {
  const args = ['-name', `banger-${spec.name},debug-threads=off`, ...microvmArgs(spec, confinement)];
  for (const d of spec.disks) {
    args.push('-drive', `id=${d.id},file=${esc(d.path)},format=${d.format},if=none,cache=writeback,discard=unmap`);
    args.push('-device', `virtio-blk-device,drive=${d.id}`);
  }
  for (const n of spec.nets) {
    args.push('-netdev', `tap,id=${n.id},ifname=${n.tapName},script=no,downscript=no`);
    args.push('-device', `virtio-net-device,netdev=${n.id},mac=${n.mac}`);
  }
  args.push(
    '-chardev',
    `socket,id=agent0,path=${esc(spec.agentSocketPath)},server=on,wait=off`,
    '-device',
    'virtio-serial-device',
    '-device',
    `virtserialport,chardev=agent0,name=${AGENT_PORT_NAME}`,
  );
  for (let k = 0; k < AGENT_DATA_PORTS; k++) {
    args.push(
      '-chardev',
      `socket,id=agentdata${k},path=${esc(agentDataSocketPath(spec.agentSocketPath, k))},server=on,wait=off`,
      '-device',
      `virtserialport,chardev=agentdata${k},name=${agentDataPortName(k)}`,
    );
  }
  args.push('-qmp', `unix:${esc(qmpSocket)},server=on,wait=off`);
  // A restore: vCPUs stopped, and QEMU waits for `migrate-incoming` (over QMP, once x-ignore-shared
  // is set there) instead of booting the kernel.
  if (spec.restore) args.push('-S', '-incoming', 'defer');
  return args;
}
