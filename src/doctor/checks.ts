/**
 * `banger doctor`: one PASS/WARN/FAIL line per check, a FIX for every WARN and FAIL.
 * The checks are pure over a HostProbe so they unit-test with a fake host; doctor never changes anything.
 */
import { AGENT_PRESETS, type AgentAuthPath, type AgentPreset, fileSyncToml } from '../util/coding-agents.js';

export type CheckStatus = 'PASS' | 'WARN' | 'FAIL';

export interface Check {
  status: CheckStatus;
  name: string;
  detail: string;
  fix?: string;
}

/** How banger runs on this host (see `banger system status`). */
export interface RunMode {
  mode: 'systemd' | 'supervisor' | 'dev' | 'none';
  owner?: string;
  /** The daemon's (dev) or supervisor's pid. */
  pid?: number;
  /** uid the dev daemon runs as. */
  uid?: number;
  /** Installed units, when there are any. */
  units?: { owner?: string; ownerExists: boolean; complete: boolean; missingPaths: string[] };
}

export interface HostProbe {
  arch: string;
  nodeVersion: string;
  uid: number;
  /** Absolute path of a command on PATH (or the given path if it is executable), else undefined. */
  which(cmd: string): Promise<string | undefined>;
  /** First line of `<cmd> <args>` output, or undefined if it fails. */
  versionOf(cmd: string, args: string[]): Promise<string | undefined>;
  /** 'missing' | 'no-access' | 'ok' for read-write access. */
  deviceAccess(path: string): Promise<'missing' | 'no-access' | 'ok'>;
  /** True when `sudo -n true` succeeds. */
  passwordlessSudo(): Promise<boolean>;
  freeBytes(path: string): Promise<number | undefined>;
  migrations(): { status: 'current' | 'needed' | 'newer'; current: number; latest: number } | { error: string };
  config(): { ok: true; path: string; exists: boolean } | { ok: false; error: string };
  /** Cached answer of the KVM boot probe for this host kernel, if one ran. */
  kvmProbe(): { usable: boolean; detail: string } | undefined;
  /** Whether ~/.ssh/config includes banger's ssh_config (so `ssh <name>.vm` works). */
  sshInclude(): boolean;
  /** Which mode runs: split under systemd or the supervisor, a development daemon, or nothing. */
  runMode(): Promise<RunMode>;
  qemuBin: string;
  firecrackerBin: string;
  stateDir: string;
  /** The config's `[[file_sync]]` entries (none when the config does not load). */
  fileSync: ReadonlyArray<{ host: string; guest: string; mode?: number | undefined }>;
  /** What `~/` means in a file_sync host path (the daemon's user is assumed to be this one). */
  homeDir: string;
  /** A host path's type and permission bits (following a link, as file_sync does), undefined when absent; never its content. */
  hostPathInfo(path: string): Promise<{ type: 'file' | 'dir' | 'other'; mode: number } | undefined>;
}

const expandHome = (p: string, home: string): string => (p === '~' ? home : p.startsWith('~/') ? `${home}${p.slice(1)}` : p);
const stripSlash = (p: string): string => (p.length > 1 ? p.replace(/\/+$/, '') : p);

/**
 * The `[[file_sync]]` entry that brings an agent's auth path into the guest where the agent looks
 * for it: the same host path, or a directory above it whose guest side is the matching directory.
 * Entries are copied in order, so of several the last one decides (its mode is the file's).
 */
export function coveringEntry(
  path: AgentAuthPath,
  entries: HostProbe['fileSync'],
  home: string,
): { host: string; guest: string; mode?: number | undefined } | undefined {
  const host = expandHome(path.host, home);
  return [...entries].reverse().find((e) => {
    const eh = stripSlash(expandHome(e.host, home));
    const eg = stripSlash(e.guest);
    if (eh === host) return eg === path.guest;
    return host.startsWith(`${eh}/`) && `${eg}${host.slice(eh.length)}` === path.guest;
  });
}

/**
 * One check per coding agent (docs/agents.md): which of its auth paths exist on this host, and
 * whether a `[[file_sync]]` entry brings each into VMs; a WARN with the TOML to add when not (or
 * when a credentials file would arrive readable by others). Never FAIL: agents are optional.
 */
