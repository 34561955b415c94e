import { readHostTscKhz } from '../host/cpu.js';
import { buildCmdline } from './cmdline.js';
import { FIRST_BOOT_SCRIPT } from './first-boot.js';
import { buildPayloadCpio, type PayloadExtra, writeVmInitrd } from './initramfs.js';

/** The work disk is the VM's second virtio-blk device; banger-init mounts it at /root. */
export const WORK_DISK_DEVICE = '/dev/vdb';

/** A VM's initrd: its kernel's cached base initramfs followed by this VM's payload. */
export async function buildVmInitrd(o: {
  baseInitramfs: string;
  outPath: string;
  hostname: string;
  agentBinary: string;
  files: readonly PayloadExtra[];
  /** Run the first-boot script (its files are among `files`). */
  firstBoot?: boolean;
  /** Static guest address; banger-init configures the first NIC before switching root. */
  network?: { ip: string; prefix: number; gateway: string };
}): Promise<void> {
  const payload = await buildPayloadCpio({
    agentBinary: o.agentBinary,
    hostname: o.hostname,
    extraFiles: o.files,
    config: {
      work_disk: WORK_DISK_DEVICE,
      ...(o.firstBoot ? { first_boot: FIRST_BOOT_SCRIPT } : {}),
      ...(o.network ? { net_dev: 'eth0', net_addr: `${o.network.ip}/${o.network.prefix}`, net_gw: o.network.gateway } : {}),
    },
  });
  await writeVmInitrd({ baseInitramfs: o.baseInitramfs, payload, outPath: o.outPath });
}

let tscKhz: Promise<number | undefined> | undefined;

/** The guest command line; the host TSC rate is read once (it cannot change while we run). */
export async function vmCmdline(o: { hostname: string; ip?: string }): Promise<string> {
  tscKhz ??= readHostTscKhz();
  const khz = await tscKhz;
  return buildCmdline({ hostname: o.hostname, ...(khz !== undefined ? { tscKhz: khz } : {}), ...(o.ip ? { ip: o.ip } : {}) });
}
