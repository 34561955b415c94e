/** A running VM's files through the daemon's files API (docs/processes.md): bytes, text, streams, trees. */
import { BangerError } from '../api/errors.js';
import type { GuestDirList, GuestFileStat } from '../api/file-schemas.js';
import type { BangerClient } from '../client/client.js';
import { abortable, type CallOptions, throwIfAborted } from './util.js';

export type { GuestDirList, GuestFileStat };

// node:stream through getBuiltinModule, as the client does: loaded when first used, not at import.
const stream = () => process.getBuiltinModule('node:stream');

/** Default bound of `read`/`readText` (the whole file is held in memory): 64 MiB. */
export const DEFAULT_READ_LIMIT = 64 * 1024 * 1024;

export type WriteData = string | Uint8Array | import('node:stream').Readable | AsyncIterable<Uint8Array>;

export interface DownloadOptions extends CallOptions {
  /** Bounds of what the guest may send (default 1 TiB, 1 million entries). */
  maxBytes?: number;
  maxEntries?: number;
}

export class Files {
  constructor(
    private readonly client: BangerClient,
    private readonly vm: string,
  ) {}

  /** The file's bytes (at most `maxBytes`, default 64 MiB: larger files → `payload_too_large`; use readStream). */
  async read(path: string, o: { maxBytes?: number } & CallOptions = {}): Promise<Buffer> {
    throwIfAborted(o.signal, `reading ${path}`);
    const limit = o.maxBytes ?? DEFAULT_READ_LIMIT;
    const dl = await abortable(this.client.readFile(this.vm, path), o.signal);
    const onAbort = () => dl.stream.destroy();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of dl.stream as AsyncIterable<Buffer>) {
        size += c.length;
        if (size > limit) {
          dl.stream.destroy();
          throw new BangerError('payload_too_large', `${this.vm}:${path} is larger than ${limit} bytes`, { fix: 'read it with files.readStream()' });
        }
        chunks.push(c);
      }
      await dl.done;
      return Buffer.concat(chunks);
    } catch (e) {
      throwIfAborted(o.signal, `reading ${path}`);
      throw e;
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** The file as UTF-8 text. */
  async readText(path: string, o: { maxBytes?: number } & CallOptions = {}): Promise<string> {
    return (await this.read(path, o)).toString('utf8');
  }

  /**
   * The file as a stream. It errors (instead of ending) when the daemon reports a failure after
   * the last byte or the body was cut short, so a partial file is never taken for a whole one.
   */
  async readStream(path: string, o: CallOptions = {}): Promise<import('node:stream').Readable> {
    const dl = await abortable(this.client.readFile(this.vm, path), o.signal);
    const out = new (stream().PassThrough)();
    dl.stream.pipe(out, { end: false });
    dl.stream.on('end', () => {
      dl.done.then(
        () => out.end(),
        (e: Error) => out.destroy(e),
      );
    });
    dl.stream.on('error', (e) => out.destroy(e));
    out.on('close', () => dl.stream.destroy());
    o.signal?.addEventListener('abort', () => out.destroy(new BangerError('cancelled', `reading ${path} was aborted`)), { once: true });
    return out;
  }

  /** Writes a file atomically (a temporary file renamed over it); `mkdirs` creates its parents. */
  async write(path: string, data: WriteData, o: { mode?: number; mkdirs?: boolean } & CallOptions = {}): Promise<{ size: number }> {
    throwIfAborted(o.signal, `writing ${path}`);
    const { Readable } = stream();
    const source =
      typeof data === 'string' || data instanceof Uint8Array
        ? Readable.from([typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength)])
        : data instanceof Readable
          ? data
          : Readable.from(data);
    const onAbort = () => source.destroy(new BangerError('cancelled', `writing ${path} was aborted`));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await this.client.writeFile(this.vm, path, source, { ...(o.mode !== undefined ? { mode: o.mode } : {}), ...(o.mkdirs ? { mkdirs: true } : {}) });
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
    }
  }

  stat(path: string, o: CallOptions = {}): Promise<GuestFileStat> {
    return abortable(this.client.statFile(this.vm, path), o.signal);
  }

  /** A directory's entries (at most 10,000: `truncated` says when there were more). */
  list(path: string, o: CallOptions = {}): Promise<GuestDirList> {
    return abortable(this.client.listFiles(this.vm, path), o.signal);
  }

  async mkdir(path: string, o: { parents?: boolean; mode?: number } & CallOptions = {}): Promise<void> {
    await abortable(this.client.makeDir(this.vm, { path, parents: !!o.parents, ...(o.mode !== undefined ? { mode: o.mode } : {}) }), o.signal);
  }

  /** rename(2) in the guest; refuses to replace an existing target unless `overwrite`. */
  async move(from: string, to: string, o: { overwrite?: boolean } & CallOptions = {}): Promise<void> {
    await abortable(this.client.moveFile(this.vm, { from, to, overwrite: !!o.overwrite }), o.signal);
  }

  async remove(path: string, o: { recursive?: boolean } & CallOptions = {}): Promise<void> {
    await abortable(this.client.removeFile(this.vm, path, { recursive: !!o.recursive }), o.signal);
  }

  /**
   * Copies the CONTENTS of a host directory into `guestDir` (created when missing; existing files
   * are replaced). Links inside the tree are copied as links; the host files' owners are not kept.
   */
  async upload(hostDir: string, guestDir: string, o: CallOptions = {}): Promise<{ skipped: string[] }> {
    throwIfAborted(o.signal, `uploading ${hostDir}`);
    const { uploadTree } = await import('./dirs.js');
    return uploadTree(this.client, this.vm, hostDir, guestDir, o.signal);
  }

  /**
   * Copies the guest directory `guestDir` to `hostDir`, which must not exist yet (its parent must).
   * The guest's tar is untrusted: it is unpacked by banger's strict extractor into a staging
   * directory beside `hostDir` (no path out of it, no link out of the tree, no devices, setuid
   * bits dropped, modes masked by this process's umask, files owned by this user), then renamed
   * into place.
   */
  async download(guestDir: string, hostDir: string, o: DownloadOptions = {}): Promise<void> {
    throwIfAborted(o.signal, `downloading ${guestDir}`);
    const { downloadTree } = await import('./dirs.js');
    return downloadTree(this.client, this.vm, guestDir, hostDir, o);
  }
}
