import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Layout } from '../../config/layout.js';
import type { Repos } from '../../store/repos.js';

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
  await sweep(layout.imagesDir, (id) => !repos.images.byId(id));
  await sweep(layout.kernelsDir, (id) => !repos.kernels.byId(id));
  return removed;
}
