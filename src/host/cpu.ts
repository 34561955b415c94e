import { readFile } from 'node:fs/promises';

// Facts about the host CPU that the VMM drivers and the guest boot payload both need.

/**
 * The host TSC frequency from /proc/cpuinfo ("cpu MHz" × 1000, rounded), or undefined when the
 * text has no usable value. On a VM host (and on hosts with an invariant TSC at nominal clock)
 * "cpu MHz" is the TSC rate, which is what the guest needs.
 */
export function hostTscKhz(cpuinfo: string): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$/m.exec(cpuinfo);
  if (!m) return undefined;
  const khz = Math.round(Number(m[1]) * 1000);
  return khz > 0 ? khz : undefined;
}

/** hostTscKhz of this machine; undefined off x86 or when /proc is unreadable. */
export async function readHostTscKhz(cpuinfoPath = '/proc/cpuinfo'): Promise<number | undefined> {
  try {
    return hostTscKhz(await readFile(cpuinfoPath, 'utf8'));
  } catch {
    return undefined;
  }
}
