import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Config } from '../../config/config.js';
import { parseCidr } from '../../host/netplan.js';
import type { PrivilegedOps } from '../../host/privileged.js';
import { TapPool } from '../../host/tap-pool.js';
import type { LeaseRepo } from '../../store/leases.js';
import type { Repos, VmRow } from '../../store/repos.js';
import type { Clock } from '../operations.js';

/** What a VM needs to boot on banger's network. */
export interface VmNetwork {
  ip: string;
  prefix: number;
  gateway: string;
  mac: string;
  tap: string;
  /** Guest resolvers: banger's DNS on the bridge first, then the upstream ones (glibc moves on after REFUSED). */
  nameservers: string[];
}

/** The DNS side the network service drives; the daemon's VmDnsServer implements it. */
export interface DnsRecords {
  set(name: string, ipv4: string): void;
  remove(name: string): void;
  replaceAll(records: Array<{ name: string; ipv4: string }>): void;
}

/**
 * Host networking for VMs: the banger bridge (created lazily, idempotently), a warm TAP pool,
 * IP leases from the store, the NAT/forward policy and `<name>.vm` records. The guest side is
 * configured at boot from what banger-init reads in the VM's payload (no DHCP).
 */
export class NetworkService {
  private hostReady: Promise<void> | undefined;
  private resolvedRouted = false;
  /** Runs once the bridge is up (the daemon starts the guests' DNS listener on its address). */
  onHostReady: (() => Promise<void>) | undefined;
  readonly pool: TapPool;
  private readonly prefix: number;

  constructor(
    private readonly d: {
      ops: PrivilegedOps;
      leases: LeaseRepo;
      repos: Repos;
      config: Config;
      clock: Clock;
      log: Logger;
      dns: DnsRecords;
    },
  ) {
    this.prefix = parseCidr(d.config.cidr).prefix;
    this.pool = new TapPool({
      ops: d.ops,
      bridge: d.config.bridge_name,
      size: d.config.tap_pool_size,
      onError: (e) => d.log.warn({ err: e }, 'TAP pool refill failed'),
    });
  }

  /** Bridge up, forwarding on, NAT policy in place (host-only for everyone by default). */
  ensureHost(): Promise<void> {
    this.hostReady ??= (async () => {
      await this.d.ops.ensureBridge(this.d.config.bridge_name, `${this.d.config.bridge_ip}/${this.prefix}`);
      await this.d.ops.enableForwarding();
      await this.applyNat();
      await this.onHostReady?.();
      this.resolvedRouted = await this.d.ops
        .routeVmDomain(this.d.config.bridge_name, this.d.config.bridge_ip)
        .catch((e) => {
          this.d.log.warn({ err: e }, 'routing ~vm through systemd-resolved failed');
          return false;
        });
    })().catch((e) => {
      this.hostReady = undefined;
      throw e;
    });
    return this.hostReady;
  }

  /** Daemon shutdown: the bridge, TAPs and NAT stay (VMs keep running); the resolver route goes. */
  async close(): Promise<void> {
    if (this.resolvedRouted) await this.d.ops.unrouteVmDomain(this.d.config.bridge_name);
    await this.pool.settled().catch(() => {});
  }

  lease(vmId: string): { ip: string; mac: string } {
    return this.d.leases.lease(vmId, this.d.config.cidr, this.d.config.bridge_ip, this.d.clock.now().toISOString());
  }

  ipOf(vmId: string): string | null {
    return this.d.leases.byVm(vmId)?.ip ?? null;
  }

  release(vmId: string): void {
    this.d.leases.release(vmId);
  }

  /** Gives a starting VM a TAP; its lease was taken at create. */
  async attach(vm: VmRow): Promise<VmNetwork> {
    await this.ensureHost();
    const { ip, mac } = this.lease(vm.id);
    const tap = await this.pool.acquire();
    this.d.repos.vms.update(vm.id, { tap });
    return { ip, mac, tap, prefix: this.prefix, gateway: this.d.config.bridge_ip, nameservers: await this.nameservers() };
  }

  /** After the VM's VMM exited: free the TAP, drop its DNS record and NAT rule. */
  async detach(vm: VmRow): Promise<void> {
    this.d.dns.remove(vm.name);
    if (vm.tap) {
      await this.pool.release(vm.tap).catch((e) => this.d.log.warn({ err: e, tap: vm.tap }, 'TAP release failed'));
      this.d.repos.vms.update(vm.id, { tap: null });
    }
    if (vm.nat) await this.applyNat();
  }

  /** A VM became running: publish its name, and its NAT rule if it asked for one. */
  async published(vm: VmRow): Promise<void> {
    const lease = this.d.leases.byVm(vm.id);
    if (lease) this.d.dns.set(vm.name, lease.ip);
    if (vm.nat) await this.applyNat();
  }

  /** Rebuilds banger's whole NAT/forward policy from the store: idempotent, no duplicates, no leftovers. */
  async applyNat(): Promise<void> {
    const natIps = this.d.repos.vms
      .all()
      .filter((v) => v.nat === 1 && (v.state === 'running' || v.state === 'starting'))
      .map((v) => this.d.leases.byVm(v.id)?.ip)
      .filter((ip): ip is string => !!ip);
    await this.d.ops.applyNat(this.d.config.bridge_name, this.d.config.cidr, natIps);
  }

  /** At daemon start: bridge, TAPs in use kept, pool refilled, DNS and NAT rebuilt from running VMs. */
  async reconcile(running: VmRow[]): Promise<void> {
    const anyVm = this.d.repos.vms.all().length > 0;
    if (!anyVm && running.length === 0) return;
    await this.ensureHost();
    await this.pool.reconcile(new Set(running.map((v) => v.tap).filter((t): t is string => !!t)));
    this.d.dns.replaceAll(
      running.flatMap((v) => {
        const l = this.d.leases.byVm(v.id);
        return l ? [{ name: v.name, ipv4: l.ip }] : [];
      }),
    );
  }

  private async nameservers(): Promise<string[]> {
    const upstream = this.d.config.default_dns.length ? this.d.config.default_dns : await hostNameservers();
    return [this.d.config.bridge_ip, ...upstream.filter((ip) => ip !== this.d.config.bridge_ip)].slice(0, 3);
  }
}

/** The host's own resolvers, minus loopback ones (a guest cannot reach the host's 127.0.0.53). */
async function hostNameservers(): Promise<string[]> {
  try {
    const text = await readFile('/etc/resolv.conf', 'utf8');
    return [...text.matchAll(/^nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/gm)].map((m) => m[1] as string).filter((ip) => !ip.startsWith('127.'));
  } catch {
    return [];
  }
}
