import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Config } from '../../config/config.js';
import { BridgeLock } from '../../host/bridge-lock.js';
import { type DnsRedirect, validateOwnTapName } from '../../host/netplan.js';
import type { HostNetOps } from '../../host/privileged.js';
import { TapPool } from '../../host/tap-pool.js';
import type { LeaseRepo } from '../../store/leases.js';
import type { Repos, VmRow } from '../../store/repos.js';
import { cidrContains, parseCidr } from '../../util/ipv4.js';
import type { Clock } from '../../util/op-context.js';

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
 * Host networking for VMs: the banger bridge (created lazily, idempotently, claimed for this daemon
 * alone), a warm TAP pool, IP leases from the store, the per-TAP pins and NAT/forward policy and
 * `<name>.vm` records. The guest side is
 * configured at boot from what banger-init reads in the VM's payload (no DHCP).
 */
export class NetworkService {
  private hostReady: Promise<void> | undefined;
  private claimed: Promise<BridgeLock> | undefined;
  private warnedPinning = false;
  private resolvedRouted = false;
  /**
   * The bridge policy's DNS redirect (bridge_ip:53 → bridge_dns_port): set only once the daemon's
   * guest DNS listener holds that port, cleared at shutdown. Every policy applied takes it from here.
   */
  private dnsRedirect: DnsRedirect | undefined;
  readonly pool: TapPool;
  private readonly prefix: number;

