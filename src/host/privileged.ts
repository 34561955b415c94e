import { accessSync, constants } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { delimiter, join } from 'node:path';
import { BangerError } from '../api/errors.js';
import { type Cidr, cidrsOverlap, formatCidr, formatIpv4, isHostAddress, isIpv4, parseCidr, parseIpv4 } from '../util/ipv4.js';
import {
  assertDnsPortHeld,
  buildEbtablesRules,
  buildIptablesRules,
  buildNftRuleset,
  IPT_COMMENT,
  IPT_FWD_MARKER,
  iptablesJumps,
  iptablesRestoreScript,
  iptablesStaleJumps,
  iptChains,
  iptOwnChains,
  LEGACY_TAP_RE,
  type NetPolicy,
  NFT_FWD_MARKER,
  type NormalPolicy,
  nftDeleteScript,
  nftTableName,
  normalisePolicy,
  PROC_NET_MAX_LINES,
  parseProcNetIpv4,
  tapNameRe,
  tapNumber,
  validateBridgeName,
  validateOwnTapName,
  validateTapName,
} from './netplan.js';
import { CommandError, type CommandRunner, type RunOptions, type RunResult } from './runner.js';

/**
 * The privilege boundary: the only module that changes host networking. It exposes validated
 * operations, never a generic exec, and only ever modifies links it owns (marked with the alias
 * `banger-managed`) and its own firewall table, so a bug elsewhere cannot reach the host's setup.
 */

export const OWNER_ALIAS = 'banger-managed';

export type Pinning = 'nft' | 'ebtables' | 'none';

/**
 * Every privileged host-network operation the daemon needs: the closed list. Two implementations:
 * PrivilegedOps runs the commands in-process (root, or `sudo -n`); HelperOps (helper-client.ts)
 * asks the `bangerd-root` helper over its Unix socket, one validated request per operation.
 */
export interface HostNetOps {
  /** The network namespace host commands run in (tests, BANGER_NETNS); part of the bridge claim's key. */
  readonly namespace: string | undefined;
  doctorInfo(): Promise<DoctorInfo>;
  /** How TAPs are pinned to their VM's MAC and IP; 'none' means guests can spoof each other. */
  pinning(): Promise<Pinning>;
  ensureBridge(name: string, addressCidr: string): Promise<void>;
  deleteBridge(name: string): Promise<void>;
  createTap(name: string, bridge: string): Promise<void>;
  deleteTap(name: string, bridge: string): Promise<void>;
  listTaps(bridge: string): Promise<string[]>;
  routeVmDomain(bridge: string, dnsIp: string): Promise<boolean>;
  unrouteVmDomain(bridge: string): Promise<void>;
  applyPolicy(spec: NetPolicy): Promise<void>;
  removePolicy(bridge: string): Promise<void>;
  currentNatIps(bridge: string): Promise<string[]>;
}

export interface PrivilegedOpsOptions {
  runner: CommandRunner;
  /** Run everything inside this network namespace (tests); production leaves it unset. */
  netns?: string;
  /** auto: `sudo -n` unless already root. */
  sudo?: 'auto' | 'never' | 'always';
  /** auto: nftables when `nft` is installed, else iptables. */
  firewall?: 'auto' | 'nft' | 'iptables';
  timeoutMs?: number;
  /**
   * Who owns the TAPs created (`ip tuntap add ... user <uid>`), so the VMM of that user can open
   * them. Default: this process's uid when it is not root, else none (root's VMM opens any TAP).
   * The root helper sets the owner user's uid.
   */
  tapOwnerUid?: number;
}

export interface DoctorInfo {
  /** helper: the operations go through the `bangerd-root` helper (HelperOps). */
  mode: 'root' | 'sudo' | 'helper' | 'unavailable';
  detail: string;
  firewall: 'nft' | 'iptables' | 'none';
  /** How TAPs are pinned to their VM's MAC and IP; 'none' means guests can spoof each other (warn). */
  pinning: Pinning;
}

interface LinkInfo {
  ifname: string;
  ifalias?: string;
  master?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string };
}

