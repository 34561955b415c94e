import { mkdir, mkdtemp, rm, statfs } from 'node:fs/promises';
import { freemem } from 'node:os';
import { join } from 'node:path';

/**
 * Where to unpack a tree that only lives until its ext4 is built. Creating thousands of small
 * files costs ~0.6 ms each on some disks (and ~6 µs on tmpfs), so a tree that comfortably fits in
 * free memory goes to /dev/shm; anything else, or a host without it, uses the disk staging dir.
 */
export class ScratchSpace {
  constructor(
    private readonly diskDir: string,
    /** A per-daemon directory on tmpfs, or undefined to always use the disk. */
    private readonly memDir: string | undefined,
  ) {}

  async make(prefix: string, estimateBytes: number): Promise<string> {
    if (this.memDir && (await this.fitsInMemory(estimateBytes))) {
      await mkdir(this.memDir, { recursive: true, mode: 0o700 });
      return mkdtemp(join(this.memDir, `${prefix}-`));
    }
    await mkdir(this.diskDir, { recursive: true, mode: 0o700 });
    return mkdtemp(join(this.diskDir, `${prefix}-`));
  }

  private async fitsInMemory(bytes: number): Promise<boolean> {
    const fs = await statfs(this.memDir as string).catch(() => statfs('/dev/shm').catch(() => undefined));
    if (!fs) return false;
    const free = fs.bavail * fs.bsize;
    // Twice the estimate in both: the estimate is rough, and the rest of the host needs memory too.
    return free > bytes * 2 && freemem() > bytes * 2;
  }

  /** Leftovers of a daemon that died mid-pull (one daemon per state dir owns memDir). */
  async sweep(): Promise<void> {
    if (this.memDir) await rm(this.memDir, { recursive: true, force: true });
  }
}
