import { BangerError } from '../api/errors.js';

/**
 * Pure IPv4 planning for banger's host network: address arithmetic, lease allocation, MACs and
 * the firewall rulesets. Nothing here touches the host, so all of it is unit-tested without root.
 */

export interface Cidr {
  /** The address as written (may have host bits set, e.g. a bridge's "172.30.0.1/24"). */
  address: number;
  prefix: number;
  network: number;
  broadcast: number;
}

export interface NatSpec {
  bridge: string;
  /** The VM network, e.g. "172.30.0.0/24". */
  cidr: string;
  /** VM addresses allowed out through NAT; every other forwarded packet from the bridge is dropped. */
  natIps: readonly string[];
}

export const BRIDGE_NAME_RE = /^banger[a-z0-9_-]{0,9}$/;
export const TAP_NAME_RE = /^bgtap[0-9]{1,6}$/;
export const NFT_TABLE = 'banger';
export const IPT_COMMENT = 'banger';
export const IPT_NAT_CHAIN = 'BANGER-POSTROUTING';
export const IPT_FWD_CHAIN = 'BANGER-FORWARD';

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

const bad = (message: string, fix?: string) => new BangerError('bad_request', message, fix ? { fix } : {});

export function isIpv4(text: string): boolean {
  return IPV4_RE.test(text);
}

