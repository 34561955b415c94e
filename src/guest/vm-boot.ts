import { readHostTscKhz } from '../host/cpu.js';
import { type GuestFile, hostKeyFiles } from '../host/ssh-keys.js';
import { buildCmdline } from './cmdline.js';
import { FIRST_BOOT_SCRIPT, firstBootFiles } from './first-boot.js';
import { buildPayloadCpio, type PayloadExtra, writeVmInitrd } from './initramfs.js';

/**
 * The ext4 label of a work disk made empty for banger-init to seed from the image's /root at first
 * boot (agent/banger-init.c has the same string). Disks of older versions are labelled
 * banger-work and already hold their files: they are never seeded.
 */
export const WORK_LABEL_UNSEEDED = 'banger-unseeded';

/** The work disk is the VM's second virtio-blk device; banger-init mounts it at /root. */
export const WORK_DISK_DEVICE = '/dev/vdb';

/** The guest's network as banger-init and the resolver files need it. */
export interface GuestNetwork {
  ip: string;
  prefix: number;
  gateway: string;
  /** banger's DNS on the bridge first, then the upstream ones (glibc moves on after REFUSED). */
  nameservers: readonly string[];
}

/**
 * A VM's initrd: its kernel's cached base initramfs followed by this VM's payload — the one place
 * that decides what a VM gets at boot: the agent, its hostname, its own SSH host key, banger's
 * authorized key, its resolver and hosts files, its static address, and (images without sshd,
 * with NAT) the first-boot sshd install.
 */
export async function buildVmInitrd(o: {
  baseInitramfs: string;
  outPath: string;
  hostname: string;
  agentBinary: string;
  /** Directory holding the VM's ssh_host_ed25519_key(.pub). */
  hostKeyDir: string;
  /** banger's public key, authorized for root. */
  authorizedKey: string;
  network: GuestNetwork;
  firstBoot: boolean;
}): Promise<void> {
  const files: PayloadExtra[] = [
    ...(await hostKeyFiles(o.hostKeyDir)),
    ...guestNetworkFiles(o.hostname, o.network),
    ...authorizedKeyFiles(o.authorizedKey),
    ...earlySshdFiles(),
    ...(o.firstBoot ? firstBootFiles() : []),
  ];
  const payload = await buildPayloadCpio({
    agentBinary: o.agentBinary,
    hostname: o.hostname,
    extraFiles: files,
    config: {
      work_disk: WORK_DISK_DEVICE,
      ...(o.firstBoot ? { first_boot: FIRST_BOOT_SCRIPT } : {}),
      net_dev: 'eth0',
      net_addr: `${o.network.ip}/${o.network.prefix}`,
      net_gw: o.network.gateway,
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

/** The guest's resolver and hosts files (banger's DNS first; glibc tries the next server after REFUSED). */
export function guestNetworkFiles(name: string, net: GuestNetwork): GuestFile[] {
  return [
    { path: '/etc/resolv.conf', mode: 0o644, content: `${net.nameservers.map((ns) => `nameserver ${ns}`).join('\n')}\noptions timeout:2 attempts:2\n` },
    {
      path: '/etc/hosts',
      mode: 0o644,
      content: `127.0.0.1 localhost\n${net.ip} ${name}.vm ${name}\n::1 localhost ip6-localhost ip6-loopback\n`,
    },
  ];
}

/**
 * banger's key is authorized through sshd's own config, not the user's ~/.ssh/authorized_keys on
 * the work disk: nothing of the user's is overwritten, and removing the file revokes it.
 */
export function authorizedKeyFiles(publicKey: string): GuestFile[] {
  return [
    { path: '/etc/ssh/banger_authorized_keys', mode: 0o644, content: `${publicKey.trim()}\n` },
    {
      path: '/etc/ssh/sshd_config.d/50-banger.conf',
      mode: 0o644,
      content: 'AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2 /etc/ssh/banger_authorized_keys\n',
    },
  ];
}

/**
 * sshd starts in parallel with early boot, as the agent does, instead of after basic.target
 * (udev, tmpfiles, sysusers: ~4 s under TCG): a VM reported ready then accepts `ssh <name>.vm` at
 * once (measured in docs/performance.md). It needs only the root filesystem, its host key
 * (payload) and the network banger-init configured before systemd ran. The config check
 * (`sshd -t`) is dropped: banger's own config drop-ins are the only change to the image's config,
 * and sshd refuses a bad config when it starts anyway. Drop-ins for both unit names (Debian's
 * ssh.service, sshd.service elsewhere); a drop-in for a unit that does not exist does nothing.
 */
export const EARLY_SSHD_DROPIN = `[Unit]
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStartPre=
`;

export function earlySshdFiles(): GuestFile[] {
  return ['ssh.service', 'sshd.service'].map((unit) => ({
    path: `/etc/systemd/system/${unit}.d/50-banger-early.conf`,
    mode: 0o644,
    content: EARLY_SSHD_DROPIN,
  }));
}
