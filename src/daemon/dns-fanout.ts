import type { Logger } from 'pino';
import { VmDnsServer } from './dns.js';
import type { DnsRecords } from './services/network.js';

/**
 * The `<name>.vm` records, served by every DNS listener the daemon runs (the configured one for
 * the host, one on the bridge address for guests once the bridge exists). A listener started
 * later gets every record already known.
 */
export class DnsFanout implements DnsRecords {
  private readonly records = new Map<string, string>();
  private readonly servers: VmDnsServer[] = [];

  constructor(private readonly log: Logger) {}

  set(name: string, ipv4: string): void {
    this.records.set(name, ipv4);
    for (const s of this.servers) s.set(name, ipv4);
  }

  remove(name: string): void {
    this.records.delete(name);
    for (const s of this.servers) s.remove(name);
  }

  replaceAll(list: Array<{ name: string; ipv4: string }>): void {
    this.records.clear();
    for (const r of list) this.records.set(r.name, r.ipv4);
    for (const s of this.servers) s.replaceAll(list);
  }

  async listen(listenAddr: string): Promise<VmDnsServer> {
    const server = new VmDnsServer({ listenAddr, log: this.log });
    await server.start();
    server.replaceAll([...this.records].map(([name, ipv4]) => ({ name, ipv4 })));
    this.servers.push(server);
    return server;
  }

  async close(): Promise<void> {
    for (const s of this.servers.splice(0)) await s.stop();
  }
}