export async function agentAuthChecks(p: HostProbe, configPath: string, presets: readonly AgentPreset[] = AGENT_PRESETS): Promise<Check[]> {
  const out: Check[] = [];
  for (const agent of presets) {
    const present: Array<{ path: AgentAuthPath; info: { type: string; mode: number } }> = [];
    for (const path of agent.authPaths) {
      const info = await p.hostPathInfo(expandHome(path.host, p.homeDir));
      if (info && info.type === (path.kind === 'dir' ? 'dir' : 'file')) present.push({ path, info });
    }
    const name = `agent ${agent.name}`;
    const shown = (a: AgentAuthPath) => `${a.host}${a.kind === 'dir' ? '/' : ''}`;
    if (present.length === 0) {
      out.push({ status: 'PASS', name, detail: `${agent.title}: no login on this host (none of ${agent.authPaths.map(shown).join(', ')})` });
      continue;
    }
    const missing: AgentAuthPath[] = [];
    const loose: AgentAuthPath[] = [];
    for (const { path, info } of present) {
      const entry = coveringEntry(path, p.fileSync, p.homeDir);
      if (!entry) missing.push(path);
      // A credentials file copied with its host mode keeps group/other bits it may have there.
      else if (path.mode && entry.mode === undefined && (info.mode & 0o077) !== 0) loose.push(path);
      else if (path.mode && entry.mode !== undefined && (entry.mode & 0o077) !== 0) loose.push(path);
    }
    const synced = present.filter((x) => !missing.includes(x.path)).map((x) => shown(x.path));
    const detail = [
      `${agent.title}: on this host: ${present.map((x) => shown(x.path)).join(', ')}`,
      synced.length ? `synced into VMs by [[file_sync]]: ${synced.join(', ')}` : '',
      missing.length ? `not synced: ${missing.map(shown).join(', ')} (${agent.name} in a VM will not have them: it may ask you to log in)` : '',
      loose.length ? `would be readable by every guest user: ${loose.map(shown).join(', ')}` : '',
    ]
      .filter(Boolean)
      .join('; ');
    const toAdd = [...missing, ...loose];
    if (toAdd.length === 0) out.push({ status: 'PASS', name, detail });
    else
      out.push({
        status: 'WARN',
        name,
        detail,
        fix: `to use ${agent.name} in VMs with this host's login (docs/agents.md), add to ${configPath}${loose.length ? ' (and drop the entries these replace)' : ''}:\n${toAdd.map(fileSyncToml).join('\n')}`,
      });
  }
  return out;
}

function runModeChecks(m: RunMode, add: (status: CheckStatus, name: string, detail: string, fix?: string) => void): void {
  const detail =
    m.mode === 'systemd'
      ? `split: bangerd-root as root, bangerd as ${m.owner ?? '?'}, under systemd`
      : m.mode === 'supervisor'
        ? `split: bangerd-root as root, bangerd as ${m.owner ?? '?'}, under banger's supervisor (pid ${m.pid})`
        : m.mode === 'dev'
          ? m.uid === 0
            ? `all-root development daemon (pid ${m.pid}, \`banger daemon start\`)`
            : `development daemon as uid ${m.uid} (pid ${m.pid}; host networking through sudo -n)`
          : 'no daemon running (the CLI starts a development daemon on first use; `banger system` runs the split service)';
  const u = m.units;
  if (u && (m.mode === 'none' || m.mode === 'dev'))
    add(
      'WARN',
      'run mode',
      `${detail}; the service units are installed but the service does not run`,
      `systemctl enable --now bangerd-root.service bangerd.service (without systemd: banger system start --owner ${u.owner ?? 'USER'})`,
    );
  else add('PASS', 'run mode', detail);
  if (!u) return;
  const problems = [
    !u.complete && 'one of bangerd.service / bangerd-root.service is missing',
    !u.owner && 'bangerd.service names no User=',
    u.owner && !u.ownerExists && `its owner ${u.owner} does not exist`,
    u.missingPaths.length > 0 && `missing: ${u.missingPaths.join(', ')}`,
  ].filter(Boolean);
  if (problems.length)
    add('FAIL', 'service units', problems.join('; '), `reinstall: banger system install --owner ${u.owner ?? 'USER'} (or banger system uninstall)`);
  else add('PASS', 'service units', `installed for ${u.owner}; the programs they run exist`);
}

