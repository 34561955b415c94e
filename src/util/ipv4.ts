import { BangerError } from '../api/errors.js';

/**
 * IPv4 arithmetic: strict parsing, CIDRs, lease allocation and the MAC derived from an address.
 * Pure; shared by the lease store and the host network planner.
 */

const bad = (message: string, fix?: string) => new BangerError('bad_request', message, fix ? { fix } : {});

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export interface Cidr {
  /** The address as written (may have host bits set, e.g. a bridge's "172.30.0.1/24"). */
  address: number;
  prefix: number;
  network: number;
  broadcast: number;
}

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
