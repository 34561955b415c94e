import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../api/errors.js';

export interface DownloadOptions {
  url: string;
  /** Expected SHA-256 (hex). When given, a mismatch rejects the download. */
  sha256?: string | undefined;
  /** Bytes; a larger body (announced or actual) fails the download. */
  maxBytes: number;
  /** Final path; written as `<dest>.<random>.partial` first and renamed once verified. */
  dest: string;
  signal?: AbortSignal | undefined;
  /** Called as bytes arrive; `total` is the Content-Length when the server sent one. */
  onProgress?: ((bytes: number, total: number | undefined) => void) | undefined;
}

export interface DownloadResult {
  path: string;
  sha256: string;
  bytes: number;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** Redacts credentials in a URL before it goes into a message. */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = '';
      u.password = '';
    }
    return u.toString();
  } catch {
    return url;
  }
}

/** True for a host name or address that never leaves this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost') || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * What a document that is not pinned by a checksum (a catalog) may be fetched over: https, or
 * http to loopback (tests, local mirrors). Plain http across a network lets anyone on the path
 * rewrite it. Returns the problem, or undefined when the URL is fine.
 */
export function insecureUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'is not a valid URL';
  }
  if (u.protocol === 'https:') return undefined;
  if (u.protocol === 'http:') return isLoopbackHost(u.hostname) ? undefined : 'uses plain http to a host that is not loopback';
  return `uses the unsupported scheme ${u.protocol}`;
}

export interface OpenUrlOptions {
  /**
   * Checked against the URL and every redirect target before it is requested (redirects are then
   * followed by hand); throws to refuse.
   */
  checkUrl?: (url: string) => void;
}

const MAX_REDIRECTS = 10;