/** Strict dotted quad (no leading zeros, which some tools read as octal) to a uint32. */
export function parseIpv4(text: string, what = 'IPv4 address'): number {
  if (typeof text !== 'string' || !IPV4_RE.test(text)) {
    throw bad(`invalid ${what} ${JSON.stringify(text)}`, 'use a dotted-quad IPv4 address such as 172.30.0.2');
  }
  return text.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Parses "a.b.c.d/p". `min`/`max` bound the prefix: banger's own networks use 8–30 (the default);
 * addresses and routes observed on the host are read with 0–32.
 */
export function parseCidr(text: string, bounds: { min?: number; max?: number } = {}): Cidr {
  const min = bounds.min ?? 8;
  const max = bounds.max ?? 30;
  const m = typeof text === 'string' ? /^([0-9.]+)\/(\d{1,2})$/.exec(text) : null;
  if (!m || !isIpv4(m[1] as string)) {
    throw bad(`invalid IPv4 CIDR ${JSON.stringify(text)}`, 'write it as ADDRESS/PREFIX, e.g. 172.30.0.0/24');
  }
  const prefix = Number(m[2]);
  if (prefix < min || prefix > max) {
    throw bad(`CIDR ${text} has prefix /${prefix}; expected /${min} to /${max}`, 'choose a prefix such as /24');
  }
  const address = parseIpv4(m[1] as string);
  const mask = maskOf(prefix);
  const network = (address & mask) >>> 0;
  return { address, prefix, network, broadcast: (network | (~mask >>> 0)) >>> 0 };
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

export function cidrContains(cidr: string | Cidr, ip: string): boolean {
  const c = typeof cidr === 'string' ? parseCidr(cidr, { min: 0, max: 32 }) : cidr;
  const n = parseIpv4(ip);
  return n >= c.network && n <= c.broadcast;
}

export function cidrsOverlap(a: string | Cidr, b: string | Cidr): boolean {
  const x = typeof a === 'string' ? parseCidr(a, { min: 0, max: 32 }) : a;
  const y = typeof b === 'string' ? parseCidr(b, { min: 0, max: 32 }) : b;
  return x.network <= y.broadcast && y.network <= x.broadcast;
}

/** A usable host address of the network: not the network or broadcast address. */
export function isHostAddress(cidr: Cidr, n: number): boolean {
  return n > cidr.network && n < cidr.broadcast;
}

/** The n-th address after the network address (1 = the first host). */
export function nthHost(cidr: string, n: number): string {
  const c = parseCidr(cidr);
  if (!Number.isInteger(n) || n < 1 || c.network + n >= c.broadcast) {
    throw bad(`${cidr} has no host number ${n}`, `use 1 to ${c.broadcast - c.network - 1}`);
  }
  return formatIpv4(c.network + n);
}

/** Lowest free host address of `cidr`, never the network, gateway or broadcast address. */
export function allocateIp(cidr: string, gatewayIp: string, taken: ReadonlySet<string>): string {
  const c = parseCidr(cidr);
  const gateway = parseIpv4(gatewayIp, 'gateway address');
  if (!isHostAddress(c, gateway)) {
    throw bad(`gateway ${gatewayIp} is not a host address of ${formatCidr(c)}`, 'set bridge_ip to an address inside cidr');
  }
  for (let n = c.network + 1; n < c.broadcast; n++) {
    if (n === gateway) continue;
    const ip = formatIpv4(n);
    if (!taken.has(ip)) return ip;
  }
  throw new BangerError('conflict', `no free IP address left in ${formatCidr(c)} (${c.broadcast - c.network - 2} usable, all leased)`, {
    fix: 'delete unused VMs (`banger vm prune`) or configure a larger `cidr` in config.toml',
  });
}

/**
 * Locally administered QEMU-style MAC from the low 24 bits of the IP: unique inside any /8 or
 * smaller network, and stable so a VM keeps its MAC across restarts.
 */
export function macForIp(ip: string): string {
  const n = parseIpv4(ip);
  const hex = (b: number) => b.toString(16).padStart(2, '0');
  return `52:54:00:${hex((n >>> 16) & 255)}:${hex((n >>> 8) & 255)}:${hex(n & 255)}`;
}

export function validateBridgeName(name: string): string {
  if (typeof name !== 'string' || !BRIDGE_NAME_RE.test(name)) {
    throw bad(
      `refusing bridge name ${JSON.stringify(name)}: banger only manages bridges named banger*, at most 15 characters`,
      'set bridge_name in config.toml to a name like "banger0"',
    );
  }
  return name;
}

export function validateTapName(name: string): string {
  if (typeof name !== 'string' || !TAP_NAME_RE.test(name)) {
    throw bad(`refusing TAP name ${JSON.stringify(name)}: banger TAP devices are named bgtap<N>`);
  }
  return name;
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

/**
 * The whole `inet banger` table as one `nft -f` script. The leading `table` + `delete table` pair
 * makes it replace any previous version in one atomic transaction (and work when none exists),
 * so re-applying never duplicates rules and nothing stale survives.
 */
export function buildNftRuleset(spec: NatSpec): string {
  const { bridge, cidr, natIps } = normaliseNat(spec);
  const br = `"${bridge}"`;
  const elements = natIps.length ? `\n    elements = { ${natIps.join(', ')} }` : '';
  return `table inet ${NFT_TABLE}
delete table inet ${NFT_TABLE}
table inet ${NFT_TABLE} {
  comment "banger: NAT for VMs on ${bridge} (${cidr}); rebuilt by bangerd"
  set nat_ips {
    type ipv4_addr${elements}
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
}
`;
}

/** Removes the table if present, in one transaction, without failing when it is absent. */
export function nftDeleteScript(): string {
  return `table inet ${NFT_TABLE}\ndelete table inet ${NFT_TABLE}\n`;
}

export interface IptablesRule {
  table: 'nat' | 'filter';
  chain: string;
  /** Rule arguments after `-A CHAIN`. */
  args: string[];
}

const tag = ['-m', 'comment', '--comment', IPT_COMMENT];

/** Rules of banger's own chains, the iptables equivalent of buildNftRuleset. */
export function buildIptablesRules(spec: NatSpec): IptablesRule[] {
  const { bridge, natIps } = normaliseNat(spec);
  const rules: IptablesRule[] = [];
  for (const ip of natIps) {
    rules.push({ table: 'nat', chain: IPT_NAT_CHAIN, args: ['-s', `${ip}/32`, '!', '-o', bridge, ...tag, '-j', 'MASQUERADE'] });
  }
  rules.push({
    table: 'filter',
    chain: IPT_FWD_CHAIN,
    args: ['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', ...tag, '-j', 'ACCEPT'],
  });
  for (const ip of natIps) {
    rules.push({ table: 'filter', chain: IPT_FWD_CHAIN, args: ['-i', bridge, '!', '-o', bridge, '-s', `${ip}/32`, ...tag, '-j', 'ACCEPT'] });
  }
  rules.push({ table: 'filter', chain: IPT_FWD_CHAIN, args: ['-i', bridge, '!', '-o', bridge, ...tag, '-j', 'DROP'] });
  return rules;
}

/** The jumps from the built-in chains into banger's chains (inserted once, first). */
export function iptablesJumps(): IptablesRule[] {
  return [
    { table: 'nat', chain: 'POSTROUTING', args: [...tag, '-j', IPT_NAT_CHAIN] },
    { table: 'filter', chain: 'FORWARD', args: [...tag, '-j', IPT_FWD_CHAIN] },
  ];
}

/**
 * An `iptables-restore --noflush` script: declaring banger's chains flushes just them, and each
 * table commits atomically, so re-applying replaces the rules rather than appending duplicates.
 */
export function iptablesRestoreScript(rules: readonly IptablesRule[]): string {
  const tables: Array<[IptablesRule['table'], string]> = [
    ['nat', IPT_NAT_CHAIN],
    ['filter', IPT_FWD_CHAIN],
  ];
  const quote = (a: string) => (/^[A-Za-z0-9_.:/,!-]+$/.test(a) ? a : `"${a}"`);
  let out = '';
  for (const [table, chain] of tables) {
    out += `*${table}\n:${chain} - [0:0]\n`;
    for (const r of rules.filter((x) => x.table === table)) out += `-A ${r.chain} ${r.args.map(quote).join(' ')}\n`;
    out += 'COMMIT\n';
  }
  return out;
}
