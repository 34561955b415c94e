import { BangerError } from '../api/errors.js';
import { type Cidr, formatCidr, formatIpv4, isHostAddress, parseCidr, parseIpv4 } from '../util/ipv4.js';

/**
 * Pure planning of banger's host network: bridge and TAP names and the firewall rulesets (address
 * arithmetic is util/ipv4.ts). Nothing here touches the host, so all of it is unit-tested without root.
 */

export interface NatSpec {
  bridge: string;
  /** The VM network, e.g. "172.30.0.0/24". */
  cidr: string;
  /** VM addresses allowed out through NAT; every other forwarded packet from the bridge is dropped. */
  natIps: readonly string[];
}

/** One VM's TAP pinned to its lease: frames from `tap` must carry `mac` and (IPv4, ARP) `ip`. */
export interface TapPin {
  tap: string;
  mac: string;
  ip: string;
  /** The VM may reach beyond the VM network (NAT); decided by the TAP it sends on. */
  nat: boolean;
}

/**
 * Where guests' DNS queries to the bridge address (port 53) are redirected: the daemon's resolver
 * listens on an unprivileged port of the bridge address, so bangerd needs no root to serve it.
 */
export interface DnsRedirect {
  /** The bridge address guests (and the host's resolver route) send queries to. */
  ip: string;
  /** The daemon's unprivileged port on that address. */
  port: number;
}

/** banger's whole policy for one bridge: what each TAP may send, which TAPs are NATed, where DNS goes. */
export interface NetPolicy {
  bridge: string;
  cidr: string;
  pins: readonly TapPin[];
  dns?: DnsRedirect;
}

export const BRIDGE_NAME_RE = /^banger[a-z0-9_-]{0,9}$/;
/** TAP names of banger before they were namespaced per bridge; only adopted when on the daemon's own bridge. */
export const LEGACY_TAP_RE = /^bgtap[0-9]{1,6}$/;
export const IFNAMSIZ_MAX = 15;
export const IPT_COMMENT = 'banger';
/** Marker left in the network namespace when banger turned ip_forward on (cleared when it restores it). */
export const NFT_FWD_MARKER = 'banger_ip_forward_was_0';
export const IPT_FWD_MARKER = 'BANGER-IPFWD-WAS-0';
/** Most pins one ruleset accepts: a /16 of VMs is far beyond what one host runs. */
export const MAX_PINS = 65_534;

const bad = (message: string, fix?: string) => new BangerError('bad_request', message, fix ? { fix } : {});

export function validateBridgeName(name: string): string {
  if (typeof name !== 'string' || !BRIDGE_NAME_RE.test(name)) {
    throw bad(
      `refusing bridge name ${JSON.stringify(name)}: banger only manages bridges named banger*, at most 15 characters`,
      'set bridge_name in config.toml to a name like "banger0"',
    );
  }
  return name;
}

/**
 * The TAP name prefix of a bridge: "bg" + what follows "banger" + "." (banger0 → bg0., bangerdev →
 * bgdev.). Bridge names cannot contain ".", so no bridge's prefix is a prefix of another bridge's
 * TAP names (the nft/ebtables wildcards `bg0.*` match this bridge's TAPs only), and none of them is
 * a legacy bgtap<N>.
 */
export function tapPrefix(bridge: string): string {
  validateBridgeName(bridge);
  return `bg${bridge.slice('banger'.length)}.`;
}

/** Digits a TAP number of `bridge` may have (IFNAMSIZ allows 15 characters; at most 6 digits). */
export function tapDigits(bridge: string): number {
  return Math.min(6, IFNAMSIZ_MAX - tapPrefix(bridge).length);
}

export function tapNameRe(bridge: string): RegExp {
  return new RegExp(`^${tapPrefix(bridge).replace('.', '\\.')}(0|[1-9][0-9]{0,${tapDigits(bridge) - 1}})$`);
}

/** The n-th TAP name of `bridge`; throws when n has more digits than the name has room for. */
export function tapName(bridge: string, n: number): string {
  const name = `${tapPrefix(bridge)}${n}`;
  if (!Number.isInteger(n) || n < 0 || !tapNameRe(bridge).test(name)) {
    throw new BangerError('conflict', `no TAP name left for bridge ${bridge}: TAP number ${n} does not fit in ${IFNAMSIZ_MAX} characters`, {
      fix: 'stop or delete VMs, or choose a shorter bridge_name in config.toml',
    });
  }
  return name;
}

