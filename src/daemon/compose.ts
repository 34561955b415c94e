import { readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { DiskTools } from '../host/disks.js';
import { HelperOps } from '../host/helper-client.js';
import { HELPER_SOCKET_DEFAULT } from '../host/helper-wire.js';
import { type HostNetOps, PrivilegedOps } from '../host/privileged.js';
import { which } from '../host/which.js';
import { BlobCache } from '../oci/blob-cache.js';
import { LeaseRepo } from '../store/leases.js';
import { Repos } from '../store/repos.js';
import { resolveAgents } from '../util/coding-agents.js';
import { KeyedMutex } from '../util/keyed-mutex.js';
import type { VmmDriver, VmmKind } from '../vmm/driver.js';
import { FirecrackerDriver } from '../vmm/firecracker/driver.js';
import { jailerOptionsFor } from '../vmm/firecracker/jailer.js';
import { QemuDriver } from '../vmm/qemu/driver.js';
import { vmmVersion } from '../vmm/version.js';
import { Accelerators, chooseVmm } from './accelerator.js';
import { App, type AppDeps, type AppHooks } from './app.js';
import { DnsFanout } from './dns-fanout.js';
import { Router } from './http.js';
import { agentRoutes } from './routes-agents.js';
import { coreRoutes } from './routes-core.js';
import { fileRoutes } from './routes-files.js';
import { kernelRoutes } from './routes-kernels.js';
import { procRoutes } from './routes-procs.js';
import { resourceRoutes } from './routes-resources.js';
import { snapshotRoutes } from './routes-snapshots.js';
import { webRoutes } from './routes-web.js';
import { workspaceRoutes } from './routes-workspace.js';
import { scratchSpaceFor } from './scratch.js';
import { AgentSessionService } from './services/agent-sessions.js';
import { DiskLayers } from './services/disk-layers.js';
import { FileSyncService } from './services/file-sync.js';
import { FilesService } from './services/files.js';
import { ImageBuildService } from './services/image-build.js';
import { ImageService } from './services/images.js';
import { removeKernel } from './services/kernel-removal.js';
import { KernelService } from './services/kernels.js';
import { sweepLeftovers } from './services/leftovers.js';
import { NetworkService } from './services/network.js';
import { ProcessService } from './services/processes.js';
import { SnapshotCatalog } from './services/snapshot-catalog.js';
import { SnapshotService } from './services/snapshots.js';
import { SshAccess } from './services/ssh-access.js';
import { VmService } from './services/vms.js';
import { WorkspaceService } from './services/workspaces.js';
import { startWebUi } from './web/server.js';

/**
 * Who changes host networking: a root daemon itself; a daemon running as its owner asks the
 * `bangerd-root` helper (BANGER_ROOT_HELPER names its socket, or the default one is there); with
 * neither, `sudo -n` (PrivilegedOps' fallback, for development). See docs/privileges.md.
 */
function hostNetOps(env: NodeJS.ProcessEnv, runner: AppDeps['runner']): HostNetOps {
  const netns = env.BANGER_NETNS ? { netns: env.BANGER_NETNS } : {};
  if (process.getuid?.() !== 0 && (env.BANGER_ROOT_HELPER || HelperOps.available(HELPER_SOCKET_DEFAULT))) {
    return new HelperOps({ socketPath: env.BANGER_ROOT_HELPER || HELPER_SOCKET_DEFAULT });
  }
  return new PrivilegedOps({ runner, ...netns });
}

/**
 * The composition root: constructs every service on the daemon's shared mechanisms, wires them
 * through their constructors, runs the start-up reconcile, and mounts the routes. Nothing else
 * happens here; each piece of behaviour lives in its own module.
 */
export async function composeDaemon(deps: AppDeps, hooks: Pick<AppHooks, 'onStopped'>): Promise<{ app: App; router: Router }> {
  const { config, layout, db, clock, log, runner } = deps;
  const env = process.env;
  // First: a refused web_listen_addr (non-loopback without web_allow_remote) stops the start before anything runs.
  const web = await startWebUi({ listenAddr: config.web_listen_addr, allowRemote: config.web_allow_remote, socketPath: layout.socketPath, clock, log });
  const repos = new Repos(db);
  const leases = new LeaseRepo(db);
  const locks = new KeyedMutex();
  const disks = new DiskTools(runner);

  // Leftovers of a daemon that died at any step go before anything new starts.
  const scratch = scratchSpaceFor(layout);
  await scratch.sweep();
  const leftovers = await sweepLeftovers(layout, repos);
  if (leftovers.length) log.info({ removed: leftovers }, 'removed work left by an earlier daemon');

  const kernels = new KernelService({
    runner,
    repos,
    layout,
    clock,
    locks,
    catalogs: config.kernel_catalogs,
    debianMirror: config.debian_mirror,
    debianKeyring: config.debian_keyring,
  });
  const images = new ImageService({
    repos,
    layout,
    clock,
    locks,
    disks,
    kernels,
    blobs: new BlobCache(join(layout.cacheDir, 'blobs')),
    runner,
    scratch,
    options: { catalogs: config.image_catalogs, debianMirror: config.debian_mirror },
  });

  const accelerators = new Accelerators({ config, layout, clock, log, hostKernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim() });
  const vmmKind: VmmKind = chooseVmm(config, !!(await which(config.firecracker_bin)), accelerators.cachedProbe?.usable);
  const jailer = await jailerOptionsFor({
    jailerBin: config.jailer_bin,
    firecrackerBin: config.firecracker_bin,
    vmmUser: config.vmm_user,
    chrootBaseDir: join(layout.stateDir, 'jail'),
  }).catch((e: Error) => e);
  // A jail that was asked for but cannot be set up fails every Firecracker launch; it never silently becomes no jail.
  if (jailer instanceof Error) log.error({ err: jailer }, 'Firecracker jailer configured but unusable: Firecracker VMs will not start');
  const drivers: Record<VmmKind, VmmDriver> = {
    qemu: new QemuDriver(config.qemu_bin, { vmmUser: config.vmm_user }),
    firecracker: new FirecrackerDriver({
      binaryPath: config.firecracker_bin,
      ...(jailer instanceof Error ? { jailerError: jailer } : jailer ? { jailer } : {}),
    }),
  };

  const dns = new DnsFanout(log);
  const hostDns = await dns.listen(config.dns_listen_addr).catch((e) => {
    log.warn({ err: e }, 'DNS listener not started');
    return undefined;
  });
  const network = new NetworkService({
    ops: hostNetOps(env, runner),
    leases,
    repos,
    config,
    clock,
    log,
    dns,
    onHostReady: () =>
      // Port 53 on the bridge address is redirected here by the bridge's policy (see NetPolicy.dns), only once bound.
      dns.listen(`${config.bridge_ip}:${config.bridge_dns_port}`).then(
        () => true,
        (e) => {
          log.error({ err: e }, 'guest DNS listener on the bridge not started');
          return false;
        },
      ),
  });
  const ssh = new SshAccess({ runner, repos, leases, layout, config });
  const writeSshFiles = () => ssh.writeFiles().catch((e) => log.warn({ err: e }, 'writing ssh_config failed'));

  const layers = new DiskLayers({ repos, layersDir: layout.layersDir, clock, log, disks });
  const snapshotCatalog = new SnapshotCatalog({
    repos,
    vmmVersion: (k) => vmmVersion(runner, k === 'qemu' ? config.qemu_bin : config.firecracker_bin),
  });
  const vms = new VmService({
    repos,
    layers,
    snapshots: snapshotCatalog,
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
    accel: (k, i, onProbe) => (vmmKind === 'firecracker' ? Promise.resolve('kvm') : accelerators.resolve(k, i, onProbe)),
    host: { cpus: cpus().length, memoryBytes: totalmem() },
    runner,
    network,
    sshPublicKey: () => ssh.publicKey(),
    onVmsChanged: writeSshFiles,
    ...(env.BANGER_AGENT_READY_TIMEOUT_MS ? { agentReadyTimeoutMs: Number(env.BANGER_AGENT_READY_TIMEOUT_MS) } : {}),
    // The `sync files` step of every start ([[file_sync]], git identity); runs once the VM is running.
    afterGuestReady: (vm, ctx): Promise<void> => fileSync.run(vm, ctx),
  });
  const procs = new ProcessService({ vmGuest: (ref) => vms.guest(ref), inUse: (id) => vms.inUse(id), log });
  const fileSync = new FileSyncService({ entries: config.file_sync, guest: (ref) => procs.guest(ref), runner, log });
  const files = new FilesService({ guest: (ref) => procs.guest(ref) });
  const workspaces = new WorkspaceService({
    repos,
    runner,
    clock,
    locks,
    vmRow: (ref) => vms.row(ref),
    guest: (ref) => procs.guest(ref),
    exec: (ref, spec, opts) => procs.exec(ref, spec, opts),
    stagingDir: join(layout.stagingDir, 'workspaces'),
  });
  const agents = new AgentSessionService({
    agents: resolveAgents(config.agents, config.default_agent_image),
    exec: (ref, spec, opts) => procs.exec(ref, spec, opts),
    guest: (ref) => procs.guest(ref),
    vmInfo: (ref) => {
      const vm = vms.show(ref);
      return { name: vm.name, ...(vm.workspace ? { workspace: vm.workspace.guestPath } : {}) };
    },
  });
  const snapshots = new SnapshotService({
    repos,
    snapshotsDir: layout.snapshotsDir,
    config,
    host: { cpus: cpus().length, memoryBytes: totalmem() },
    clock,
    log,
    layers,
    catalog: snapshotCatalog,
    vms,
    images,
    driver: (k) => drivers[k],
  });
  const builds = new ImageBuildService({ images, vms, layout, sshConfigPath: ssh.configPath, runner });

  const app = new App(deps, {
    status: () => ({
      vmm: vmmKind,
      accel: vmmKind === 'firecracker' ? 'kvm' : (accelerators.current() ?? null),
      dnsListenAddr: hostDns?.address() ?? null,
      webListenAddr: web?.baseUrl ?? null,
    }),
    ...hooks,
  });
  // Closers run in reverse: VMs' links, then networking, then the web UI and DNS listeners, then scratch.
  app.addCloser(async () => {
    await scratch.sweep();
  });
  app.addCloser(() => dns.close());
  app.addCloser(() => web?.close());
  app.addCloser(() => network.close());
  app.addCloser(() => vms.close());

  await vms.reconcile();
  await snapshots.reconcile();
  await writeSshFiles();
  vms.startStaleWatcher();

  const router = new Router(log);
  router.add(
    ...coreRoutes(app),
    ...kernelRoutes(app, kernels, (ref, force) => removeKernel({ kernels, images }, ref, force)),
    ...resourceRoutes(app, { kernels, images, vms, builds }),
    ...snapshotRoutes(app, { vms, snapshots }),
    ...procRoutes(procs),
    ...fileRoutes(files),
    ...workspaceRoutes(app, workspaces),
    ...agentRoutes(agents),
    ...webRoutes(web),
  );
  return { app, router };
}
