/**
 * Files of a running guest (`/v1/vms/:ref/files…`, `/v1/vms/:ref/archive`): thin, checked calls
 * onto the VM's GuestChannel. Bytes are streamed through, never held whole; what the guest
 * sends back is handed on as it came (a tar out of the guest is hostile input: the client unpacks
 * it only with src/archive/safe-extract.ts). The channel comes from an injected resolver (the
 * process service owns the channels), so tests swap in a fake guest.
 */
import type { Readable } from 'node:stream';
import { BangerError, toBangerError } from '../../api/errors.js';
import { guestPathProblem } from '../../api/files-wire.js';
import type { GuestChannel, GuestDirEntry, GuestStat } from '../../guest/guest-channel.js';

export interface FilesServiceDeps {
  /** The channel of a running VM; rejects (conflict/precondition_failed/not_found) otherwise. */
  guest: (ref: string) => Promise<GuestChannel>;
}

export interface RawDownload<T> {
  stream: Readable;
  /** Settles after the last byte: the guest's verdict on the whole body. */
  done: Promise<T>;
}

/** Checks a guest path, naming the parameter in the error. */
export function checkGuestPath(path: string | null | undefined, what = 'path'): string {
  if (path === null || path === undefined) throw new BangerError('bad_request', `missing ${what}`, { fix: `give the guest path as ?${what}=/abs/path` });
  const problem = guestPathProblem(path);
  if (problem) throw new BangerError('bad_request', `${what} ${JSON.stringify(path.slice(0, 200))} ${problem}`, { fix: 'give an absolute guest path' });
  return path;
}

/**
 * Turns what a guest operation threw into an API error. Errors the channel already typed pass
 * through; untyped ones (the agent's `{"ok":false,"error":"…"}` text) are classified by their
 * errno words, and anything else is the guest's failure, not a daemon bug.
 */
export function guestError(e: unknown, what: string): BangerError {
  if (e instanceof BangerError) return e;
  const err = e as NodeJS.ErrnoException;
  const text = `${err?.code ?? ''} ${err?.message ?? String(e)}`;
  const message = `${what}: ${(err?.message ?? String(e)).slice(0, 500)}`;
  if (/ENOENT|no such file/i.test(text)) return new BangerError('not_found', message, { fix: 'check the guest path' });
  if (/EEXIST|already exists|ENOTEMPTY|not empty/i.test(text)) return new BangerError('conflict', message);
  if (/EACCES|EPERM|permission denied|not permitted/i.test(text)) return new BangerError('precondition_failed', message);
  if (/ENOTDIR|EISDIR|not a directory|is a directory|not a regular file|ELOOP|symlink/i.test(text)) return new BangerError('bad_request', message);
  if (err?.name === 'AbortError') return new BangerError('cancelled', `${what}: cancelled`);
  return new BangerError('upstream_failed', message, { fix: 'see the guest agent: banger vm logs <vm>', cause: e });
}

async function guarded<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw guestError(e, what);
  }
}

export class FilesService {
  constructor(private readonly d: FilesServiceDeps) {}

  private channel(ref: string): Promise<GuestChannel> {
    return this.d.guest(ref).catch((e) => {
      throw toBangerError(e);
    });
  }

  async read(ref: string, path: string, signal?: AbortSignal): Promise<RawDownload<{ size: number; mode: number }>> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    const r = await guarded(`cannot read ${path}`, () => g.readFile(path, signal));
    return { stream: r.stream, done: r.done.catch((e) => Promise.reject(guestError(e, `reading ${path} failed`))) };
  }

  async write(ref: string, path: string, data: Readable, opts: { mode: number; mkdirs: boolean; signal?: AbortSignal }): Promise<{ size: number }> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    return guarded(`cannot write ${path}`, () => g.writeFile(path, data, opts));
  }

  async stat(ref: string, path: string): Promise<GuestStat> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    return guarded(`cannot stat ${path}`, () => g.stat(path));
  }

  async list(ref: string, path: string): Promise<{ entries: GuestDirEntry[]; truncated: boolean }> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    return guarded(`cannot list ${path}`, () => g.list(path));
  }

  async mkdir(ref: string, path: string, opts: { mode?: number | undefined; parents: boolean }): Promise<void> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    await guarded(`cannot create directory ${path}`, () => g.mkdir(path, { parents: opts.parents, ...(opts.mode !== undefined ? { mode: opts.mode } : {}) }));
  }

  async move(ref: string, from: string, to: string, overwrite: boolean): Promise<void> {
    checkGuestPath(from, 'from');
    checkGuestPath(to, 'to');
    const g = await this.channel(ref);
    await guarded(`cannot move ${from} to ${to}`, () => g.move(from, to, { overwrite }));
  }

  async remove(ref: string, path: string, recursive: boolean): Promise<void> {
    checkGuestPath(path);
    if (path.split('/').every((p) => p === '' || p === '.'))
      throw new BangerError('bad_request', 'refusing to remove the guest\'s root directory "/"', { fix: 'name what to remove' });
    const g = await this.channel(ref);
    await guarded(`cannot remove ${path}`, () => g.remove(path, { recursive }));
  }

  /** The guest's tar of `path` (hostile bytes: unpack only with src/archive/safe-extract.ts). */
  async archiveOut(ref: string, path: string, signal?: AbortSignal): Promise<RawDownload<void>> {
    checkGuestPath(path);
    if (path.split('/').every((p) => p === '' || p === '.'))
      throw new BangerError('bad_request', 'cannot archive the guest\'s root directory "/"', { fix: 'name a directory below it, e.g. /root' });
    const g = await this.channel(ref);
    const r = await guarded(`cannot archive ${path}`, () => g.tarOut(path, signal));
    return { stream: r.stream, done: r.done.catch((e) => Promise.reject(guestError(e, `archiving ${path} failed`))) };
  }

  /** Unpacks a tar stream into the guest directory `path` (created when missing) with the guest's tar. */
  async archiveIn(ref: string, path: string, data: Readable, opts: { sameOwner: boolean; signal?: AbortSignal }): Promise<void> {
    checkGuestPath(path);
    const g = await this.channel(ref);
    await guarded(`cannot unpack into ${path}`, () => g.tarIn(path, data, opts));
  }
}
