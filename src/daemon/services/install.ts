import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { which } from '../../host/which.js';
import { DiskTools } from '../../host/disks.js';
import { readKvmProbeCache, writeKvmProbeCache } from '../../host/kvm-cache.js';
import { join } from 'node:path';
import { VmDnsServer } from '../dns.js';
import { PrivilegedOps } from '../../host/privileged.js';
import { bangerSshConfig, ensureSshKey, knownHostsLines, writeFileAtomic } from '../../host/ssh-config.js';
import { LeaseRepo } from '../../store/leases.js';
import { Repos } from '../../store/repos.js';
import { mkdir, readFile } from 'node:fs/promises';
import type { Accelerator, VmmDriver, VmmKind } from '../../vmm/driver.js';
import { FirecrackerDriver } from '../../vmm/firecracker/driver.js';
import { probeKvm } from '../../vmm/qemu/kvm-probe.js';
import { QemuDriver } from '../../vmm/qemu/driver.js';
import type { App } from '../app.js';
import type { Router } from '../http.js';
import { KeyedMutex } from '../../util/keyed-mutex.js';
import { coreRoutes } from '../routes-core.js';
import { kernelRoutes } from '../routes-kernels.js';
import { resourceRoutes } from '../routes-resources.js';
import { ImageBuildService } from './image-build.js';
import { ImageService } from './images.js';
import { probeDir, sweepLeftovers } from './leftovers.js';
import { KernelService } from './kernels.js';
import { type DnsRecords, NetworkService } from './network.js';
import { VmService } from './vms.js';
import { BlobCache } from '../../oci/blob-cache.js';
import { ScratchSpace } from '../../host/scratch.js';

