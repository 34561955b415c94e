import { BangerError } from '../api/errors.js';
import { allocateIp, cidrContains, macForIp, parseCidr, parseIpv4 } from '../util/ipv4.js';
import type { Db } from './db.js';

export interface LeaseRow {
  vm_id: string;
  ip: string;
  mac: string;
  created_at: string;
}

/** One IP + MAC per VM. The UNIQUE columns are the last line of defence; the transaction is the first. */
export class LeaseRepo {
  constructor(readonly db: Db) {}

  /**
   * The VM's lease, allocating the lowest free address when it has none (or when its old address is
   * outside `cidr` after a config change). Runs as BEGIN IMMEDIATE: the write lock is taken before
   * reading the taken set, so two daemons or connections can never pick the same address.
   */
  lease(vmId: string, cidr: string, gatewayIp: string, now: string): { ip: string; mac: string } {
    parseCidr(cidr);
    parseIpv4(gatewayIp, 'gateway address');
    const run = this.db.transaction(() => {
      const existing = this.byVm(vmId);
      if (existing && cidrContains(cidr, existing.ip)) return { ip: existing.ip, mac: existing.mac };
      if (!this.db.prepare('SELECT 1 FROM vms WHERE id = ?').get(vmId)) {
        throw new BangerError('not_found', `vm "${vmId}" not found`, { fix: 'list them with `banger vm list`' });
      }
      const rows = this.db.prepare('SELECT ip, mac FROM ip_leases WHERE vm_id != ?').all(vmId) as Array<{ ip: string; mac: string }>;
      const taken = new Set(rows.map((r) => r.ip));
      const macs = new Set(rows.map((r) => r.mac));
      let ip = allocateIp(cidr, gatewayIp, taken);
      // Leases left from an older, different cidr can share the low 24 bits and hence the MAC.
      while (macs.has(macForIp(ip))) {
        taken.add(ip);
        ip = allocateIp(cidr, gatewayIp, taken);
      }
      const mac = macForIp(ip);
      this.db
        .prepare(
          'INSERT INTO ip_leases (vm_id, ip, mac, created_at) VALUES (?, ?, ?, ?) ON CONFLICT(vm_id) DO UPDATE SET ip = excluded.ip, mac = excluded.mac, created_at = excluded.created_at',
        )
        .run(vmId, ip, mac, now);
      return { ip, mac };
    });
    return run.immediate();
  }

  release(vmId: string): boolean {
    return this.db.prepare('DELETE FROM ip_leases WHERE vm_id = ?').run(vmId).changes > 0;
  }

  all(): LeaseRow[] {
    return this.db.prepare('SELECT * FROM ip_leases ORDER BY created_at, vm_id').all() as LeaseRow[];
  }

  /**
   * Every VM that holds a TAP, with its lease: what the host pins each TAP to (MAC, IP) and whether
   * the VM is NATed. One statement, so the TAP, lease and NAT flag come from one snapshot.
   */
  pins(): Array<{ vmId: string; tap: string; mac: string; ip: string; nat: boolean }> {
    const rows = this.db
      .prepare(
        'SELECT v.id AS vmId, v.tap AS tap, l.mac AS mac, l.ip AS ip, v.nat AS nat FROM vms v JOIN ip_leases l ON l.vm_id = v.id WHERE v.tap IS NOT NULL ORDER BY v.id',
      )
      .all() as Array<{ vmId: string; tap: string; mac: string; ip: string; nat: number }>;
    return rows.map((r) => ({ ...r, nat: r.nat === 1 }));
  }

  byVm(vmId: string): LeaseRow | undefined {
    return this.db.prepare('SELECT * FROM ip_leases WHERE vm_id = ?').get(vmId) as LeaseRow | undefined;
  }
}
