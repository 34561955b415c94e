/**
 * The host paths an MCP client may name. The client (a coding agent) is a hostile-ish caller: it
 * may ask for ~/.ssh/id_ed25519, a symlink planted in the repository, or `../../etc`. Every host
 * path goes through here: resolved with realpath (every symlink followed, `..` gone), then kept
 * only when it is one of the roots or below one. Files are opened with O_NOFOLLOW and checked
 * again on the open descriptor (regular file, size bound, still under a root), so a link swapped
 * in between the check and the open is refused too. See docs/security.md ("MCP server").
 */
import { constants, realpathSync } from 'node:fs';
import { type FileHandle, link, open, readlink, realpath, unlink } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { BangerError } from '../api/errors.js';

/** A host file read through the allowlist is at most this big. */
export const MAX_HOST_READ_BYTES = 8 * 1024 * 1024;

const isUnder = (path: string, root: string): boolean => path === root || path.startsWith(root === '/' ? '/' : `${root}/`);

function refused(path: string, why: string): BangerError {
  return new BangerError('precondition_failed', `host path ${JSON.stringify(path)} ${why}`, {
    fix: 'use a path inside the allowed directories (sandbox_info lists them), or restart the server with `banger mcp --allow DIR`',
  });
}

export class HostAllowlist {
  private readonly roots: string[] = [];

  /**
   * @param cwd where relative paths start (the directory the server started in)
   * @param roots allowed directories; each must exist (it is resolved once, now)
   */
  constructor(
    readonly cwd: string,
    roots: readonly string[],
  ) {
    for (const r of roots) this.add(r);
  }

  /** Adds a root (resolved now: a directory renamed or relinked later does not widen the list). */
  add(root: string): void {
    let real: string;
    try {
      real = realpathSync(resolve(this.cwd, root));
    } catch (e) {
      throw new BangerError('bad_request', `allowed path ${root} cannot be resolved: ${(e as Error).message}`, { fix: 'give an existing directory' });
    }
    if (!this.roots.includes(real)) this.roots.push(real);
  }

  /** This allowlist plus one more root (an already resolved path), for one operation. */
  withRoot(real: string): HostAllowlist {
    const more = new HostAllowlist(this.cwd, []);
    more.roots.push(...this.roots);
    if (!more.roots.includes(real)) more.roots.push(real);
    return more;
  }

  list(): readonly string[] {
    return this.roots;
  }

  /** True when `real` (already resolved) is a root or below one. */
  covers(real: string): boolean {
    return this.roots.some((r) => isUnder(real, r));
  }

  /** The real path of an existing host path, or a refusal when it is outside every root. */
  async resolve(path: string): Promise<string> {
    if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) throw refused(String(path), 'is not a path');
    const abs = isAbsolute(path) ? path : resolve(this.cwd, path);
    let real: string;
    try {
      real = await realpath(abs);
    } catch (e) {
      // Said the same way whether or not it exists outside the roots: no probing of the host.
      const lexical = resolve(abs);
      if (!this.covers(lexical)) throw refused(path, 'is outside the allowed directories');
      throw new BangerError('not_found', `host path ${JSON.stringify(path)} does not exist (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    // One message whatever the real path is: a refusal names nothing outside the roots and says
    // nothing of whether it exists.
    if (!this.covers(real)) throw refused(path, 'is outside the allowed directories');
    return real;
  }

  /**
   * Opens an allowed regular file for reading: resolved, opened without following a last symlink,
   * then checked on the descriptor (a regular file, at most maxBytes, and /proc/self/fd says it is
   * still under a root). The caller closes the handle.
   */
  async openForRead(path: string, maxBytes = MAX_HOST_READ_BYTES): Promise<{ handle: FileHandle; real: string; size: number }> {
    const real = await this.resolve(path);
    const handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch((e: NodeJS.ErrnoException) => {
      throw refused(path, e.code === 'ELOOP' ? 'became a symbolic link' : `cannot be opened (${e.code ?? e.message})`);
    });
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw refused(path, 'is not a regular file');
      if (st.size > maxBytes) {
        throw new BangerError('payload_too_large', `host file ${JSON.stringify(path)} is ${st.size} bytes (at most ${maxBytes} are read)`, {
          fix: 'read a smaller file',
        });
      }
      const opened = await readlink(`/proc/self/fd/${handle.fd}`).catch(() => real);
      if (!this.covers(opened)) throw refused(path, 'is outside the allowed directories');
      return { handle, real, size: st.size };
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  /** An allowed regular file's bytes, at most maxBytes even when it grows while it is read. */
  async readBounded(path: string, maxBytes = MAX_HOST_READ_BYTES): Promise<{ data: Buffer; real: string }> {
    const { handle, real } = await this.openForRead(path, maxBytes);
    try {
      const buf = Buffer.alloc(maxBytes + 1);
      let n = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buf, n, buf.length - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
        if (n > maxBytes) {
          throw new BangerError('payload_too_large', `host file ${JSON.stringify(path)} is larger than ${maxBytes} bytes`, { fix: 'read a smaller file' });
        }
      }
      return { data: buf.subarray(0, n), real };
    } finally {
      await handle.close();
    }
  }

  /**
   * Writes a NEW host file under a root without ever replacing one: the bytes go to a staging file
   * in the same (allowed, real) directory, created O_EXCL|O_NOFOLLOW, then hard-linked to the final
   * name (link fails when the name exists: no clobbering, no following a planted link) and the
   * staging name removed.
   */
  async writeNew(path: string, data: string | Buffer): Promise<string> {
    const abs = isAbsolute(path) ? path : resolve(this.cwd, path);
    const name = basename(abs);
    if (!name || name === '.' || name === '..') throw refused(path, 'does not name a file');
    const dir = await this.resolve(dirname(abs));
    const target = join(dir, name);
    const staging = join(dir, `.${name}.banger-${process.pid}-${Date.now().toString(36)}`);
    const fh = await open(staging, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(staging, target);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new BangerError('conflict', `host file ${JSON.stringify(path)} already exists`, {
          fix: 'choose another name (existing files are never replaced)',
        });
      }
      throw e;
    } finally {
      await unlink(staging).catch(() => {});
    }
    return target;
  }
}
