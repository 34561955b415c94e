import { rm, stat, truncate } from 'node:fs/promises';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from './runner.js';

/**
 * Disk operations through host tools (qemu-img, e2fsprogs, cp). Nothing here mounts anything:
 * ext4 contents are written with mkfs.ext4 -d and read with debugfs.
 */
export class DiskTools {
  constructor(private readonly runner: CommandRunner) {}

  /** A copy-on-write qcow2 overlay on a base image (raw by default): O(1) in the base's size (~20 ms). */
  async createOverlay(basePath: string, outPath: string, baseFormat: 'raw' | 'qcow2' = 'raw'): Promise<void> {
    await this.runner.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', basePath, '-F', baseFormat, outPath], { timeoutMs: 30_000 });
  }

  /** Grows a qcow2's virtual size (the top layer only: frozen layers below keep theirs; reads past them are zeros). */
  async growQcow2(path: string, newSizeBytes: number): Promise<void> {
    const info = await this.runner.run('qemu-img', ['info', '--output=json', '-f', 'qcow2', path], { timeoutMs: 30_000 });
    const cur = Number((JSON.parse(info.stdout) as { 'virtual-size'?: number })['virtual-size']);
    if (newSizeBytes < cur) {
      throw new BangerError('bad_request', `disk can only grow: it is ${cur} bytes, asked for ${newSizeBytes}`, {
        fix: 'give a size at least as large as the current one',
      });
    }
    if (newSizeBytes > cur) await this.runner.run('qemu-img', ['resize', '-q', '-f', 'qcow2', path, String(newSizeBytes)], { timeoutMs: 30_000 });
  }

  /** A raw copy for VMMs without qcow2 (Firecracker): reflink where the filesystem can, else a sparse copy. */
  async cloneRaw(basePath: string, outPath: string): Promise<void> {
    await this.runner.run('cp', ['--reflink=auto', '--sparse=always', basePath, outPath], { timeoutMs: 600_000 });
  }

  /** Builds an ext4 at its final size, filled from a directory tree without mounting. */
  async mkfsFromDir(outPath: string, sizeBytes: number, seedDir: string | undefined, label: string): Promise<void> {
    await rm(outPath, { force: true });
    await truncate(outPath, 0).catch(() => {});
    const sizeKib = Math.floor(sizeBytes / 1024);
    const args = ['-q', '-F', '-t', 'ext4', '-L', label, '-E', 'lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0', '-m', '0'];
    if (seedDir) args.push('-d', seedDir);
    args.push(outPath, `${sizeKib}k`);
    await this.runner.run('mkfs.ext4', args, { timeoutMs: 300_000 });
  }

  /**
   * Grows a stopped VM's disk file; the filesystem inside is grown by the guest at its next boot
   * (banger-init), so no host tool parses a filesystem the guest wrote. Shrinking is refused.
   */
  async growFile(path: string, newSizeBytes: number): Promise<void> {
    const cur = (await stat(path)).size;
    if (newSizeBytes < cur) {
      throw new BangerError('bad_request', `disk can only grow: it is ${cur} bytes, asked for ${newSizeBytes}`, {
        fix: 'give a size at least as large as the current one',
      });
    }
    if (newSizeBytes > cur) await truncate(path, newSizeBytes);
  }

  /** Validates that a file is an ext4 filesystem and returns its size in bytes. */
  async inspectExt4(path: string): Promise<{ blockCount: number; blockSize: number }> {
    const r = await this.runner.run('dumpe2fs', ['-h', path], { timeoutMs: 30_000, allowFailure: true });
    if (r.code !== 0) {
      throw new BangerError('bad_request', `${path} is not an ext2/3/4 filesystem image`, {
        fix: 'give a raw ext4 image (e.g. made with mkfs.ext4 -d DIR IMAGE SIZE)',
      });
    }
    const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(r.stdout)?.[1] ?? Number.NaN);
    return { blockCount: get('Block count'), blockSize: get('Block size') };
  }

  /** Runs a debugfs command file against an image (writable). debugfs exits 0 even when commands fail: its stderr tells. */
  async debugfsScript(imagePath: string, scriptPath: string): Promise<void> {
    const r = await this.runner.run('debugfs', ['-w', '-f', scriptPath, imagePath], { timeoutMs: 600_000, allowFailure: true });
    const errors = r.stderr.split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l));
    if (r.code !== 0 || errors.length) {
      throw new BangerError('host_command_failed', `debugfs could not finish ${imagePath}: ${errors.slice(0, 5).join('; ') || `exit ${r.code}`}`);
    }
  }

  /** True when any of the paths exists in the image (regular file or symlink). */
  async imageHasAny(imagePath: string, paths: string[]): Promise<boolean> {
    for (const p of paths) {
      const r = await this.runner.run('debugfs', ['-R', `stat ${p}`, imagePath], { timeoutMs: 30_000, allowFailure: true });
      if (r.code === 0 && !/File not found|not found by ext2_lookup/.test(r.stderr)) return true;
    }
    return false;
  }
}
