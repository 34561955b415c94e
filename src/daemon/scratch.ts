import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Layout } from '../config/layout.js';
import { ScratchSpace } from '../host/scratch.js';

/**
 * Where this daemon unpacks trees: tmpfs when they fit, in a private directory with a random name
 * that state/scratch-mem records (one daemon per state dir), else the staging dir. The predictable
 * name of older versions is only ever removed, when it is ours.
 */
export function scratchSpaceFor(layout: Layout): ScratchSpace {
  const hasShm = existsSync('/dev/shm');
  return new ScratchSpace({
    diskDir: join(layout.stagingDir, 'scratch'),
    memParent: hasShm ? '/dev/shm' : undefined,
    recordFile: join(layout.stateDir, 'scratch-mem'),
    legacyDirs: hasShm ? [join('/dev/shm', `banger-${createHash('sha256').update(layout.stateDir).digest('hex').slice(0, 12)}`)] : [],
  });
}
