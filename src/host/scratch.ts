import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, mkdtemp, open, rename, rm, stat, statfs } from 'node:fs/promises';
import { freemem } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { BangerError } from '../api/errors.js';

/** Budgets of the memory-backed trees handed out (path → bytes), for `memoryBudgetOf`. */
const budgets = new Map<string, number>();

/**
 * The most bytes a tree made by `ScratchSpace.make` may put in RAM, or undefined for a tree on
 * disk (or not made here). The unpacker stops (or its caller moves to disk) past it: a layer's
 * compressed size says nothing about what it inflates to.
 */
export function memoryBudgetOf(tree: string): number | undefined {
  return budgets.get(tree);
}

/** Small images (whose tar headers compress to almost nothing) may use this much RAM whatever their estimate. */
const MIN_BUDGET = 256 * 1024 * 1024;

/** Twice the estimate (at least MIN_BUDGET), never more than half of what is free. */
function defaultBudget(estimate: number, free: number): number {
  return Math.min(Math.max(estimate * 2, MIN_BUDGET), Math.floor(free / 2));
}

/** How a memory-backed directory is named: unpredictable, so no other user can plant it first. */
const MEM_NAME = /^banger-[0-9a-f]{32}$/;

export interface ScratchOptions {
  /** Unpacked trees too big for memory go here (inside the state dir, which is ours). */
  diskDir: string;
  /** The tmpfs to put trees on (normally /dev/shm), or undefined to always use the disk. */
  memParent: string | undefined;
  /**
   * A file in the state dir naming the memory-backed directory in use, so the next daemon start
   * finds and removes what a daemon that died left in RAM.
   */
  recordFile: string;
  /**
   * Directories of older versions (a predictable `/dev/shm/banger-<hash>`): removed when they are
   * ours, never used, left alone when they are anybody else's or not a plain directory.
   */
  legacyDirs?: string[];
  /** How many bytes a tree estimated at `estimate` may put in RAM, given what is free (tests inject small ones). */
  memBudget?: (estimate: number, freeBytes: number) => number;
}

const uid = () => process.getuid?.() ?? -1;

/** True when `path` is a real directory (not a link) owned by us with mode 0700. */
async function isPrivateDir(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => undefined);
  return !!st && st.isDirectory() && !st.isSymbolicLink() && st.uid === uid() && (st.mode & 0o777) === 0o700;
}

/** Removes `path` only when it is a real directory owned by us; rm never follows links inside it. */
async function removeIfOurs(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => undefined);
  if (!st?.isDirectory() || st.uid !== uid()) return false;
  await rm(path, { recursive: true, force: true });
  return true;
}

/**
 * Where to unpack a tree that only lives until its ext4 is built. Creating thousands of small
 * files costs ~0.6 ms each on some disks (and ~6 µs on tmpfs), so a tree that comfortably fits in
 * free memory goes to a private directory on /dev/shm; anything else, or a host without it, uses
 * the disk staging dir.
 *
 * /dev/shm is shared with every local user: the directory has a random name (created with
 * mkdir, which fails if anything is already there), is recorded in the state dir before it is
 * made, and is checked (a real directory, ours, mode 0700) each time before a tree goes in it.
 */
export class ScratchSpace {
  private memDir: string | undefined;

  constructor(private readonly opts: ScratchOptions) {}

  /** The memory-backed directory in use, if one was made. */
  get memoryDir(): string | undefined {
    return this.memDir;
  }

  async make(prefix: string, estimateBytes: number): Promise<string> {
    // Forget the budgets of trees that are gone (their callers remove them).
    for (const p of [...budgets.keys()]) if (!(await lstat(p).catch(() => undefined))) budgets.delete(p);
    const free = this.opts.memParent && (await this.parentIsSafe()) ? await this.freeMemory() : 0;
    // Twice the estimate in both: the estimate is rough, and the rest of the host needs memory too.
    if (this.opts.memParent && free > estimateBytes * 2) {
      const dir = await this.ensureMemDir();
      const tree = await mkdtemp(join(dir, `${prefix}-`));
      const budget = this.opts.memBudget ? this.opts.memBudget(estimateBytes, free) : defaultBudget(estimateBytes, free);
      budgets.set(tree, budget);
      return tree;
    }
    await mkdir(this.opts.diskDir, { recursive: true, mode: 0o700 });
    return mkdtemp(join(this.opts.diskDir, `${prefix}-`));
  }