interface AddrInfo {
  ifname: string;
  addr_info?: Array<{ family?: string; local?: string; prefixlen?: number }>;
}

interface RouteInfo {
  dst?: string;
  dev?: string;
  type?: string;
}

const NETNS_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const SBIN = ['/usr/sbin', '/sbin', '/usr/local/sbin'];

function onPath(cmd: string): boolean {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean).concat(SBIN);
  return dirs.some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function parseJson<T>(text: string): T[] {
  const t = text.trim();
  return t ? (JSON.parse(t) as T[]) : [];
}

export class PrivilegedOps implements HostNetOps {
  private readonly runner: CommandRunner;
  private readonly netns: string | undefined;
  private readonly sudo: 'auto' | 'never' | 'always';
  private readonly firewallPref: 'auto' | 'nft' | 'iptables';
  private readonly timeoutMs: number;
  private readonly tapOwnerUid: number | undefined;

  constructor(options: PrivilegedOpsOptions) {
    if (options.netns !== undefined && !NETNS_RE.test(options.netns)) {
      throw new BangerError('bad_request', `invalid network namespace name ${JSON.stringify(options.netns)}`);
    }
    this.runner = options.runner;
    this.netns = options.netns;
    this.sudo = options.sudo ?? 'auto';
    this.firewallPref = options.firewall ?? 'auto';
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (options.tapOwnerUid !== undefined && !(Number.isInteger(options.tapOwnerUid) && options.tapOwnerUid >= 0 && options.tapOwnerUid < 2 ** 32 - 1)) {
      throw new BangerError('bad_request', `invalid TAP owner uid ${JSON.stringify(options.tapOwnerUid)}`);
    }
    const uid = process.getuid?.();
    this.tapOwnerUid = options.tapOwnerUid ?? (uid !== undefined && uid !== 0 ? uid : undefined);
  }

  /** The network namespace host commands run in (tests), or undefined for the daemon's own. */
  get namespace(): string | undefined {
    return this.netns;
  }

  private get useSudo(): boolean {
    return this.sudo === 'always' || (this.sudo === 'auto' && process.getuid?.() !== 0);
  }

  /** How TAPs are pinned: nft's bridge family, else ebtables beside iptables, else not at all. */
  async pinning(): Promise<Pinning> {
    return this.pinningNow();
  }

  private pinningNow(): Pinning {
    const fw = this.firewall();
    if (fw === 'nft') return 'nft';
    return onPath('ebtables') && onPath('ebtables-restore') ? 'ebtables' : 'none';
  }

  /** The backend NAT goes through; iptables only when nft is missing (or forced). */
  firewall(): 'nft' | 'iptables' | 'none' {
    if (this.firewallPref !== 'auto') return this.firewallPref;
    if (onPath('nft')) return 'nft';
    return onPath('iptables') ? 'iptables' : 'none';
  }

