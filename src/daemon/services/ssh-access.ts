import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../../config/config.js';
import type { Layout } from '../../config/layout.js';
import type { CommandRunner } from '../../host/runner.js';
import { bangerSshConfig, ensureSshKey, knownHostsLines, writeFileAtomic } from '../../host/ssh-config.js';
import type { LeaseRepo } from '../../store/leases.js';
import type { Repos } from '../../store/repos.js';

/**
 * How the host logs in to VMs: the managed key (authorized in every VM), banger's ssh_config
 * (one `Host <name>.vm` block per VM) and known_hosts (each VM's own host key).
 */
export class SshAccess {
  readonly dir: string;
  readonly configPath: string;
  private readonly keyPath: string;
  private publicKeyP: Promise<string> | undefined;

  constructor(private readonly d: { runner: CommandRunner; repos: Repos; leases: LeaseRepo; layout: Layout; config: Pick<Config, 'ssh_key_path'> }) {
    this.dir = join(d.layout.stateDir, 'ssh');
    this.configPath = join(this.dir, 'config');
    this.keyPath = d.config.ssh_key_path ?? join(this.dir, 'id_ed25519');
  }

  /** The managed key's public half, made on first use (a failure is retried next time). */
  publicKey(): Promise<string> {
    if (this.publicKeyP) return this.publicKeyP;
    const p = ensureSshKey(this.d.runner, this.keyPath);
    this.publicKeyP = p;
    p.catch(() => {
      this.publicKeyP = undefined;
    });
    return p;
  }

  /** Rewrites ssh_config and known_hosts from the VMs in the store. */
  async writeFiles(): Promise<void> {
    const hosts = [];
    for (const v of this.d.repos.vms.all()) {
      const lease = this.d.leases.byVm(v.id);
      const hostKey = await readFile(join(v.dir, 'ssh', 'ssh_host_ed25519_key.pub'), 'utf8').catch(() => undefined);
      if (lease) hosts.push({ name: v.name, ip: lease.ip, hostKey: hostKey?.trim() });
    }
    const knownHostsPath = join(this.dir, 'known_hosts');
    await writeFileAtomic(this.configPath, bangerSshConfig({ keyPath: this.keyPath, knownHostsPath, hosts }), 0o600);
    await writeFileAtomic(knownHostsPath, knownHostsLines(hosts.filter((h): h is typeof h & { hostKey: string } => !!h.hostKey)).join(''), 0o600);
  }
}