  /** The tmpfs must not let other users rename or remove what is ours: sticky when others may write to it. */
  private async parentIsSafe(): Promise<boolean> {
    const st = await stat(this.opts.memParent as string).catch(() => undefined);
    if (!st?.isDirectory()) return false;
    if (st.uid !== 0 && st.uid !== uid()) return false;
    return (st.mode & 0o022) === 0 || (st.mode & 0o1000) !== 0;
  }

  /** Free bytes on the tmpfs and in RAM, whichever is smaller. */
  private async freeMemory(): Promise<number> {
    const fs = await statfs(this.opts.memParent as string).catch(() => undefined);
    if (!fs) return 0;
    return Math.min(fs.bavail * fs.bsize, freemem());
  }

  /** Our private directory on the tmpfs: the one in use when it still checks out, else a new one. */
  private async ensureMemDir(): Promise<string> {
    if (this.memDir && (await isPrivateDir(this.memDir))) return this.memDir;
    const parent = this.opts.memParent as string;
    for (let attempt = 0; attempt < 5; attempt++) {
      const dir = join(parent, `banger-${randomBytes(16).toString('hex')}`);
      // Recorded first: a daemon killed between the two steps leaves a record of nothing, not a tree nobody knows.
      await this.writeRecord(dir);
      try {
        await mkdir(dir, { mode: 0o700 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      if (!(await isPrivateDir(dir))) {
        throw new BangerError('precondition_failed', `${dir} was made with the wrong owner or mode`, { fix: `check the umask and mount options of ${parent}` });
      }
      this.memDir = dir;
      return dir;
    }
    throw new BangerError('precondition_failed', `could not make a private directory in ${parent}`, {
      fix: `check ${parent} (another user may be filling it with names)`,
    });
  }

  private async writeRecord(dir: string): Promise<void> {
    const tmp = `${this.opts.recordFile}.${randomBytes(6).toString('hex')}.tmp`;
    await mkdir(dirname(this.opts.recordFile), { recursive: true, mode: 0o700 });
    const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await fh.writeFile(`${dir}\n`);
    } finally {
      await fh.close();
    }
    await rename(tmp, this.opts.recordFile);
  }

  /** The memory-backed directory a record names, when it is one this class could have made. */
  private async readRecord(): Promise<string | undefined> {
    const fh = await open(this.opts.recordFile, constants.O_RDONLY | constants.O_NOFOLLOW).catch(() => undefined);
    if (!fh) return undefined;
    try {
      const buf = Buffer.alloc(4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      const path = buf.subarray(0, bytesRead).toString('utf8').trim();
      if (!this.opts.memParent || dirname(path) !== this.opts.memParent || !MEM_NAME.test(basename(path))) return undefined;
      return path;
    } finally {
      await fh.close();
    }
  }

  /**
   * Removes what this daemon, or one that died before it, left in RAM: the recorded directory and
   * the legacy ones, each only when it is a real directory owned by us. Anything else (a link,
   * another user's directory) is left where it is and never used.
   */
  async sweep(): Promise<string[]> {
    const removed: string[] = [];
    const candidates = new Set<string>([...(this.opts.legacyDirs ?? [])]);
    const recorded = await this.readRecord();
    if (recorded) candidates.add(recorded);
    if (this.memDir) candidates.add(this.memDir);
    for (const dir of candidates) {
      if (await removeIfOurs(dir)) removed.push(dir);
      for (const p of budgets.keys()) if (p.startsWith(`${dir}/`)) budgets.delete(p);
    }
    this.memDir = undefined;
    await rm(this.opts.recordFile, { force: true });
    return removed;
  }
}