const GiB = 1024 ** 3;
const APT = 'apt-get install -y';

function nodeAtLeast(version: string, major: number, minor: number): boolean {
  const m = /^v?(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}

export async function runChecks(p: HostProbe): Promise<Check[]> {
  const checks: Check[] = [];
  const add = (status: CheckStatus, name: string, detail: string, fix?: string) =>
    checks.push(fix && status !== 'PASS' ? { status, name, detail, fix } : { status, name, detail });

  add(p.arch === 'x64' ? 'PASS' : 'FAIL', 'cpu architecture', p.arch === 'x64' ? 'x86_64' : `${p.arch} is not supported yet`, 'run banger on an x86_64 host');
  add(nodeAtLeast(p.nodeVersion, 20, 19) ? 'PASS' : 'FAIL', 'node version', p.nodeVersion, 'install Node.js 20.19 or newer (Node 24 LTS recommended)');

  const cfg = p.config();
  if (cfg.ok) add('PASS', 'config', cfg.exists ? cfg.path : `${cfg.path} (absent: all defaults)`);
  else add('FAIL', 'config', cfg.error, 'fix the key named above; every key is documented in docs/config.md');

  const kvm = await p.deviceAccess('/dev/kvm');
  const probe = p.kvmProbe();
  if (kvm === 'missing')
    add(
      'WARN',
      '/dev/kvm',
      'absent: VMs run under QEMU TCG (software emulation, much slower)',
      'enable virtualization in firmware and load kvm_intel or kvm_amd (modprobe kvm_intel)',
    );
  else if (kvm === 'no-access')
    add('WARN', '/dev/kvm', 'present but not read-write for this user', 'add yourself to the kvm group: sudo usermod -aG kvm $USER, then log in again');
  else if (probe && !probe.usable)
    add(
      'WARN',
      '/dev/kvm',
      `present, but a real boot probe failed (${probe.detail}): using TCG`,
      'nothing to do for correctness; for speed run banger on a host with working nested/bare-metal KVM',
    );
  else add('PASS', '/dev/kvm', probe ? `usable (${probe.detail})` : 'present and accessible (the boot probe runs at first VM start)');

  // An unprivileged daemon's QEMU attaches to the TAP made for its user by opening /dev/net/tun.
  if (p.uid !== 0) {
    const tun = await p.deviceAccess('/dev/net/tun');
    if (tun === 'missing') add('FAIL', '/dev/net/tun', 'absent: VMs cannot get a network device', 'sudo modprobe tun');
    else if (tun === 'no-access')
      add(
        'FAIL',
        '/dev/net/tun',
        'not read-write for this user: QEMU cannot attach to its TAP (udev makes it 0666; this host has no such rule)',
        'sudo chmod 0666 /dev/net/tun (`sudo banger system start|install` does it)',
      );
    else add('PASS', '/dev/net/tun', 'read-write: QEMU attaches to the TAPs made for this user');
  }

  const qemu = await p.which(p.qemuBin);
  const fc = await p.which(p.firecrackerBin);
  if (qemu) add('PASS', 'qemu', `${qemu} (${(await p.versionOf(qemu, ['--version'])) ?? 'version unknown'})`);
  else add(fc ? 'WARN' : 'FAIL', 'qemu', `${p.qemuBin} not found`, `${APT} qemu-system-x86 qemu-utils`);
  if (fc) add('PASS', 'firecracker', `${fc} (${(await p.versionOf(fc, ['--version'])) ?? 'version unknown'})`);
  else
    add(
      'WARN',
      'firecracker',
      `${p.firecrackerBin} not found: QEMU is used`,
      'install a Firecracker release binary and set firecracker_bin in config.toml (optional)',
    );

  const required: Array<[string, string, CheckStatus]> = [
    ['qemu-img', 'qemu-utils', 'FAIL'],
    ['mkfs.ext4', 'e2fsprogs', 'FAIL'],
    ['debugfs', 'e2fsprogs', 'FAIL'],
    ['ip', 'iproute2', 'WARN'],
    ['ssh', 'openssh-client', 'WARN'],
  ];
  for (const [cmd, pkg, missing] of required) {
    const path = await p.which(cmd);
    add(path ? 'PASS' : missing, cmd, path ?? 'not found', `${APT} ${pkg}`);
  }
  // Only the recipe images need these (the built-in debian-bookworm and debian-bookworm-agents).
  const mmdebstrap = await p.which('mmdebstrap');
  add(mmdebstrap ? 'PASS' : 'WARN', 'mmdebstrap', mmdebstrap ?? 'not found (builds debian-bookworm and debian-bookworm-agents)', `${APT} mmdebstrap`);
  const npm = await p.which('npm');
  add(npm ? 'PASS' : 'WARN', 'npm', npm ?? 'not found (installs the coding agents of debian-bookworm-agents)', `${APT} npm (or Node.js's own npm)`);
  const nft = await p.which('nft');
  const ipt = await p.which('iptables');
  add(nft || ipt ? 'PASS' : 'WARN', 'iptables or nft', nft ?? ipt ?? 'neither found (needed for --nat)', `${APT} nftables`);
  const ebt = nft ? undefined : await p.which('ebtables');
  add(
    nft || (ipt && ebt) ? 'PASS' : 'WARN',
    'guest isolation',
    nft
      ? 'TAPs pinned to their VM’s MAC and IP with nft bridge tables'
      : ipt && ebt
        ? 'TAPs pinned with ebtables'
        : 'no nft and no ebtables: guests can spoof each other’s MAC/IP and NAT',
    `${APT} nftables`,
  );

  const runMode = await p.runMode();
  if (runMode.mode === 'systemd' || runMode.mode === 'supervisor')
    add('PASS', 'privileges', 'split service: bangerd-root (root, network capabilities only) does the host networking; bangerd needs no privilege');
  else if (p.uid === 0) add('PASS', 'privileges', 'running as root');
  else if (await p.passwordlessSudo()) add('PASS', 'privileges', 'passwordless sudo (sudo -n) available');
  else
    add(
      'WARN',
      'privileges',
      'not root and no passwordless sudo: bridge, TAP and NAT setup will fail',
      'run banger as root, or allow passwordless sudo for ip/iptables/nft',
    );

  if (p.sshInclude()) add('PASS', 'ssh config', "~/.ssh/config includes banger's ssh_config");
  else
    add(
      'WARN',
      'ssh config',
      "~/.ssh/config does not include banger's ssh_config: `ssh <name>.vm` and editors' Remote-SSH will not find VMs",
      'banger ssh-config --install',
    );

  const free = await p.freeBytes(p.stateDir);
  if (free === undefined) add('WARN', 'free disk', `cannot read free space of ${p.stateDir}`, `check that ${p.stateDir} or a parent exists`);
  else {
    const text = `${(free / GiB).toFixed(1)} GiB free in ${p.stateDir}`;
    add(free < 2 * GiB ? 'FAIL' : free < 10 * GiB ? 'WARN' : 'PASS', 'free disk', text, 'free space or move state with XDG_STATE_HOME / BANGER_HOME');
  }

  runModeChecks(runMode, add);

  const m = p.migrations();
  if ('error' in m) add('FAIL', 'store', m.error, 'move the damaged store aside; banger creates a new one');
  else if (m.status === 'current') add('PASS', 'store', `schema ${m.current} is current`);
  else if (m.status === 'needed')
    add(
      'WARN',
      'store',
      m.current === 0 ? 'not created yet' : `schema ${m.current} < ${m.latest}: migrations pending`,
      'start the daemon (`banger daemon start`); it migrates the store',
    );
  else add('FAIL', 'store', `schema ${m.current} is newer than this banger (${m.latest})`, 'upgrade banger');

  checks.push(...(await agentAuthChecks(p, cfg.ok ? cfg.path : 'config.toml')));
  return checks;
}