  private async exec(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    let argv = [cmd, ...args];
    if (this.netns) argv = ['ip', 'netns', 'exec', this.netns, ...argv];
    if (this.useSudo) argv = ['sudo', '-n', ...argv];
    const [bin, ...rest] = argv as [string, ...string[]];
    try {
      return await this.runner.run(bin, rest, { timeoutMs: this.timeoutMs, ...options });
    } catch (e) {
      if (e instanceof CommandError && /sudo: .*password is required|sudo: a terminal is required/.test(e.result.stderr)) {
        throw new BangerError('precondition_failed', `host networking needs root: ${cmd} cannot run through \`sudo -n\``, {
          fix: 'run bangerd as root, or allow passwordless sudo for ip, nft/iptables and sysctl (see `banger doctor`)',
          cause: e,
        });
      }
      throw new BangerError('host_command_failed', `${cmd} ${args.join(' ')} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async doctorInfo(): Promise<DoctorInfo> {
    const firewall = this.firewall();
    const pinning = this.pinningNow();
    if (!this.useSudo) {
      const root = process.getuid?.() === 0;
      return {
        mode: root ? 'root' : 'unavailable',
        detail: root ? 'running as root' : 'not root and sudo disabled: host networking commands will fail',
        firewall,
        pinning,
      };
    }
    try {
      const r = await this.runner.run('sudo', ['-n', 'true'], { timeoutMs: 5000, allowFailure: true });
      if (r.code === 0) return { mode: 'sudo', detail: 'privileged commands run through `sudo -n`', firewall, pinning };
      return { mode: 'unavailable', detail: `sudo -n refused: ${(r.stderr || r.stdout).trim().split('\n')[0]}`, firewall, pinning };
    } catch (e) {
      return { mode: 'unavailable', detail: `sudo is not usable: ${(e as Error).message}`, firewall, pinning };
    }
  }

  // ---- links -------------------------------------------------------------------------------

  private async link(name: string): Promise<LinkInfo | undefined> {
    const r = await this.exec('ip', ['-j', '-d', 'link', 'show', 'dev', name], { allowFailure: true });
    if (r.code !== 0) {
      if (/does not exist/i.test(r.stderr)) return undefined;
      throw new BangerError('host_command_failed', `ip link show ${name} failed: ${r.stderr.trim()}`);
    }
    return parseJson<LinkInfo>(r.stdout)[0];
  }

  private async links(): Promise<LinkInfo[]> {
    return parseJson<LinkInfo>((await this.exec('ip', ['-j', '-d', 'link', 'show'])).stdout);
  }

  private isOwned(l: LinkInfo): boolean {
    return l.ifalias === OWNER_ALIAS;
  }

  private async ownedBridge(name: string): Promise<LinkInfo> {
    const l = await this.link(name);
    if (!l) {
      throw new BangerError('precondition_failed', `bridge ${name} does not exist`, { fix: 'restart bangerd so it recreates its bridge' });
    }
    if (!this.isOwned(l) || l.linkinfo?.info_kind !== 'bridge') {
      throw new BangerError('conflict', `refusing to use ${name}: it is not a banger-managed bridge`, {
        fix: `choose another bridge_name in config.toml, or delete ${name} if banger should own it`,
      });
    }
    return l;
  }

  /** Refuses a network that collides with anything the host already routes on links banger does not own. */
  private async assertNoOverlap(bridge: string, net: Cidr): Promise<void> {
    const owned = new Set((await this.links()).filter((l) => this.isOwned(l) || l.ifname === bridge).map((l) => l.ifname));
    const want = formatCidr(net);
    const addrs = parseJson<AddrInfo>((await this.exec('ip', ['-j', '-4', 'addr', 'show'])).stdout);
    for (const a of addrs) {
      if (owned.has(a.ifname)) continue;
      for (const i of a.addr_info ?? []) {
        if (i.family !== 'inet' || !i.local || i.prefixlen === undefined) continue;
        if (cidrsOverlap(parseCidr(`${i.local}/${i.prefixlen}`, { min: 0, max: 32 }), net)) {
          throw new BangerError('conflict', `refusing ${want} for ${bridge}: it overlaps ${i.local}/${i.prefixlen} on ${a.ifname}`, {
            fix: 'set `cidr` and `bridge_ip` in config.toml to an unused private range',
          });
        }
      }
    }
    const routes = parseJson<RouteInfo>((await this.exec('ip', ['-j', '-4', 'route', 'show', 'table', 'all'])).stdout);
    for (const r of routes) {
      // The default route overlaps everything by definition; local/broadcast routes mirror addresses.
      if (!r.dst || r.dst === 'default' || !r.dev || owned.has(r.dev)) continue;
      if (r.type && r.type !== 'unicast') continue;
      const dst = r.dst.includes('/') ? r.dst : `${r.dst}/32`;
      const [ip] = dst.split('/');
      if (!isIpv4(ip as string)) continue;
      if (cidrsOverlap(parseCidr(dst, { min: 0, max: 32 }), net)) {
        throw new BangerError('conflict', `refusing ${want} for ${bridge}: it overlaps the route ${r.dst} via ${r.dev}`, {
          fix: 'set `cidr` and `bridge_ip` in config.toml to an unused private range',
        });
      }
    }
  }

  /**
   * Creates (or adopts its own) bridge with exactly `addressCidr` (e.g. "172.30.0.1/24") and sets it
   * up. Idempotent; refuses foreign links and networks the host already uses.
   */
  async ensureBridge(name: string, addressCidr: string): Promise<void> {
    validateBridgeName(name);
    const net = parseCidr(addressCidr);
    if (!isHostAddress(net, net.address)) {
      throw new BangerError('bad_request', `bridge address ${addressCidr} is the network or broadcast address`, {
        fix: 'use a host address such as 172.30.0.1/24',
      });
    }
    const existing = await this.link(name);
    if (existing) await this.ownedBridge(name);
    await this.assertNoOverlap(name, net);
    if (!existing) {
      await this.exec('ip', ['link', 'add', 'name', name, 'type', 'bridge']);
      await this.exec('ip', ['link', 'set', 'dev', name, 'alias', OWNER_ALIAS]);
    }
    const local = formatIpv4(net.address);
    const addrs = parseJson<AddrInfo>((await this.exec('ip', ['-j', '-4', 'addr', 'show', 'dev', name])).stdout);
    let present = false;
    for (const i of addrs[0]?.addr_info ?? []) {
      if (i.family !== 'inet') continue;
      if (i.local === local && i.prefixlen === net.prefix) present = true;
      else await this.exec('ip', ['addr', 'del', `${i.local}/${i.prefixlen}`, 'dev', name]);
    }
    if (!present) await this.exec('ip', ['addr', 'add', `${local}/${net.prefix}`, 'dev', name]);
    await this.exec('ip', ['link', 'set', 'dev', name, 'up']);
  }

  /** Deletes banger's bridge; absent is fine, a foreign one is refused. */
  async deleteBridge(name: string): Promise<void> {
    validateBridgeName(name);
    if (!(await this.link(name))) return;
    await this.ownedBridge(name);
    await this.exec('ip', ['link', 'del', 'dev', name]);
  }

  // ---- TAPs --------------------------------------------------------------------------------

  private assertTap(l: LinkInfo, bridge: string): void {
    if (l.linkinfo?.info_kind !== 'tun') {
      throw new BangerError('conflict', `refusing to touch ${l.ifname}: it exists but is not a TAP device`, {
        fix: `delete ${l.ifname} (it was not created by banger)`,
      });
    }
    if (l.master && l.master !== bridge) {
      throw new BangerError('conflict', `refusing to touch ${l.ifname}: it is enslaved to ${l.master}, not ${bridge}`, {
        fix: `another daemon or tool uses ${l.master}; give each bangerd its own bridge_name`,
      });
    }
  }

  /** Creates a TAP of `bridge` (named with the bridge's prefix) on it, or re-attaches and ups an existing one (idempotent). */
  async createTap(name: string, bridge: string): Promise<void> {
    validateBridgeName(bridge);
    validateTapName(name, bridge);
    await this.ownedBridge(bridge);
    const existing = await this.link(name);
    if (existing) {
      this.assertTap(existing, bridge);
    } else {
      // The VMM runs as the daemon's user, so a non-root daemon (or the helper's owner) must own the TAP to open it.
      const owner = this.tapOwnerUid !== undefined ? ['user', String(this.tapOwnerUid)] : [];
      await this.exec('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap', ...owner]);
      await this.exec('ip', ['link', 'set', 'dev', name, 'alias', OWNER_ALIAS]);
    }
    if (existing?.master !== bridge) await this.exec('ip', ['link', 'set', 'dev', name, 'master', bridge]);
    await this.exec('ip', ['link', 'set', 'dev', name, 'up']);
  }

  /**
   * Deletes one of `bridge`'s TAPs: a name with the bridge's prefix, or a legacy bgtap<N> enslaved
   * to this bridge. A TAP enslaved to any other bridge (another daemon's) is refused.
   */
  async deleteTap(name: string, bridge: string): Promise<void> {
    validateBridgeName(bridge);
    validateOwnTapName(name, bridge);
    const l = await this.link(name);
    if (!l) return;
    this.assertTap(l, bridge);
    if (LEGACY_TAP_RE.test(name) && l.master !== bridge) {
      throw new BangerError('conflict', `refusing to delete ${name}: it is not on bridge ${bridge}`);
    }
    const r = await this.exec('ip', ['link', 'del', 'dev', name], { allowFailure: true });
    if (r.code !== 0 && (await this.link(name))) {
      throw new BangerError('host_command_failed', `ip link del ${name} failed: ${r.stderr.trim()}`);
    }
  }

  /** `bridge`'s TAP devices present: its own names in numeric order, then legacy bgtap<N> on it. */
  async listTaps(bridge: string): Promise<string[]> {
    validateBridgeName(bridge);
    const re = tapNameRe(bridge);
    const all = (await this.links()).filter((l) => l.linkinfo?.info_kind === 'tun');
    const own = all.filter((l) => re.test(l.ifname) && (!l.master || l.master === bridge)).map((l) => l.ifname);
    const legacy = all.filter((l) => LEGACY_TAP_RE.test(l.ifname) && l.master === bridge).map((l) => l.ifname);
    return [...own.sort((a, b) => tapNumber(bridge, a) - tapNumber(bridge, b)), ...legacy.sort()];
  }

  // ---- resolver routing ----------------------------------------------------------------------

  /**
   * Where systemd-resolved runs, sends `*.vm` lookups to banger's DNS on the bridge address
   * (per-link routing domain `~vm`), so `ssh dev.vm` and `curl dev.vm:3000` work host-wide.
   * Returns false (and changes nothing) when resolved is not running.
   */
  async routeVmDomain(bridge: string, dnsIp: string): Promise<boolean> {
    validateBridgeName(bridge);
    parseIpv4(dnsIp, 'DNS address');
    await this.ownedBridge(bridge);
    const active = await this.exec('systemctl', ['is-active', '--quiet', 'systemd-resolved'], { allowFailure: true }).catch(() => undefined);
    if (active?.code !== 0) return false;
    await this.exec('resolvectl', ['dns', bridge, dnsIp]);
    await this.exec('resolvectl', ['domain', bridge, '~vm']);
    return true;
  }

  /** Undoes routeVmDomain (daemon shutdown); a bridge that is gone has nothing to undo, a foreign one is refused. */
  async unrouteVmDomain(bridge: string): Promise<void> {
    validateBridgeName(bridge);
    if (!(await this.link(bridge))) return;
    await this.ownedBridge(bridge);
    await this.exec('resolvectl', ['revert', bridge], { allowFailure: true }).catch(() => undefined);
  }

  // ---- forwarding and NAT ------------------------------------------------------------------

  /**
   * IPv4 forwarding is a per-namespace setting; NAT needs it. When banger turns it on (it was 0) it
   * leaves a marker in the namespace itself (an empty nft table, or an empty iptables chain), so the
   * record is shared by every daemon there and vanishes on reboot together with the setting. When
   * no banger NAT set of any daemon in the namespace has an address left, the marker's owner
   * restores 0. A host that had forwarding on before banger keeps it: no marker is ever written.
   */
  async setForwarding(needed: boolean): Promise<void> {
    const fw = this.requireFirewall();
    const on = (await this.exec('sysctl', ['-n', 'net.ipv4.ip_forward'])).stdout.trim() === '1';
    if (needed) {
      if (on) return;
      if (fw === 'nft') {
        await this.exec('nft', ['-f', '-'], {
          input: `table inet ${NFT_FWD_MARKER} {\n  comment "banger turned net.ipv4.ip_forward on (it was 0); restored when no banger NAT remains"\n}\n`,
        });
      } else {
        await this.exec('iptables', ['-w', '-N', IPT_FWD_MARKER], { allowFailure: true });
      }
      await this.exec('sysctl', ['-w', 'net.ipv4.ip_forward=1']);
      return;
    }
    if (!on || !(await this.forwardingMarker(fw))) return;
    if (await this.anyBangerNat(fw)) return;
    await this.exec('sysctl', ['-w', 'net.ipv4.ip_forward=0']);
    if (fw === 'nft') await this.exec('nft', ['-f', '-'], { input: `table inet ${NFT_FWD_MARKER}\ndelete table inet ${NFT_FWD_MARKER}\n` });
    else await this.exec('iptables', ['-w', '-X', IPT_FWD_MARKER], { allowFailure: true });
  }

  private async forwardingMarker(fw: 'nft' | 'iptables'): Promise<boolean> {
    if (fw === 'nft') return (await this.exec('nft', ['list', 'table', 'inet', NFT_FWD_MARKER], { allowFailure: true })).code === 0;
    return (await this.exec('iptables', ['-w', '-S', IPT_FWD_MARKER], { allowFailure: true })).code === 0;
  }

  /** Whether any banger NAT (any daemon's, any bridge, legacy included) still lets an address out. */
  private async anyBangerNat(fw: 'nft' | 'iptables'): Promise<boolean> {
    if (fw === 'nft') {
      const r = await this.exec('nft', ['-j', 'list', 'sets', 'inet']);
      const doc = JSON.parse(r.stdout || '{}') as { nftables?: Array<{ set?: { table?: string; name?: string; elem?: unknown[] } }> };
      return (doc.nftables ?? []).some((x) => x.set?.name === 'nat_ips' && x.set.table?.startsWith('banger') && (x.set.elem?.length ?? 0) > 0);
    }
    const r = await this.exec('iptables', ['-w', '-t', 'nat', '-S'], { allowFailure: true });
    return r.stdout.split('\n').some((l) => l.startsWith('-A ') && /--comment "?banger/.test(l) && /MASQUERADE/.test(l));
  }

  private requireFirewall(): 'nft' | 'iptables' {
    const fw = this.firewall();
    if (fw === 'none') {
      throw new BangerError('precondition_failed', 'neither nft nor iptables is installed', { fix: 'apt-get install nftables' });
    }
    return fw;
  }

  private legacyChecked = new Set<string>();

  /**
   * Before tables were named per bridge, every daemon used `inet banger` (nft) or the BANGER-*
   * chains (iptables). They are removed when they are this bridge's (nft: the table's comment
   * names it; iptables: the forward chain matches it), never when they are another bridge's.
   */
  private async removeLegacy(bridge: string, fw: 'nft' | 'iptables'): Promise<void> {
    if (this.legacyChecked.has(bridge)) return;
    if (fw === 'nft') {
      if (bridge !== 'banger') {
        // Text, not JSON: nft 1.0.6 leaves table comments out of its JSON.
        const r = await this.exec('nft', ['list', 'table', 'inet', 'banger'], { allowFailure: true });
        const comment = /^\s*comment "([^"]*)"/m.exec(r.code === 0 ? r.stdout : '')?.[1] ?? '';
        if (comment.startsWith('banger: NAT for VMs on ') && comment.includes(`on ${bridge} (`)) {
          await this.exec('nft', ['-f', '-'], { input: 'table inet banger\ndelete table inet banger\n' });
        }
      }
    } else {
      const fwd = await this.exec('iptables', ['-w', '-S', 'BANGER-FORWARD'], { allowFailure: true });
      if (fwd.code === 0 && fwd.stdout.split('\n').some((l) => l.includes(` -i ${bridge} `))) {
        const tag = ['-m', 'comment', '--comment', IPT_COMMENT];
        for (const [table, chain, legacy] of [
          ['nat', 'POSTROUTING', 'BANGER-POSTROUTING'],
          ['filter', 'FORWARD', 'BANGER-FORWARD'],
        ] as const) {
          for (let i = 0; i < 16; i++) {
            if ((await this.exec('iptables', ['-w', '-t', table, '-D', chain, ...tag, '-j', legacy], { allowFailure: true })).code !== 0) break;
          }
          await this.exec('iptables', ['-w', '-t', table, '-F', legacy], { allowFailure: true });
          await this.exec('iptables', ['-w', '-t', table, '-X', legacy], { allowFailure: true });
        }
      }
    }
    this.legacyChecked.add(bridge);
  }

  /**
   * Replaces banger's whole policy for one bridge: each TAP pinned to its VM's MAC and IP, the
   * NAT TAPs' VMs masqueraded, every other forwarded packet from the bridge dropped; then IPv4
   * forwarding on while a NAT VM exists (restored when none is left). Only this bridge's tables or
   * chains are named, so another daemon's (another bridge's) policy is never touched. The bridge
   * must be banger's own: no rules are written for a foreign bridge that has a banger-like name.
   */
  async applyPolicy(spec: NetPolicy): Promise<void> {
    const policy = normalisePolicy(spec);
    const fw = this.requireFirewall();
    await this.ownedBridge(policy.bridge);
    await this.assertPolicyFitsBridge(policy);
    if (policy.dns) assertDnsPortHeld(policy.dns, this.dnsOwnerUid(), await this.procNet('udp'), await this.procNet('tcp'));
    await this.removeLegacy(policy.bridge, fw);
    if (fw === 'nft') {
      await this.exec('nft', ['-f', '-'], { input: buildNftRuleset(policy) });
    } else {
      if (this.pinningNow() === 'ebtables') await this.applyEbtables(policy);
      await this.exec('iptables-restore', ['-w', '--noflush'], { input: iptablesRestoreScript(policy.bridge, buildIptablesRules(policy)) });
      await this.deleteJumps(iptablesStaleJumps(policy.bridge));
      for (const j of iptablesJumps(policy.bridge)) {
        const check = await this.exec('iptables', ['-w', '-t', j.table, '-C', j.chain, ...j.args], { allowFailure: true });
        if (check.code !== 0) await this.exec('iptables', ['-w', '-t', j.table, '-I', j.chain, '1', ...j.args]);
      }
    }
    await this.setForwarding(policy.natIps.length > 0);
  }

  /**
   * The policy must be for the bridge's own network, and its DNS redirect for the bridge's own
   * address: else the caller (the unprivileged owner, through the helper) could redirect port 53
   * of another private address of the host (another bridge's resolver, a LAN one) to her port.
   */
  private async assertPolicyFitsBridge(policy: NormalPolicy): Promise<void> {
    const addrs = parseJson<AddrInfo>((await this.exec('ip', ['-j', '-4', 'addr', 'show', 'dev', policy.bridge])).stdout);
    const own = (addrs[0]?.addr_info ?? []).filter((i) => i.family === 'inet' && i.local && isIpv4(i.local) && i.prefixlen !== undefined);
    const shown = own.map((i) => `${i.local}/${i.prefixlen}`).join(', ') || 'none';
    const match = own.find((i) => formatCidr(parseCidr(`${i.local}/${i.prefixlen}`, { min: 0, max: 32 })) === policy.cidr);
    if (!match) {
      throw new BangerError('conflict', `refusing the policy of ${policy.bridge}: ${policy.cidr} is not the network of the bridge's address (${shown})`, {
        fix: `set cidr and bridge_ip in config.toml to the bridge's network, or restart bangerd so it re-addresses ${policy.bridge}`,
      });
    }
    if (policy.dns && policy.dns.ip !== match.local) {
      throw new BangerError('conflict', `refusing to redirect DNS of ${policy.dns.ip}: it is not ${policy.bridge}'s address (${match.local})`, {
        fix: `set bridge_ip in config.toml to ${policy.bridge}'s address, or restart bangerd so it re-addresses the bridge`,
      });
    }
  }