/** Opens a URL as a byte stream: http(s) through global fetch, file: from disk. */
export async function openUrl(url: string, signal?: AbortSignal, opts: OpenUrlOptions = {}): Promise<{ body: Readable; total: number | undefined }> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new BangerError('bad_request', `not a valid URL: ${url}`);
  }
  if (u.protocol === 'file:') {
    const path = fileURLToPath(u);
    const body = createReadStream(path, signal ? { signal } : {});
    // Surface ENOENT and friends as a download failure rather than a raw errno.
    await new Promise<void>((resolve, reject) => {
      body.once('open', () => resolve());
      body.once('error', (e) => reject(new BangerError('upstream_failed', `cannot read ${path}: ${(e as Error).message}`)));
    });
    return { body, total: undefined };
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new BangerError('bad_request', `unsupported URL scheme in ${displayUrl(url)}`, { fix: 'use an http(s):// or file:// URL' });
  }
  let res: Response;
  try {
    if (!opts.checkUrl) res = await fetch(u, { redirect: 'follow', ...(signal ? { signal } : {}) });
    else {
      let hop = u;
      for (let n = 0; ; n++) {
        opts.checkUrl(hop.href);
        res = await fetch(hop, { redirect: 'manual', ...(signal ? { signal } : {}) });
        const location = res.headers.get('location');
        if (res.status < 300 || res.status > 399 || location === null) break;
        await res.body?.cancel().catch(() => {});
        if (n >= MAX_REDIRECTS)
          throw new BangerError('upstream_failed', `${displayUrl(url)} redirects more than ${MAX_REDIRECTS} times`, { fix: 'check the URL' });
        hop = new URL(location, hop);
      }
    }
  } catch (e) {
    if (e instanceof BangerError) throw e;
    if (signal?.aborted) throw new BangerError('cancelled', `download of ${displayUrl(url)} was cancelled`);
    const cause = (e as { cause?: { message?: string; code?: string } }).cause;
    throw new BangerError('upstream_failed', `cannot fetch ${displayUrl(url)}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, {
      fix: 'check the URL and your network (or the mirror configured as debian_mirror)',
    });
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel().catch(() => {});
    throw new BangerError('upstream_failed', `GET ${displayUrl(url)} answered HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`, {
      fix: res.status === 404 ? 'the file is not (or no longer) there: check the URL, or update the catalog' : 'retry later, or use another mirror',
    });
  }
  const len = res.headers.get('content-length');
  const total = len !== null && /^\d+$/.test(len) ? Number(len) : undefined;
  return { body: Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), total };
}

/**
 * A download kept in `cacheDir` under its SHA-256: a file already there is re-hashed and reused,
 * anything else is fetched with {@link downloadVerified}. `onStart` says which it is.
 */
export async function downloadCached(
  cacheDir: string,
  opts: Omit<DownloadOptions, 'dest' | 'sha256'> & { sha256: string },
  onStart?: (cached: boolean) => void,
): Promise<string> {
  const sha256 = opts.sha256.toLowerCase();
  const dest = join(cacheDir, sha256);
  if (await stat(dest).catch(() => undefined)) {
    if ((await sha256File(dest)) === sha256) {
      onStart?.(true);
      return dest;
    }
    await rm(dest, { force: true });
  }
  onStart?.(false);
  await mkdir(cacheDir, { recursive: true, mode: 0o700 });
  await downloadVerified({ ...opts, sha256, dest });
  return dest;
}

/** Reads a small document (a catalog, a Release file) whole; `tooBig` is thrown once it passes `maxBytes`. */
export async function readUrl(url: string, maxBytes: number, tooBig: () => BangerError, signal?: AbortSignal, opts: OpenUrlOptions = {}): Promise<Buffer> {
  const { body } = await openUrl(url, signal, opts);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of body) {
    size += (c as Buffer).length;
    if (size > maxBytes) {
      body.destroy();
      throw tooBig();
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Streams a URL to `dest`: hashes while writing, enforces a size limit, checks the SHA-256 when
 * one is expected, and publishes with one rename. On any failure the partial file is removed and
 * `dest` is untouched. Generic: used for kernel packages and image bundles alike.
 */
export async function downloadVerified(opts: DownloadOptions): Promise<DownloadResult> {
  const expected = opts.sha256?.toLowerCase();
  if (expected !== undefined && !HEX64.test(expected)) {
    throw new BangerError('bad_request', `invalid sha256 "${opts.sha256}" for ${displayUrl(opts.url)}`, { fix: 'a sha256 is 64 hex digits' });
  }
  await mkdir(dirname(opts.dest), { recursive: true });
  const partial = `${opts.dest}.${randomBytes(4).toString('hex')}.partial`;
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    const { body, total } = await openUrl(opts.url, opts.signal);
    if (total !== undefined && total > opts.maxBytes) {
      body.destroy();
      throw new BangerError('rejected_content', `${displayUrl(opts.url)} is ${total} bytes, more than the limit of ${opts.maxBytes}`, {
        fix: 'check the URL: the file is larger than anything banger expects there',
      });
    }
    const meter = new Transform({
      transform(chunk: Buffer, _enc, cb: TransformCallback) {
        bytes += chunk.length;
        if (bytes > opts.maxBytes) {
          cb(
            new BangerError('rejected_content', `${displayUrl(opts.url)} is larger than the limit of ${opts.maxBytes} bytes`, {
              fix: 'check the URL and the source',
            }),
          );
          return;
        }
        hash.update(chunk);
        opts.onProgress?.(bytes, total);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(body, meter, createWriteStream(partial, { mode: 0o600 }), opts.signal ? { signal: opts.signal } : {});
    } catch (e) {
      if (opts.signal?.aborted) throw new BangerError('cancelled', `download of ${displayUrl(opts.url)} was cancelled`);
      if (e instanceof BangerError) throw e;
      throw new BangerError('upstream_failed', `download of ${displayUrl(opts.url)} failed after ${bytes} bytes: ${(e as Error).message}`, {
        fix: 'retry; if it keeps failing, try another mirror',
      });
    }
    const actual = hash.digest('hex');
    if (expected !== undefined && actual !== expected) {
      throw new BangerError('rejected_content', `checksum mismatch for ${displayUrl(opts.url)}: expected sha256 ${expected}, got ${actual}`, {
        fix: 'the download is corrupt or was tampered with; retry, and if it persists check the mirror and the catalog entry',
      });
    }
    await rename(partial, opts.dest);
    return { path: opts.dest, sha256: actual, bytes };
  } finally {
    await rm(partial, { force: true });
  }
}

/** SHA-256 (hex) of a file on disk. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
