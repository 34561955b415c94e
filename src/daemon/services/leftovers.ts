import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Layout } from '../../config/layout.js';

/**
 * Work a daemon that died mid-operation left behind: staging directories (imports, pulls, builds)
 * and partial downloads. Only one daemon runs per state dir, so at start-up nothing in staging
 * can belong to a live operation. Returns what was removed, for the log.
 */
export async function sweepLeftovers(layout: Layout): Promise<string[]> {
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
  return removed;
}
