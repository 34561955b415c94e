import { BangerError } from '../api/errors.js';
import { SERVICE_HELPER_SOCKET, SERVICE_RUNTIME_DIR } from '../config/layout.js';
import { validateBridgeName } from '../host/netplan.js';
import { BANGERD_NODE_FLAGS } from '../util/daemon-flags.js';

/**
 * The two systemd units of the split layout, rendered as strings from a typed spec (pure: no
 * file, no host lookup). `bangerd-root.service` is the privileged helper (root, CAP_NET_ADMIN
 * only); `bangerd.service` is the API daemon, run as the unprivileged owner. docs/privileges.md
 * ("Running as a service") explains every key.
 */

export const HELPER_UNIT = 'bangerd-root.service';

/**
 * All the root helper may hold (its unit's bounding set; the supervisor applies the same one).
 * CAP_NET_ADMIN: ip link/addr/route, ip tuntap (TUNSETIFF, TUNSETOWNER, TUNSETPERSIST), nft,
 * iptables/ebtables and `sysctl -w net.ipv4.ip_forward` need it and nothing more (checked: as root
 * with only it in the bounding set each works, with an empty set each fails EPERM).
 * CAP_CHOWN + CAP_FOWNER: the helper creates its socket root-owned and hands it to the owner
 * (chown, then chmod 0600 of a file it no longer owns); without them it exits EPERM at start.
 */
export const HELPER_CAPABILITIES = ['CAP_NET_ADMIN', 'CAP_CHOWN', 'CAP_FOWNER'] as const;
export const DAEMON_UNIT = 'bangerd.service';

