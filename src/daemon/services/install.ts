import { cpus, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { which } from '../../host/doctor-probe.js';
import { DiskTools } from '../../host/disks.js';
import { readKvmProbeCache, writeKvmProbeCache } from '../../host/kvm-cache.js';
import { Repos } from '../../store/repos.js';
import type { Accelerator, VmmDriver, VmmKind } from '../../vmm/driver.js';
import { FirecrackerDriver } from '../../vmm/firecracker/driver.js';
import { probeKvm } from '../../vmm/qemu/kvm-probe.js';
import { QemuDriver } from '../../vmm/qemu/driver.js';
import type { App } from '../app.js';
import type { Router } from '../http.js';
import { KeyedMutex } from '../locks.js';
import { coreRoutes } from '../routes-core.js';
import { resourceRoutes } from '../routes-resources.js';
import { ImageService } from './images.js';
import { KernelService } from './kernels.js';
import { VmService } from './vms.js';

/** Builds the services on the App's shared mechanisms and mounts their routes. */
export async function installServices(app: App, router: Router): Promise<void> {
  const { config, layout, db, clock, log, runner } = app.deps;
  const repos = new Repos(db);
  const locks = new KeyedMutex();
  const disks = new DiskTools(runner);
  const kernels = new KernelService(repos, layout, clock, locks);
  const images = new ImageService(repos, layout, clock, locks, disks, kernels);
  const hostKernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();

  const cachedProbe = readKvmProbeCache(layout.cacheDir, hostKernel);
  let accel: Accelerator | undefined =
    config.accel !== 'auto' ? config.accel : cachedProbe ? (cachedProbe.usable ? 'kvm' : 'tcg') : undefined;
  let probing: Promise<Accelerator> | undefined;
  const resolveAccel = (kernelPath: string, initrdPath: string | undefined, onProbe?: () => void): Promise<Accelerator> => {
    if (accel) return Promise.resolve(accel);
    onProbe?.();
    probing ??= (async () => {
      const outcome = await probeKvm({ qemuBin: config.qemu_bin, kernelPath, ...(initrdPath ? { initrdPath } : {}) });
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
    ...(process.env.BANGER_AGENT_READY_TIMEOUT_MS ? { agentReadyTimeoutMs: Number(process.env.BANGER_AGENT_READY_TIMEOUT_MS) } : {}),
  });
  await vms.reconcile();
  vms.startStaleWatcher();
  app.addCloser(() => vms.close());
  app.statusExtras = () => ({ vmm: vmmKind, accel: vmmKind === 'firecracker' ? 'kvm' : (accel ?? null), dnsListenAddr: null, webListenAddr: null });

  router.add(...coreRoutes(app), ...resourceRoutes(app, { kernels, images, vms }));
}