  /** Who must hold the DNS port: the owner the helper serves (tapOwnerUid), else this process's user. */
  private dnsOwnerUid(): number {
    return this.tapOwnerUid ?? process.getuid?.() ?? 0;
  }

  /**
   * The IPv4 sockets of /proc/net/{udp,tcp} in the namespace the commands run in: through
   * `ip netns exec` when one is set, else this process's own (the helper runs inside its namespace).
   */
  private async procNet(proto: 'udp' | 'tcp'): Promise<ReturnType<typeof parseProcNetIpv4>> {
    const path = `/proc/net/${proto}`;
    const text = this.netns ? (await this.exec('cat', [path])).stdout : await readFile(path, 'utf8');
    return parseProcNetIpv4(text.length > PROC_NET_MAX_LINES * 200 ? text.slice(0, PROC_NET_MAX_LINES * 200) : text, endianness() === 'LE');
  }

  private async deleteJumps(jumps: readonly { table: string; chain: string; args: string[] }[]): Promise<void> {
    for (const j of jumps) {
      for (let i = 0; i < 16; i++) {
        const r = await this.exec('iptables', ['-w', '-t', j.table, '-D', j.chain, ...j.args], { allowFailure: true });
        if (r.code !== 0) break;
      }
    }
  }

  private async applyEbtables(policy: NetPolicy): Promise<void> {
    const ch = iptChains(policy.bridge);
    const { dispatch, pin } = buildEbtablesRules(policy);
    // The pin chain's policy is DROP, so while it is being replaced frames are dropped, not let through.
    const script = `*nat\n:${ch.pin} DROP\n:${ch.dispatch} RETURN\n${[...dispatch, ...pin].map((r) => `-A ${r.chain} ${r.args.join(' ')}`).join('\n')}\nCOMMIT\n`;
    await this.exec('ebtables-restore', ['--noflush'], { input: script });
    const listed = await this.exec('ebtables', ['-t', 'nat', '-L', 'PREROUTING']);
    if (!listed.stdout.split('\n').some((l) => l.trim() === `-j ${ch.dispatch}`)) {
      await this.exec('ebtables', ['-t', 'nat', '-I', 'PREROUTING', '1', '-j', ch.dispatch]);
    }
  }

