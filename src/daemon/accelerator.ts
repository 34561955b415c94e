import { mkdir } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { Layout } from '../config/layout.js';
import { type KvmProbeResult, readKvmProbeCache, writeKvmProbeCache } from '../host/kvm-cache.js';
import type { Clock } from '../util/op-context.js';
import type { Accelerator, VmmKind } from '../vmm/driver.js';
import { probeKvm } from '../vmm/qemu/kvm-probe.js';
import { probeDir } from './services/leftovers.js';

/**
 * The accelerator for QEMU guests: the configured one, else the cached result of the KVM boot
 * probe for this host kernel, else one probe (run once, shared by every VM that waits on it).
 */
export class Accelerators {
  readonly cachedProbe: KvmProbeResult | undefined;
  private accel: Accelerator | undefined;
  private probing: Promise<Accelerator> | undefined;

  constructor(private readonly d: { config: Config; layout: Layout; clock: Clock; log: Logger; hostKernel: string }) {
    this.cachedProbe = readKvmProbeCache(d.layout.cacheDir, d.hostKernel);
    this.accel = d.config.accel !== 'auto' ? d.config.accel : this.cachedProbe ? (this.cachedProbe.usable ? 'kvm' : 'tcg') : undefined;
  }

  /** Known without probing (config or cache), else undefined. */
  current(): Accelerator | undefined {
    return this.accel;
  }

  resolve(kernelPath: string, initrdPath: string | undefined, onProbe?: () => void): Promise<Accelerator> {
    if (this.accel) return Promise.resolve(this.accel);
    onProbe?.();
    this.probing ??= (async () => {
      const { config, layout, clock, log, hostKernel } = this.d;
      await mkdir(probeDir(layout), { recursive: true, mode: 0o700 });
      const outcome = await probeKvm({
        qemuBin: config.qemu_bin,
        kernelPath,
        workDir: probeDir(layout),
        ...(initrdPath ? { initrdPath } : {}),
        ...(config.vmm_user ? { vmmUser: config.vmm_user } : {}),
      });
      writeKvmProbeCache(layout.cacheDir, { ...outcome, hostKernel, probedAt: clock.now().toISOString() });
      log.info(outcome, 'KVM boot probe');
      this.accel = outcome.usable ? 'kvm' : 'tcg';
      return this.accel;
    })();
    return this.probing;
  }
}

/** `vmm = auto` picks Firecracker only where it is installed and KVM is known to work. */
export function chooseVmm(config: Pick<Config, 'vmm'>, firecrackerFound: boolean, kvmUsable: boolean | undefined): VmmKind {
  return config.vmm === 'auto' ? (firecrackerFound && kvmUsable ? 'firecracker' : 'qemu') : config.vmm;
}
