import { Duplex, PassThrough, Transform, type TransformCallback } from 'node:stream';
import * as zlib from 'node:zlib';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from '../host/runner.js';

export type Compression = 'gzip' | 'zstd' | 'xz' | 'none';

/** Recognises a compressed stream by its magic bytes; anything else is taken as uncompressed. */
export function sniffCompression(head: Uint8Array): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  if (head[0] === 0xfd && head[1] === 0x37 && head[2] === 0x7a && head[3] === 0x58 && head[4] === 0x5a && head[5] === 0x00) return 'xz';
  return 'none';
}

/** Compression named by an OCI media type or a file name. */
export function compressionOf(mediaTypeOrName: string): Compression | undefined {
  const s = mediaTypeOrName.toLowerCase();
  if (s.endsWith('+gzip') || s.endsWith('.gz') || s.endsWith('.tgz') || s.endsWith('.gzip')) return 'gzip';
  if (s.endsWith('+zstd') || s.endsWith('.zst') || s.endsWith('.zstd')) return 'zstd';
  if (s.endsWith('.xz') || s.endsWith('.txz')) return 'xz';
  if (s.endsWith('.tar') || s.endsWith('tar')) return 'none';
  return undefined;
}

/** RAM the xz CLI may use to decompress (a hostile header can ask for gigabytes). */
export const XZ_MEMLIMIT_MIB = 256;

/**
 * A decompressing stream. gzip is zlib's; zstd is zlib's where Node has it (22.15+) and the zstd
 * CLI otherwise; xz is the xz CLI. The CLIs run (through `runner`) with an empty environment of
 * their own: they only ever see bytes on stdin.
 */
export function decompressor(kind: Compression, runner: CommandRunner): Duplex {
  switch (kind) {
    case 'none':
      return new Transform({ transform: (c, _e, cb) => cb(null, c) });
    case 'gzip':
      return zlib.createGunzip();
    case 'zstd': {
      const native = (zlib as unknown as { createZstdDecompress?: () => Duplex }).createZstdDecompress;
      return native ? native() : cliFilter(runner, 'zstd', ['-dcq']);
    }
    case 'xz':
      // xz honours any dictionary size a header asks for (up to 4 GiB of RAM); real packages use ≤ 64 MiB.
      return cliFilter(runner, 'xz', ['-dcq', `--memlimit-decompress=${XZ_MEMLIMIT_MIB}MiB`]);
  }
}

/** A CLI decompressor (reads stdin, writes stdout) as a stream. */
function cliFilter(runner: CommandRunner, bin: string, args: string[]): Duplex {
  const child = runner.spawn(bin, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, neededFor: 'needed to decompress' });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  // The output ends only once the CLI has exited 0: a failure after some output (a memory limit,
  // corrupt data) must fail the stream, not end it early as if the data were whole.
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  const duplex = Duplex.from({ writable: child.stdin, readable: out });
  let exited = false;
  child.done.then(
    ({ code, signal }) => {
      exited = true;
      if (code === 0) out.end();
      else if (code !== null) duplex.destroy(new BangerError('rejected_content', `${bin} could not decompress the data: ${stderr.trim() || `exit ${code}`}`));
      else if (!duplex.destroyed) duplex.destroy(new BangerError('rejected_content', `${bin} was killed (${signal}) while decompressing`));
    },
    (e: unknown) => {
      exited = true;
      duplex.destroy(e as Error);
    },
  );
  duplex.on('close', () => {
    if (!exited) child.kill('SIGKILL');
  });
  return duplex;
}

/** Passes bytes through and fails the stream once more than `max` went by (decompression bombs, endless bodies). */
export function byteLimit(max: number, what: string): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      seen += chunk.length;
      if (seen > max) {
        cb(
          new BangerError('rejected_content', `${what} is larger than the limit of ${max} bytes`, {
            fix: 'check the source; raise the limit only if the content is trusted',
          }),
        );
        return;
      }
      cb(null, chunk);
    },
  });
}