  /** Removes the bridge's tables (or chains) and restores forwarding if banger turned it on and nothing else needs it. */
  async removePolicy(bridge: string): Promise<void> {
    validateBridgeName(bridge);
    const fw = this.requireFirewall();
    if (fw === 'nft') {
      await this.exec('nft', ['-f', '-'], { input: nftDeleteScript(bridge) });
    } else {
      const ch = iptChains(bridge);
      await this.deleteJumps([...iptablesJumps(bridge), ...iptablesStaleJumps(bridge)]);
      for (const [table, chain] of iptOwnChains(bridge)) {
        await this.exec('iptables', ['-w', '-t', table, '-F', chain], { allowFailure: true });
        await this.exec('iptables', ['-w', '-t', table, '-X', chain], { allowFailure: true });
      }
      if (this.pinningNow() === 'ebtables') {
        for (let i = 0; i < 16; i++) {
          if ((await this.exec('ebtables', ['-t', 'nat', '-D', 'PREROUTING', '-j', ch.dispatch], { allowFailure: true })).code !== 0) break;
        }
        for (const chain of [ch.dispatch, ch.pin]) await this.exec('ebtables', ['-t', 'nat', '-X', chain], { allowFailure: true });
      }
    }
    await this.setForwarding(false);
  }

  /** VM addresses the bridge's installed ruleset currently lets out through NAT. */
  async currentNatIps(bridge: string): Promise<string[]> {
    validateBridgeName(bridge);
    if (this.requireFirewall() === 'nft') {
      const r = await this.exec('nft', ['-j', 'list', 'set', 'inet', nftTableName(bridge), 'nat_ips'], { allowFailure: true });
      if (r.code !== 0) {
        if (/No such file or directory/.test(r.stderr)) return [];
        throw new BangerError('host_command_failed', `nft list set failed: ${r.stderr.trim()}`);
      }
      const doc = JSON.parse(r.stdout) as { nftables?: Array<{ set?: { elem?: unknown[] } }> };
      const elems = doc.nftables?.find((x) => x.set)?.set?.elem ?? [];
      return elems.filter((e): e is string => typeof e === 'string' && isIpv4(e));
    }
    const r = await this.exec('iptables', ['-w', '-t', 'nat', '-S', iptChains(bridge).nat], { allowFailure: true });
    if (r.code !== 0) return [];
    const ips: string[] = [];
    for (const line of r.stdout.split('\n')) {
      const m = /^-A \S+ -s (\d+\.\d+\.\d+\.\d+)\/32 .*MASQUERADE/.exec(line);
      if (m) ips.push(m[1] as string);
    }
    return ips;
  }
}
