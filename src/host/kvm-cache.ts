import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The KVM boot probe is slow (a real guest boot), so its answer is cached per host kernel release. */
export interface KvmProbeResult {
  usable: boolean;
  detail: string;
  hostKernel: string;
  probedAt: string;
}

const file = (cacheDir: string) => join(cacheDir, 'kvm-probe.json');

export function readKvmProbeCache(cacheDir: string, hostKernel: string): KvmProbeResult | undefined {
  try {
    const r = JSON.parse(readFileSync(file(cacheDir), 'utf8')) as KvmProbeResult;
    return r.hostKernel === hostKernel && typeof r.usable === 'boolean' ? r : undefined;
  } catch {
    return undefined;
  }
}

export function writeKvmProbeCache(cacheDir: string, result: KvmProbeResult): void {
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const tmp = `${file(cacheDir)}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(result), { mode: 0o600 });
  renameSync(tmp, file(cacheDir));
}
