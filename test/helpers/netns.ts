import { existsSync } from 'node:fs';
import { ProcessRunner } from '../../src/host/runner.js';

/** Whether a host tool is installed (sbin included, which a non-login PATH may lack). */
export const sbin = (cmd: string): boolean => ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(`${d}/${cmd}`));

/**
 * Why network-namespace tests cannot run here, or false when they can: Linux, root (`needsRoot`
 * says what for), iproute2, and a namespace that can really be created (some containers refuse).
 */
export async function netnsUnavailable(needsRoot: string, probeName: string): Promise<string | false> {
  if (process.platform !== 'linux') return 'Linux only';
  if (process.getuid?.() !== 0) return `requires root: ${needsRoot}`;
  if (!sbin('ip')) return 'requires iproute2 (`ip`)';
  const runner = new ProcessRunner();
  const r = await runner.run('ip', ['netns', 'add', probeName], { allowFailure: true });
  if (r.code !== 0) return `cannot create network namespaces here: ${r.stderr.trim()}`;
  await runner.run('ip', ['netns', 'del', probeName], { allowFailure: true });
  return false;
}