export interface ServiceOwner {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** The default `bridge_name`: the helper's allowlist unless --bridge says otherwise. */
export const DEFAULT_BRIDGE = 'banger0';

export interface UnitSpec {
  owner: ServiceOwner;
  /** Absolute path of the node binary the units run. */
  nodePath: string;
  /** Absolute paths of banger's bin/ scripts as installed. */
  daemonScript: string;
  helperScript: string;
  /** Whether a `kvm` group exists on the host (then the daemon gets it as a supplementary group). */
  kvmGroup: boolean;
  /** The one bridge the helper may act on (its --bridge allowlist): the owner's `bridge_name`. */
  bridge: string;
}

/**
 * A user name useradd accepts by default on Debian (NAME_REGEX): lower-case letter or `_` first,
 * then lower-case letters, digits, `_` or `-`; 32 bytes at most. Anything else never reaches a unit
 * file, an argv or /etc/subuid.
 */
export const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

export function assertUserName(name: string): void {
  if (!USER_NAME.test(name)) {
    throw new BangerError('bad_request', `${JSON.stringify(name.slice(0, 64))} is not a valid user name`, {
      fix: 'name an existing unprivileged user: lower-case letters, digits, _ or - (a letter or _ first), at most 32 characters',
    });
  }
}

/**
 * A path written into a unit: absolute, no `..`, and only characters that need no quoting or
 * escaping in systemd's syntax (`%` would be a specifier, spaces split ExecStart, quotes and
 * backslashes are interpreted).
 */
const UNIT_PATH = /^\/[A-Za-z0-9._/+@-]*$/;

export function assertUnitPath(what: string, path: string): void {
  if (!UNIT_PATH.test(path) || path.split('/').includes('..')) {
    throw new BangerError('bad_request', `${what} ${JSON.stringify(path.slice(0, 200))} cannot go into a systemd unit`, {
      fix: 'install banger (and node) under an absolute path of letters, digits and . _ - + @ only (no spaces, no %)',
    });
  }
}

function checkSpec(spec: UnitSpec): void {
  assertUserName(spec.owner.name);
  if (!Number.isInteger(spec.owner.uid) || spec.owner.uid <= 0) {
    throw new BangerError('bad_request', `the service owner must be an unprivileged user, not uid ${spec.owner.uid}`, {
      fix: 'name an unprivileged user with --owner; the all-root development mode is `banger daemon start`',
    });
  }
  assertUnitPath('owner home', spec.owner.home);
  assertUnitPath('node binary', spec.nodePath);
  assertUnitPath('bangerd script', spec.daemonScript);
  assertUnitPath('bangerd-root script', spec.helperScript);
}

const lines = (rows: Array<string | false>): string => `${rows.filter((r) => r !== false).join('\n')}\n`;

/** The privileged helper: the only root process, holding CAP_NET_ADMIN and nothing else. */
export function renderHelperUnit(spec: UnitSpec): string {
  checkSpec(spec);
  return lines([
    '# Written by `banger system install`; `banger system uninstall` removes it.',
    '[Unit]',
    'Description=banger root helper (bridge, TAPs, NAT for bangerd)',
    'After=network.target',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${spec.nodePath} ${spec.helperScript} --bridge ${validateBridgeName(spec.bridge)} --owner ${spec.owner.name} --socket ${SERVICE_HELPER_SOCKET}`,
    'Restart=on-failure',
    'RestartSec=2',
    // /run/banger-root (the socket's directory): created at start, removed at stop.
    'RuntimeDirectory=banger-root',
    'RuntimeDirectoryMode=0755',
    'UMask=0022',
    // See HELPER_CAPABILITIES.
    `CapabilityBoundingSet=${HELPER_CAPABILITIES.join(' ')}`,
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    // Legacy iptables takes this lock file; '-': a host without it (nft, iptables-nft) still starts.
    'ReadWritePaths=-/run/xtables.lock',
    'ProtectHome=yes',
    'PrivateTmp=yes',
    // ip tuntap opens /dev/net/tun; nothing else under /dev.
    'DevicePolicy=closed',
    'DeviceAllow=/dev/net/tun rw',
    // Not ProtectKernelTunables: it would make /proc/sys/net/ipv4/ip_forward read-only.
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    'SystemCallArchitectures=native',
    'RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6',
    // It talks netlink and its Unix socket, never IP: no packet in or out (ioctls on an AF_INET socket still work).
    'IPAddressDeny=any',
    'ProtectProc=invisible',
    'PrivateMounts=yes',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
  ]);
}

/** The API daemon, as the owner: VMs, images, store; asks the helper for host networking. */
export function renderDaemonUnit(spec: UnitSpec): string {
  checkSpec(spec);
  const { owner } = spec;
  return lines([
    '# Written by `banger system install`; `banger system uninstall` removes it.',
    '[Unit]',
    `Description=banger daemon (VMs and images of ${owner.name}; API on ${SERVICE_RUNTIME_DIR}/bangerd.sock)`,
    `After=network.target ${HELPER_UNIT}`,
    `Wants=${HELPER_UNIT}`,
    '',
    '[Service]',
    'Type=simple',
    `User=${owner.name}`,
    spec.kvmGroup && 'SupplementaryGroups=kvm',
    `Environment=HOME=${owner.home} BANGER_RUNTIME_DIR=${SERVICE_RUNTIME_DIR} BANGER_ROOT_HELPER=${SERVICE_HELPER_SOCKET}`,
    `WorkingDirectory=${owner.home}`,
    `ExecStart=${spec.nodePath} ${BANGERD_NODE_FLAGS.join(' ')} ${spec.daemonScript} --foreground`,
    'Restart=on-failure',
    'RestartSec=2',
    // /run/banger (0700, owned by the owner): the API socket, the pid file and each running VM's
    // QMP/agent sockets. Preserved across restarts: running VMs keep their sockets and the next
    // daemon re-adopts them.
    'RuntimeDirectory=banger',
    'RuntimeDirectoryMode=0700',
    'RuntimeDirectoryPreserve=yes',
    'UMask=0077',
    // Stop (and restart) signal only bangerd itself: QEMU runs detached in its own session but
    // inside this unit's cgroup, and the default control-group mode would kill every VM with the
    // daemon. bangerd re-adopts the running VMs when it starts again.
    'KillMode=process',
    'TimeoutStopSec=60',
    // No NoNewPrivileges and no CapabilityBoundingSet: mmdebstrap's unshare mode (building the
    // default image unprivileged) maps the owner's subordinate ids through the setuid newuidmap.
    // No ProtectSystem=strict or ProtectHome: the state lives in the owner's home.
    'ProtectSystem=full',
    'PrivateTmp=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'RestrictRealtime=yes',
    'LockPersonality=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_VSOCK',
    // Other users' processes are hidden; its own (QEMU, the orphan sweep's /proc scan) stay visible.
    'ProtectProc=invisible',
    // Not ProtectHostname: its seccomp filter refuses sethostname even inside the UTS namespaces
    // that image builds (mmdebstrap unshare, the build VM tooling) may create.
    '',
    '[Install]',
    'WantedBy=multi-user.target',
  ]);
}

/** Reads `Key=value` of a rendered (or installed) unit: the last assignment wins, as in systemd. */
export function unitValue(text: string, key: string): string | undefined {
  let value: string | undefined;
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m && m[1] === key) value = m[2];
  }
  return value;
}