  constructor(
    private readonly d: {
      ops: HostNetOps;
      leases: LeaseRepo;
      repos: Repos;
      config: Config;
      clock: Clock;
      log: Logger;
      dns: DnsRecords;
      /**
       * Once the bridge exists: the daemon binds the guests' DNS listener (bridge_ip:bridge_dns_port).
       * Resolves true when it is bound; only then is port 53 redirected to it.
       */
      onHostReady?: () => Promise<boolean>;
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

  /**
   * Claims the bridge for this daemon (a second daemon configured with the same bridge_name is
   * refused) before anything on the host is touched. Idempotent; the claim lasts the process's life.
   */
  claim(): Promise<BridgeLock> {
    this.claimed ??= BridgeLock.acquire(this.d.config.bridge_name, this.d.ops.namespace).catch((e) => {
      this.claimed = undefined;
      throw e;
    });
    return this.claimed;
  }

  /**
   * Bridge up, guest DNS listener bound, then the policy (TAPs pinned; host-only for everyone by
   * default; forwarding only while NAT is used; port 53 redirected to the listener only if it is
   * bound, so it is never redirected to a port another local user holds).
   */
  ensureHost(): Promise<void> {
    this.hostReady ??= (async () => {
      await this.claim();
      await this.d.ops.ensureBridge(this.d.config.bridge_name, `${this.d.config.bridge_ip}/${this.prefix}`);
      if (!this.dnsRedirect && this.d.onHostReady) {
        if (await this.d.onHostReady()) {
          this.dnsRedirect = { ip: this.d.config.bridge_ip, port: this.d.config.bridge_dns_port };
        } else {
          this.d.log.error(
            { port: this.d.config.bridge_dns_port },
            `guest DNS listener not bound on ${this.d.config.bridge_ip}:${this.d.config.bridge_dns_port}: port 53 of the bridge is not redirected, guests' *.vm lookups fail (free the port or choose another bridge_dns_port, then restart bangerd)`,
          );
        }
      }
      await this.applyNat();
      this.resolvedRouted = await this.d.ops.routeVmDomain(this.d.config.bridge_name, this.d.config.bridge_ip).catch((e) => {
        this.d.log.warn({ err: e }, 'routing ~vm through systemd-resolved failed');
        return false;
      });
    })().catch((e) => {
      this.hostReady = undefined;
      throw e;
    });
    return this.hostReady;
  }

  /**
   * Daemon shutdown: the bridge, TAPs and NAT stay (VMs keep running); the resolver route and the
   * DNS redirect go. With no daemon nobody answers guests' DNS anyway, and a redirect left in place
   * would send their queries to whoever binds bridge_dns_port next (another local user, during a
   * restart). A crash skips this: until the restarted daemon binds the port again and re-applies the
   * policy, a squatter of the port gets the redirected queries (docs/privileges.md).
   */
  async close(): Promise<void> {
    if (this.dnsRedirect) {
      this.dnsRedirect = undefined;
      await this.applyNat().catch((e) => this.d.log.warn({ err: e }, 'removing the DNS redirect at shutdown failed'));
    }
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

  /**
   * Gives a starting VM a TAP, pinned to its lease's MAC and IP before the VMM can send a frame on
   * it (a TAP without a pin drops everything); its lease was taken at create.
   */
  async attach(vm: VmRow): Promise<VmNetwork> {
    await this.ensureHost();
    const { ip, mac } = this.lease(vm.id);
    const tap = await this.pool.acquire();
    this.d.repos.vms.update(vm.id, { tap });
    try {
      await this.applyNat();
    } catch (e) {
      this.d.repos.vms.update(vm.id, { tap: null });
      await this.pool.release(tap).catch((err) => this.d.log.warn({ err, tap }, 'TAP release failed'));
      throw e;
    }
    return { ip, mac, tap, prefix: this.prefix, gateway: this.d.config.bridge_ip, nameservers: await this.nameservers() };
  }

  /** After the VM's VMM exited: free the TAP, drop its DNS record, pin and NAT rule. */
  async detach(vm: VmRow): Promise<void> {
    this.d.dns.remove(vm.name);
    if (vm.tap) {
      this.d.repos.vms.update(vm.id, { tap: null });
      await this.applyNat().catch((e) => this.d.log.warn({ err: e }, 'policy rebuild after detach failed'));
      await this.pool.release(vm.tap).catch((e) => this.d.log.warn({ err: e, tap: vm.tap }, 'TAP release failed'));
    } else if (vm.nat) {
      await this.applyNat();
    }
  }

  /** A VM became running: publish its name, and its NAT rule if it asked for one. */
  async published(vm: VmRow): Promise<void> {
    const lease = this.d.leases.byVm(vm.id);
    if (lease) this.d.dns.set(vm.name, lease.ip);
    if (vm.nat) await this.applyNat();
  }

  /**
   * Rebuilds this bridge's whole policy from the store: every VM holding a TAP is pinned to its
   * lease (MAC, IP) and NATed when it asked for NAT, decided by its TAP; idempotent, no duplicates,
   * no leftovers. Forwarding is on only while a NAT VM exists. (Named applyNat for its callers.)
   */
  async applyNat(): Promise<void> {
    await this.claim();
    if (!this.warnedPinning && (await this.d.ops.pinning()) === 'none') {
      this.warnedPinning = true;
      this.d.log.warn(
        "TAPs are NOT pinned to their VM's MAC and IP (no nft, no ebtables): a guest can spoof another guest's address and its NAT; install nftables",
      );
    }
    const pins = this.d.leases.pins().flatMap(({ vmId, tap, mac, ip, nat }) => {
      // A VM left running across a change of bridge_name or cidr keeps a TAP/IP this bridge cannot pin.
      const fits = (() => {
        try {
          validateOwnTapName(tap, this.d.config.bridge_name);
          return cidrContains(this.d.config.cidr, ip);
        } catch {
          return false;
        }
      })();
      if (!fits) this.d.log.warn({ vm: vmId, tap, ip }, 'VM TAP/IP does not belong to the configured bridge/cidr: left out of the pins (restart the VM)');
      return fits ? [{ tap, mac, ip, nat }] : [];
    });
    const policy = { bridge: this.d.config.bridge_name, cidr: this.d.config.cidr, pins };
    const dns = this.dnsRedirect;
    if (!dns) return this.d.ops.applyPolicy(policy);
    try {
      await this.d.ops.applyPolicy({ ...policy, dns });
    } catch (e) {
      // The redirect may be what was refused (the port is not held by this daemon's user alone): the
      // policy goes on without it, so VMs still get their pins and NAT, and port 53 goes nowhere.
      await this.d.ops.applyPolicy(policy).catch(() => {
        throw e;
      });
      if (this.dnsRedirect === dns) this.dnsRedirect = undefined;
      this.d.log.error({ err: e }, 'the DNS redirect of the bridge was refused: guests cannot resolve *.vm names until bangerd is restarted');
    }
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
