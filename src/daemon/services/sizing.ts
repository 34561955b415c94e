import { BangerError } from '../../api/errors.js';
import type { Config } from '../../config/config.js';
import { parseSize } from '../../util/duration.js';

export interface HostResources {
  cpus: number;
  memoryBytes: number;
}

export interface VmSize {
  vcpus: number;
  memoryMib: number;
  diskSizeBytes: number;
}

const GiB = 1024 ** 3;
export const MIN_DISK = 256 * 1024 * 1024;

/** Flags win, then [vm_defaults], then host-aware defaults (CPUs/4 capped at 4; RAM/8 capped at 8 GiB). */
export function resolveSize(req: Partial<VmSize>, config: Config, host: HostResources): VmSize {
  const vcpus = req.vcpus ?? config.vm_defaults.vcpu ?? Math.min(4, Math.max(1, Math.floor(host.cpus / 4)));
  const memoryMib = req.memoryMib ?? config.vm_defaults.memory_mib ?? Math.max(512, Math.min(8192, Math.floor(host.memoryBytes / 8 / 1024 / 1024)));
  const diskSizeBytes = req.diskSizeBytes ?? (config.vm_defaults.disk_size ? (parseSize(config.vm_defaults.disk_size) as number) : 8 * GiB);
  validateSize({ vcpus, memoryMib, diskSizeBytes }, host);
  return { vcpus, memoryMib, diskSizeBytes };
}

export function validateSize(s: Partial<VmSize>, host: HostResources): void {
  if (s.vcpus !== undefined && (!Number.isInteger(s.vcpus) || s.vcpus < 1 || s.vcpus > 64)) {
    throw new BangerError('bad_request', `--vcpus must be an integer from 1 to 64, got ${s.vcpus}`, { fix: `e.g. --vcpus ${Math.min(2, host.cpus)}` });
  }
  if (s.memoryMib !== undefined && (!Number.isInteger(s.memoryMib) || s.memoryMib < 128)) {
    throw new BangerError('bad_request', `--memory must be at least 128 MiB, got ${s.memoryMib} MiB`, { fix: 'e.g. --memory 1024 (MiB) or --memory 2G' });
  }
  if (s.memoryMib !== undefined && s.memoryMib * 1024 * 1024 > host.memoryBytes) {
    throw new BangerError('bad_request', `--memory ${s.memoryMib} MiB is more than this host has (${Math.floor(host.memoryBytes / 1024 / 1024)} MiB)`);
  }
  if (s.diskSizeBytes !== undefined && (!Number.isInteger(s.diskSizeBytes) || s.diskSizeBytes < MIN_DISK)) {
    throw new BangerError('bad_request', `--disk-size must be at least 256M, got ${s.diskSizeBytes} bytes`, { fix: 'e.g. --disk-size 8G' });
  }
}
