import { rename, rm } from 'node:fs/promises';
import { crashPoint } from '../../util/crash-point.js';

/**
 * Publishes a directory assembled in staging: one rename into place, then its row. A row that
 * cannot be written takes the directory back out; a daemon killed between the two leaves a
 * directory no row owns, which the next start removes (sweepLeftovers). Staging itself is the
 * caller's to remove, whatever happened.
 */
export async function publishStaged<T>(o: { staging: string; finalDir: string; insertRow: () => T; crashPointName: string }): Promise<T> {
  await rename(o.staging, o.finalDir);
  crashPoint(o.crashPointName);
  try {
    return o.insertRow();
  } catch (e) {
    await rm(o.finalDir, { recursive: true, force: true });
    throw e;
  }
}