/** Builds the services on the App's shared mechanisms and mounts their routes. */
export async function installServices(app: App, router: Router): Promise<void> {
  const { config, layout, db, clock, log, runner } = app.deps;
  const repos = new Repos(db);
  const locks = new KeyedMutex();
  const disks = new DiskTools(runner);
  const kernels = new KernelService(repos, layout, clock, locks, { catalogs: config.kernel_catalogs, debianMirror: config.debian_mirror, debianKeyring: config.debian_keyring });
  kernels.removeImagesOf = (kernelId) => images.removeAllForKernel(kernelId);
  const blobs = new BlobCache(join(layout.cacheDir, 'blobs'));
  // Unpacked trees live on tmpfs when they fit, in a private directory with a random name that
  // state/scratch-mem names (one daemon per state dir); the predictable name of older versions is
  // only ever removed, when it is ours.
  const hasShm = existsSync('/dev/shm');
  const scratch = new ScratchSpace({
    diskDir: join(layout.stagingDir, 'scratch'),
    memParent: hasShm ? '/dev/shm' : undefined,
    recordFile: join(layout.stateDir, 'scratch-mem'),
    legacyDirs: hasShm ? [join('/dev/shm', `banger-${createHash('sha256').update(layout.stateDir).digest('hex').slice(0, 12)}`)] : [],
  });
  await scratch.sweep();
  const leftovers = await sweepLeftovers(layout, repos);
  if (leftovers.length) log.info({ removed: leftovers }, 'removed work left by an earlier daemon');
  app.addCloser(async () => {
    await scratch.sweep();
  });
  const images = new ImageService(repos, layout, clock, locks, disks, kernels, blobs, runner, scratch, { catalogs: config.image_catalogs, debianMirror: config.debian_mirror });
  const hostKernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();

  const cachedProbe = readKvmProbeCache(layout.cacheDir, hostKernel);
  let accel: Accelerator | undefined =
    config.accel !== 'auto' ? config.accel : cachedProbe ? (cachedProbe.usable ? 'kvm' : 'tcg') : undefined;
  let probing: Promise<Accelerator> | undefined;
  const resolveAccel = (kernelPath: string, initrdPath: string | undefined, onProbe?: () => void): Promise<Accelerator> => {
    if (accel) return Promise.resolve(accel);
    onProbe?.();
    probing ??= (async () => {
      await mkdir(probeDir(layout), { recursive: true, mode: 0o700 });
      const outcome = await probeKvm({ qemuBin: config.qemu_bin, kernelPath, workDir: probeDir(layout), ...(initrdPath ? { initrdPath } : {}) });
      writeKvmProbeCache(layout.cacheDir, { ...outcome, hostKernel, probedAt: clock.now().toISOString() });
      log.info(outcome, 'KVM boot probe');
      accel = outcome.usable ? 'kvm' : 'tcg';
      return accel;
    })();
    return probing;
  };

  const firecrackerFound = !!(await which(config.firecracker_bin));
  const vmmKind: VmmKind =
    config.vmm === 'auto' ? (firecrackerFound && cachedProbe?.usable ? 'firecracker' : 'qemu') : config.vmm;
  const drivers: Record<VmmKind, VmmDriver> = {
    qemu: new QemuDriver(config.qemu_bin),
    firecracker: new FirecrackerDriver({ binaryPath: config.firecracker_bin }),
  };

  // DNS: the configured listener for the host, plus one on the bridge address for guests
  // (started once the bridge exists). Both serve the same records.
  const records = new Map<string, string>();
  const dnsServers: VmDnsServer[] = [];
  const dns: DnsRecords = {
    set: (name, ip) => {
      records.set(name, ip);
      for (const d of dnsServers) d.set(name, ip);
    },
    remove: (name) => {
      records.delete(name);
      for (const d of dnsServers) d.remove(name);
    },
    replaceAll: (list) => {
      records.clear();
      for (const r of list) records.set(r.name, r.ipv4);
      for (const d of dnsServers) d.replaceAll(list);
    },
  };
  const startDns = async (listenAddr: string) => {
    const server = new VmDnsServer({ listenAddr, log });
    await server.start();
    server.replaceAll([...records].map(([name, ipv4]) => ({ name, ipv4 })));
    dnsServers.push(server);
    app.addCloser(() => server.stop());
    return server;
  };
  const hostDns = await startDns(config.dns_listen_addr).catch((e) => {
    log.warn({ err: e }, 'DNS listener not started');
    return undefined;
  });

  const ops = new PrivilegedOps({ runner, ...(process.env.BANGER_NETNS ? { netns: process.env.BANGER_NETNS } : {}) });
  const leases = new LeaseRepo(db);
  const network = new NetworkService({ ops, leases, repos, config, clock, log, dns });
  network.onHostReady = () =>
    startDns(`${config.bridge_ip}:53`).then(
      () => undefined,
      (e) => log.warn({ err: e }, 'guest DNS listener on the bridge not started'),
    );

  // The managed SSH key, banger's ssh_config (one Host block per VM) and known_hosts (each VM's own host key).
  const sshDir = join(layout.stateDir, 'ssh');
  const keyPath = config.ssh_key_path ?? join(sshDir, 'id_ed25519');
  let publicKey: Promise<string> | undefined;
  const sshPublicKey = (): Promise<string> => {
    if (publicKey) return publicKey;
    const p = ensureSshKey(runner, keyPath);
    publicKey = p;
    p.catch(() => {
      publicKey = undefined;
    });
    return p;
  };
  const writeSshFiles = async () => {
    const hosts = [];
    for (const v of repos.vms.all()) {
      const lease = leases.byVm(v.id);
      const hostKey = await readFile(join(v.dir, 'ssh', 'ssh_host_ed25519_key.pub'), 'utf8').catch(() => undefined);
      if (lease) hosts.push({ name: v.name, ip: lease.ip, hostKey: hostKey?.trim() });
    }
    await writeFileAtomic(join(sshDir, 'config'), bangerSshConfig({ keyPath, knownHostsPath: join(sshDir, 'known_hosts'), hosts }), 0o600);
    await writeFileAtomic(
      join(sshDir, 'known_hosts'),
      knownHostsLines(hosts.filter((h): h is typeof h & { hostKey: string } => !!h.hostKey)).join(''),
      0o600,
    );
  };

  const vms = new VmService({
    repos,
    layout,
    config,
    clock,
    log,
    locks,
    disks,
    kernels,
    images,
    driver: (k) => drivers[k],
    vmmKind,
    accel: (k, i, onProbe) => (vmmKind === 'firecracker' ? Promise.resolve('kvm') : resolveAccel(k, i, onProbe)),
    host: { cpus: cpus().length, memoryBytes: totalmem() },
    runner,
    network,
    sshPublicKey,
    onVmsChanged: () => writeSshFiles().catch((e) => log.warn({ err: e }, 'writing ssh_config failed')),
    ...(process.env.BANGER_AGENT_READY_TIMEOUT_MS ? { agentReadyTimeoutMs: Number(process.env.BANGER_AGENT_READY_TIMEOUT_MS) } : {}),
  });
  await vms.reconcile();
  await writeSshFiles().catch((e) => log.warn({ err: e }, 'writing ssh_config failed'));
  vms.startStaleWatcher();
  app.addCloser(() => vms.close());
  app.addCloser(() => network.close());
  app.statusExtras = () => ({
    vmm: vmmKind,
    accel: vmmKind === 'firecracker' ? 'kvm' : (accel ?? null),
    dnsListenAddr: hostDns?.address() ?? null,
    webListenAddr: null,
  });

  const builds = new ImageBuildService({ images, vms, layout, sshConfigPath: join(sshDir, 'config') });
  router.add(...coreRoutes(app), ...kernelRoutes(app, kernels), ...resourceRoutes(app, { kernels, images, vms, builds }));
}
