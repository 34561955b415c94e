import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Layout } from '../../config/layout.js';
import { killNow, processesNaming } from '../../host/orphans.js';
import type { Repos } from '../../store/repos.js';

/** The KVM boot probe's working directories: under the runtime dir, so leftovers are findable. */
export const probeDir = (layout: Layout) => join(layout.runtimeDir, 'probe');

/**
 * Work a daemon that died mid-operation left behind: staging directories (imports, pulls, builds),
 * partial downloads, and image or kernel directories published by rename whose row was never
 * inserted. Only one daemon runs per state dir, so at start-up nothing in staging can belong to a
 * live operation. Returns what was removed, for the log. (VMs: VmService.reconcile.)
 */
export async function sweepLeftovers(layout: Layout, repos: Pick<Repos, 'images' | 'kernels'>): Promise<string[]> {
  const removed: string[] = [];
  const sweep = async (dir: string, match: (name: string) => boolean) => {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!match(name)) continue;
      await rm(join(dir, name), { recursive: true, force: true });
      removed.push(join(dir, name));
    }
  };
  await sweep(layout.stagingDir, () => true);
  await sweep(join(layout.cacheDir, 'blobs', 'sha256'), (n) => n.includes('.partial'));
  await sweep(join(layout.cacheDir, 'downloads'), (n) => n.endsWith('.partial'));
  // A KVM boot probe's QEMU (it names its directory in its argv) and its files.
  for (const p of await processesNaming(probeDir(layout))) {
    await killNow(p.pid);
    removed.push(`KVM probe process ${p.pid}`);
  }
  await sweep(layout.runtimeDir, (n) => n === 'probe');
  await sweep(layout.imagesDir, (id) => !repos.images.byId(id));
  await sweep(layout.kernelsDir, (id) => !repos.kernels.byId(id));
  return removed;
}
