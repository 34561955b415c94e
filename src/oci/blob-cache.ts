import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BangerError } from '../api/errors.js';
import { KeyedMutex } from '../util/keyed-mutex.js';
import { DIGEST } from './reference.js';

export interface PruneReport {
  removed: number;
  freedBytes: number;
  kept: number;
  dryRun: boolean;
}

/**
 * Content-addressed blobs (`<dir>/sha256/<hex>`): a blob is only ever published under its name
 * after its bytes hashed to it and its length matched the descriptor, so a cached blob is trusted
 * without re-hashing. Downloads go to a unique `.partial` file and are renamed in place.
 */
export class BlobCache {
  private readonly fetching = new KeyedMutex();
  private readonly pinned = new Map<string, number>();

  constructor(readonly dir: string) {}

  pathOf(digest: string): string {
    if (!DIGEST.test(digest)) throw new BangerError('rejected_content', `bad digest ${digest}`);
    return join(this.dir, 'sha256', digest.slice(7));
  }

  async has(digest: string, size: number): Promise<boolean> {
    const st = await stat(this.pathOf(digest)).catch(() => undefined);
    return !!st && st.isFile() && st.size === size;
  }

  /** Keeps blobs of a running pull out of `prune`. */
  pin(digest: string): () => void {
    this.pinned.set(digest, (this.pinned.get(digest) ?? 0) + 1);
    return () => {
      const n = (this.pinned.get(digest) ?? 1) - 1;
      if (n <= 0) this.pinned.delete(digest);
      else this.pinned.set(digest, n);
    };
  }

  /**
   * Makes sure the blob is cached: downloads it through `open` (which returns the body stream)
   * while hashing, then verifies digest and size before publishing.
   */
  async ensure(digest: string, size: number, open: () => Promise<Readable>, onBytes?: (n: number) => void): Promise<string> {
    const path = this.pathOf(digest);
    return this.fetching.run(digest, async () => {
      if (await this.has(digest, size)) {
        onBytes?.(size);
        return path;
      }
      await mkdir(join(this.dir, 'sha256'), { recursive: true, mode: 0o700 });
      const partial = `${path}.partial-${randomBytes(4).toString('hex')}`;
      const hash = createHash('sha256');
      let seen = 0;
      const meter = new Transform({
        transform(chunk: Buffer, _e, cb) {
          seen += chunk.length;
          if (seen > size) {
            cb(
              new BangerError('rejected_content', `blob ${digest} is larger than the ${size} bytes its descriptor declares`, {
                fix: 'the registry served the wrong content; try again or report it to the registry owner',
              }),
            );
            return;
          }
          hash.update(chunk);
          onBytes?.(chunk.length);
          cb(null, chunk);
        },
      });
      try {
        await pipeline(await open(), meter, createWriteStream(partial, { mode: 0o600 }));
        if (seen !== size) {
          throw new BangerError('rejected_content', `blob ${digest} is truncated: got ${seen} of ${size} bytes`, {
            fix: 'the download was cut short; pull again',
          });
        }
        const actual = `sha256:${hash.digest('hex')}`;
        if (actual !== digest) {
          throw new BangerError('rejected_content', `blob digest mismatch: expected ${digest}, got ${actual}`, {
            fix: 'the registry served corrupt or tampered content; nothing was kept',
          });
        }
        await rename(partial, path);
        return path;
      } catch (e) {
        await rm(partial, { force: true });
        if (e instanceof BangerError) throw e;
        const msg = e instanceof Error ? e.message : String(e);
        throw new BangerError('upstream_failed', `download of blob ${digest} failed after ${seen} of ${size} bytes: ${msg}`, {
          fix: 'check the registry is reachable and pull again (finished blobs are kept)',
        });
      }
    });
  }

  open(digest: string): Readable {
    return createReadStream(this.pathOf(digest));
  }

  /** Removes every cached blob no running pull holds, and stale partial downloads. */
  async prune(dryRun: boolean): Promise<PruneReport> {
    const dir = join(this.dir, 'sha256');
    const names = await readdir(dir).catch(() => [] as string[]);
    const report: PruneReport = { removed: 0, freedBytes: 0, kept: 0, dryRun };
    for (const name of names) {
      const hex = name.slice(0, 64);
      if (this.pinned.has(`sha256:${hex}`)) {
        report.kept++;
        continue;
      }
      const st = await stat(join(dir, name)).catch(() => undefined);
      if (!st) continue;
      report.removed++;
      report.freedBytes += st.size;
      if (!dryRun) await rm(join(dir, name), { force: true });
    }
    return report;
  }
}