/** The number of one of `bridge`'s TAP names (NaN for other names). */
export function tapNumber(bridge: string, name: string): number {
  return tapNameRe(bridge).test(name) ? Number(name.slice(tapPrefix(bridge).length)) : Number.NaN;
}

/** A TAP name banger creates for `bridge`: its prefix and digits only. */
export function validateTapName(name: string, bridge: string): string {
  if (typeof name !== 'string' || !tapNameRe(bridge).test(name)) {
    throw bad(`refusing TAP name ${JSON.stringify(name)}: TAP devices of bridge ${bridge} are named ${tapPrefix(bridge)}<N>`);
  }
  return name;
}

/** A TAP name banger may touch on `bridge`: its own names, or a legacy bgtap<N> (whose master the caller checks). */
export function validateOwnTapName(name: string, bridge: string): string {
  if (typeof name === 'string' && LEGACY_TAP_RE.test(name)) return name;
  return validateTapName(name, bridge);
}

/** The nft tables (one `inet` for NAT/forward, one `bridge` for the TAP pins) are named after the bridge. */
export function nftTableName(bridge: string): string {
  return validateBridgeName(bridge);
}

/** iptables chains of one bridge (≤ 28 characters: "BGNAT-" + 15). */
export function iptChains(bridge: string): { nat: string; fwd: string; dns: string; pin: string; dispatch: string; comment: string } {
  validateBridgeName(bridge);
  return {
    nat: `BGNAT-${bridge}`,
    fwd: `BGFWD-${bridge}`,
    dns: `BGDNS-${bridge}`,
    pin: `BGPIN-${bridge}`,
    dispatch: `BGDSP-${bridge}`,
    comment: `${IPT_COMMENT}:${bridge}`,
  };
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** A unicast MAC in lower case; multicast, broadcast and all-zero addresses are refused. */
export function parseMac(text: string): string {
  const mac = typeof text === 'string' ? text.toLowerCase() : '';
  if (!MAC_RE.test(mac) || (Number.parseInt(mac.slice(0, 2), 16) & 1) === 1 || mac === '00:00:00:00:00:00') {
    throw bad(`invalid MAC address ${JSON.stringify(text)}`, 'a VM MAC is a unicast address such as 52:54:00:1e:00:02');
  }
  return mac;
}

/** Validates a NAT request and normalises it: the network address, sorted unique host IPs inside it. */
export function normaliseNat(spec: NatSpec): { bridge: string; cidr: string; natIps: string[] } {
  validateBridgeName(spec.bridge);
  const c = parseCidr(spec.cidr);
  if (!Array.isArray(spec.natIps)) throw bad('natIps must be a list of IPv4 addresses');
  const ips = new Set<number>();
  for (const ip of spec.natIps) {
    const n = parseIpv4(ip, 'VM address');
    if (!isHostAddress(c, n)) throw bad(`VM address ${ip} is not a host address of ${formatCidr(c)}`);
    ips.add(n);
  }
  return {
    bridge: spec.bridge,
    cidr: formatCidr(c),
    natIps: [...ips].sort((a, b) => a - b).map(formatIpv4),
  };
}

export interface NormalPolicy {
  bridge: string;
  cidr: string;
  pins: TapPin[];
  natIps: string[];
  dns: DnsRedirect | undefined;
}

/**
 * Validates a policy: every TAP is the bridge's (or a legacy bgtap<N>), every MAC unicast, every IP
 * a host address of the network, and no TAP, MAC or IP appears twice (two TAPs with one IP would
 * let one VM answer for another). Pins come out sorted by IP.
 */
export function normalisePolicy(spec: NetPolicy): NormalPolicy {
  validateBridgeName(spec.bridge);
  const c = parseCidr(spec.cidr);
  if (!Array.isArray(spec.pins)) throw bad('pins must be a list');
  if (spec.pins.length > MAX_PINS) throw bad(`too many TAP pins (${spec.pins.length}, at most ${MAX_PINS})`);
  const taps = new Set<string>();
  const macs = new Set<string>();
  const ips = new Set<number>();
  const pins: Array<TapPin & { n: number }> = [];
  for (const p of spec.pins) {
    const tap = validateOwnTapName(p.tap, spec.bridge);
    const mac = parseMac(p.mac);
    const n = parseIpv4(p.ip, 'VM address');
    if (!isHostAddress(c, n)) throw bad(`VM address ${p.ip} is not a host address of ${formatCidr(c)}`);
    if (taps.has(tap) || macs.has(mac) || ips.has(n)) {
      throw new BangerError('conflict', `two VMs claim the same TAP, MAC or IP (${tap}, ${mac}, ${p.ip})`, {
        fix: 'restart bangerd so it rebuilds TAPs from the store',
      });
    }
    taps.add(tap);
    macs.add(mac);
    ips.add(n);
    pins.push({ tap, mac, ip: formatIpv4(n), nat: p.nat === true, n });
  }
  pins.sort((a, b) => a.n - b.n);
  return {
    bridge: spec.bridge,
    cidr: formatCidr(c),
    pins: pins.map(({ n: _n, ...p }) => p),
    natIps: pins.filter((p) => p.nat).map((p) => p.ip),
    dns: spec.dns === undefined ? undefined : normaliseDns(spec.dns, c),
  };
}

function normaliseDns(dns: DnsRedirect, c: Cidr): DnsRedirect {
  const n = parseIpv4(dns?.ip, 'DNS address');
  if (!isHostAddress(c, n)) throw bad(`DNS address ${dns.ip} is not a host address of ${formatCidr(c)}`);
  if (!Number.isInteger(dns.port) || dns.port < 1 || dns.port > 65_535) throw bad(`DNS port ${dns.port} is not a port number`);
  return { ip: formatIpv4(n), port: dns.port };
}

const elems = (items: readonly string[]) => (items.length ? `\n    elements = { ${items.join(', ')} }` : '');

/**
 * banger's two nft tables for one bridge, as one `nft -f` script (one atomic transaction). Each
 * `table` + `delete table` pair replaces any previous version (and works when none exists), so
 * re-applying never duplicates rules and nothing stale survives; another bridge's tables (another
 * daemon's) are never named.
 *
 * - `bridge <bridge>` pins every TAP: a frame from one of the bridge's TAPs must carry its VM's MAC;
 *   ARP must name the VM's own IP and MAC; IPv4 must come from the VM's IP and, unless the TAP is
 *   a NAT VM's, go to the VM network (or broadcast/multicast); anything else (IPv6, VLAN tags,
 *   other ethertypes, a TAP with no VM) is dropped. The NAT decision is made here, by the TAP.
 * - `inet <bridge>` masquerades NAT VMs' addresses and drops every other forwarded packet from the
 *   bridge (a second, address-based layer: with the pins a source address proves the TAP).
 */
export function buildNftRuleset(spec: NetPolicy): string {
  const { bridge, cidr, pins, natIps, dns } = normalisePolicy(spec);
  const t = nftTableName(bridge);
  // Queries to the bridge address on port 53, from guests (prerouting) and from the host itself (output:
  // the resolver route), go to the daemon's unprivileged port on the same address. dnat, not redirect:
  // redirect sends locally generated packets to 127.0.0.1, where the daemon does not listen.
  // Prerouting matches only packets arriving on the bridge: the rules can never capture port 53 of
  // traffic from another interface (PrivilegedOps also checks dns.ip is the bridge's own address).
  const redirect = dns
    ? `  chain dns_prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${bridge}" ip daddr ${dns.ip} meta l4proto { udp, tcp } th dport 53 dnat ip to ${dns.ip}:${dns.port}
  }
  chain dns_output {
    type nat hook output priority -100; policy accept;
    ip daddr ${dns.ip} meta l4proto { udp, tcp } th dport 53 dnat ip to ${dns.ip}:${dns.port}
  }
`
    : '';
  const br = `"${bridge}"`;
  const legacy = pins.filter((p) => LEGACY_TAP_RE.test(p.tap)).map((p) => `"${p.tap}"`);
  return `table inet ${t}
delete table inet ${t}
table bridge ${t}
delete table bridge ${t}
table inet ${t} {
  comment "banger: NAT for VMs on ${bridge} (${cidr}); rebuilt by bangerd"
  set nat_ips {
    type ipv4_addr${elems(natIps)}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @nat_ips oifname != ${br} masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname ${br} oifname != ${br} ip saddr @nat_ips accept
    iifname ${br} oifname != ${br} drop
  }
${redirect}}
table bridge ${t} {
  comment "banger: TAP pins for VMs on ${bridge} (${cidr}); rebuilt by bangerd"
  set macs {
    type ifname . ether_addr${elems(pins.map((p) => `"${p.tap}" . ${p.mac}`))}
  }
  set pins {
    type ifname . ether_addr . ipv4_addr${elems(pins.map((p) => `"${p.tap}" . ${p.mac} . ${p.ip}`))}
  }
  set nat_taps {
    type ifname${elems(pins.filter((p) => p.nat).map((p) => `"${p.tap}"`))}
  }
  set legacy_taps {
    type ifname${elems(legacy)}
  }
  chain prerouting {
    type filter hook prerouting priority -200; policy accept;
    iifname "${tapPrefix(bridge)}*" jump guest
    iifname @legacy_taps jump guest
  }
  chain guest {
    iifname . ether saddr != @macs drop
    arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . arp saddr ether . arp saddr ip @pins accept
    ether type ip iifname . ether saddr . ip saddr != @pins drop
    ether type ip iifname @nat_taps accept
    ether type ip ip daddr { ${cidr}, 224.0.0.0/4, 255.255.255.255 } accept
    drop
  }
}
`;
}

/** Removes the bridge's two tables if present, in one transaction, without failing when they are absent. */
export function nftDeleteScript(bridge: string): string {
  const t = nftTableName(bridge);
  return `table inet ${t}\ndelete table inet ${t}\ntable bridge ${t}\ndelete table bridge ${t}\n`;
}

export interface IptablesRule {
  table: 'nat' | 'filter';
  chain: string;
  /** Rule arguments after `-A CHAIN`. */
  args: string[];
}

const tagOf = (bridge: string) => ['-m', 'comment', '--comment', iptChains(bridge).comment];

/** Rules of banger's own chains for one bridge, the iptables equivalent of the `inet` table. */
export function buildIptablesRules(spec: NetPolicy): IptablesRule[] {
  const { bridge, natIps, dns } = normalisePolicy(spec);
  const ch = iptChains(bridge);
  const tag = tagOf(bridge);
  const rules: IptablesRule[] = [];
  for (const proto of dns ? ['udp', 'tcp'] : []) {
    const to = String(dns?.port);
    rules.push({
      table: 'nat',
      chain: ch.dns,
      args: ['-d', `${dns?.ip}/32`, '-p', proto, '--dport', '53', ...tag, '-j', 'DNAT', '--to-destination', `${dns?.ip}:${to}`],
    });
  }
  for (const ip of natIps) {
    rules.push({ table: 'nat', chain: ch.nat, args: ['-s', `${ip}/32`, '!', '-o', bridge, ...tag, '-j', 'MASQUERADE'] });
  }
  rules.push({
    table: 'filter',
    chain: ch.fwd,
    args: ['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', ...tag, '-j', 'ACCEPT'],
  });
  for (const ip of natIps) {
    rules.push({ table: 'filter', chain: ch.fwd, args: ['-i', bridge, '!', '-o', bridge, '-s', `${ip}/32`, ...tag, '-j', 'ACCEPT'] });
  }
  rules.push({ table: 'filter', chain: ch.fwd, args: ['-i', bridge, '!', '-o', bridge, ...tag, '-j', 'DROP'] });
  return rules;
}

/**
 * The jumps from the built-in chains into one bridge's chains (inserted once, first). PREROUTING
 * jumps to the DNS chain only for packets arriving on the bridge; OUTPUT cannot match an input
 * interface, there the DNS rules' destination (checked to be the bridge's own address) limits them.
 */
export function iptablesJumps(bridge: string): IptablesRule[] {
  const ch = iptChains(bridge);
  const tag = tagOf(bridge);
  return [
    { table: 'nat', chain: 'POSTROUTING', args: [...tag, '-j', ch.nat] },
    { table: 'nat', chain: 'PREROUTING', args: ['-i', bridge, ...tag, '-j', ch.dns] },
    { table: 'nat', chain: 'OUTPUT', args: [...tag, '-j', ch.dns] },
    { table: 'filter', chain: 'FORWARD', args: [...tag, '-j', ch.fwd] },
  ];
}

/** Jumps older bangerd versions inserted and the current ones do not (an unrestricted PREROUTING → DNS jump): removed on apply and remove. */
export function iptablesStaleJumps(bridge: string): IptablesRule[] {
  const ch = iptChains(bridge);
  return [{ table: 'nat', chain: 'PREROUTING', args: [...tagOf(bridge), '-j', ch.dns] }];
}

/** The bridge's own iptables chains, by table: declared (flushed) by the restore script, deleted with the policy. */
export function iptOwnChains(bridge: string): Array<[IptablesRule['table'], string]> {
  const ch = iptChains(bridge);
  return [
    ['nat', ch.nat],
    ['nat', ch.dns],
    ['filter', ch.fwd],
  ];
}

/**
 * An `iptables-restore --noflush` script: declaring the bridge's chains flushes just them, and each
 * table commits atomically, so re-applying replaces the rules rather than appending duplicates.
 */
export function iptablesRestoreScript(bridge: string, rules: readonly IptablesRule[]): string {
  const chains = iptOwnChains(bridge);
  const quote = (a: string) => (/^[A-Za-z0-9_.:/,!-]+$/.test(a) ? a : `"${a}"`);
  let out = '';
  for (const table of ['nat', 'filter'] as const) {
    out += `*${table}\n`;
    for (const [, chain] of chains.filter(([t]) => t === table)) out += `:${chain} - [0:0]\n`;
    for (const r of rules.filter((x) => x.table === table)) out += `-A ${r.chain} ${r.args.map(quote).join(' ')}\n`;
    out += 'COMMIT\n';
  }
  return out;
}

export interface EbtablesRule {
  chain: string;
  args: string[];
}

/**
 * The ebtables (`-t nat`) equivalent of the `bridge` table, for hosts without nft: a dispatch chain
 * (jumped to from PREROUTING) sends frames from the bridge's TAPs to a pin chain whose policy is
 * DROP and which accepts only each VM's own MAC + ARP + IPv4 (destinations limited unless NAT).
 */
export function buildEbtablesRules(spec: NetPolicy): { dispatch: EbtablesRule[]; pin: EbtablesRule[] } {
  const { bridge, cidr, pins } = normalisePolicy(spec);
  const ch = iptChains(bridge);
  const dispatch: EbtablesRule[] = [{ chain: ch.dispatch, args: ['-i', `${tapPrefix(bridge)}+`, '-j', ch.pin] }];
  for (const p of pins) if (LEGACY_TAP_RE.test(p.tap)) dispatch.push({ chain: ch.dispatch, args: ['-i', p.tap, '-j', ch.pin] });
  const pin: EbtablesRule[] = [];
  for (const p of pins) {
    const base = ['-i', p.tap, '-s', p.mac];
    pin.push({
      chain: ch.pin,
      args: [...base, '-p', '0x0806', '--arp-htype', '1', '--arp-ptype', '0x0800', '--arp-ip-src', p.ip, '--arp-mac-src', p.mac, '-j', 'ACCEPT'],
    });
    const dsts = p.nat ? [undefined] : [cidr, '224.0.0.0/4', '255.255.255.255'];
    for (const d of dsts) {
      pin.push({ chain: ch.pin, args: [...base, '-p', '0x0800', '--ip-src', p.ip, ...(d ? ['--ip-dst', d] : []), '-j', 'ACCEPT'] });
    }
  }
  return { dispatch, pin };
}

/** One IPv4 socket of /proc/net/udp or /proc/net/tcp: its local address and port, state and owner uid. */
export interface ProcNetSocket {
  ip: string;
  port: number;
  /** The kernel's socket state (TCP: 0x0A is LISTEN; a bound UDP socket shows 0x07). */
  state: number;
  uid: number;
}

/** Lines of a /proc/net/{udp,tcp} file read at most (one per socket; far beyond a real host's count). */
export const PROC_NET_MAX_LINES = 262_144;
const PROC_NET_LINE_RE =
  /^\s*\d+: ([0-9A-F]{8}):([0-9A-F]{4}) [0-9A-F]{8}:[0-9A-F]{4} ([0-9A-F]{2}) [0-9A-F]{8}:[0-9A-F]{8} [0-9A-F]{2}:[0-9A-F]{8} [0-9A-F]{8}\s+(\d{1,10})\s/;

/**
 * Parses /proc/net/udp or /proc/net/tcp (IPv4). The kernel prints the address as the 32-bit value
 * in host byte order (little-endian hosts: 0100007F is 127.0.0.1) and the port in network order.
 * Lines that do not have exactly that shape (the header, anything garbled) are skipped; at most
 * PROC_NET_MAX_LINES lines are read.
 */
export function parseProcNetIpv4(text: string, littleEndian = true): ProcNetSocket[] {
  const out: ProcNetSocket[] = [];
  const lines = String(text).split('\n', PROC_NET_MAX_LINES);
  for (const line of lines) {
    const m = PROC_NET_LINE_RE.exec(line);
    if (!m) continue;
    const raw = Number.parseInt(m[1] as string, 16) >>> 0;
    const n = littleEndian ? (((raw & 0xff) << 24) | (((raw >>> 8) & 0xff) << 16) | (((raw >>> 16) & 0xff) << 8) | (raw >>> 24)) >>> 0 : raw;
    const uid = Number(m[4]);
    if (uid > 0xffff_ffff) continue;
    out.push({ ip: formatIpv4(n), port: Number.parseInt(m[2] as string, 16), state: Number.parseInt(m[3] as string, 16), uid });
  }
  return out;
}

const TCP_LISTEN = 0x0a;

/**
 * Before port 53 of the bridge address is redirected to `dns.port`, that port must be held by the
 * daemon's user (`expectedUid`) and by nobody else: else another local user who bound it first (or
 * while the daemon restarts) would answer every guest's lookup. A UDP socket of `expectedUid` on
 * the address (or the wildcard) must exist; no UDP socket or TCP listener of any other uid may be
 * bound there. IPv6 sockets (/proc/net/udp6) are not read: a v4-specific bind beats a v6 wildcard
 * for the kernel's choice of socket, and while one is held the daemon's own bind fails.
 */
export function assertDnsPortHeld(dns: DnsRedirect, expectedUid: number, udp: readonly ProcNetSocket[], tcp: readonly ProcNetSocket[]): void {
  const here = (s: ProcNetSocket) => s.port === dns.port && (s.ip === dns.ip || s.ip === '0.0.0.0');
  const foreign = [
    ...udp.filter((s) => here(s) && s.uid !== expectedUid).map((s) => ({ proto: 'udp', ...s })),
    ...tcp.filter((s) => here(s) && s.state === TCP_LISTEN && s.uid !== expectedUid).map((s) => ({ proto: 'tcp', ...s })),
  ];
  const fix = `stop the process of uid ${foreign[0]?.uid} holding port ${dns.port}, or choose another bridge_dns_port in config.toml, then restart bangerd`;
  const [f] = foreign;
  if (f) {
    throw new BangerError(
      'conflict',
      `refusing to redirect DNS (${dns.ip}:53) to port ${dns.port}: ${f.proto} ${f.ip}:${f.port} is held by uid ${f.uid}, not by bangerd's user (uid ${expectedUid})`,
      { fix },
    );
  }
  if (!udp.some((s) => here(s) && s.uid === expectedUid)) {
    throw new BangerError(
      'precondition_failed',
      `refusing to redirect DNS (${dns.ip}:53) to port ${dns.port}: no UDP socket of uid ${expectedUid} is bound to ${dns.ip}:${dns.port}`,
      {
        fix: 'bangerd binds its guest DNS listener before the redirect is installed: check the daemon log for why the bind failed, then restart bangerd',
      },
    );
  }
}
