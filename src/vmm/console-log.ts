/**
 * Guest-fed log files (the serial console, the VMM's own log) have a size cap.
 *
 * The guest decides how much reaches `serial.log`, so the file is capped by copy-truncate: when
 * it holds more than `capBytes`, its last `keepBytes` are copied to `<path>.1` (replacing the
 * previous one) and the live file is truncated in place. The VMM keeps its descriptor: QEMU's
 * `file` chardev with `append=on` and our O_APPEND stdout (./process.ts) write at the new end. A
 * writer without O_APPEND (Firecracker opens its own `log_path`) keeps its offset and leaves a
 * hole: the size check counts allocated blocks, and the hole's NULs are never copied or returned.
 * Bytes written between the last copy and the truncate are lost (the usual copy-truncate window).
 *
 * Every open refuses symlinks (O_NOFOLLOW) and anything that is not a regular file.
 */
import { constants } from 'node:fs';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';

export const LOG_CAP_BYTES = 8 * 1024 * 1024;
export const LOG_KEEP_BYTES = 4 * 1024 * 1024;
/** How often the daemon checks the logs of running VMs. */
export const LOG_CHECK_EVERY_MS = 2000;

const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

export const rotatedPath = (path: string) => `${path}.1`;

/** Opens an existing regular file without following a symlink; undefined when absent. */
export async function openLogFile(path: string, flags = READ_FLAGS): Promise<FileHandle | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, flags | constants.O_NOFOLLOW);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    if (!(await fh.stat()).isFile()) throw new Error(`${path} is not a regular file`);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** Bytes [start, end) of an open file (positioned reads, at most `end - start` bytes held). */
async function readRange(fh: FileHandle, start: number, end: number): Promise<Buffer> {
  const buf = Buffer.alloc(Math.max(0, end - start));
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, start + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/** NUL bytes are holes left by a non-appending writer after a truncate; they are not output. */
function withoutNuls(buf: Buffer): Buffer {
  return buf.includes(0) ? Buffer.from(buf.filter((b) => b !== 0)) : buf;
}

/** The last `maxBytes` of one file, read at an offset, NULs removed. Empty when absent. */
async function tailOf(path: string, maxBytes: number): Promise<Buffer> {
  const fh = await openLogFile(path);
  if (!fh) return Buffer.alloc(0);
  try {
    const { size } = await fh.stat();
    return withoutNuls(await readRange(fh, Math.max(0, size - maxBytes), size));
  } finally {
    await fh.close();
  }
}

/**
 * The last `maxBytes` of a log, continuing into `<path>.1` when the live file holds less: a
 * message rotated away a moment ago is still part of the tail. Memory is bounded by `maxBytes`
 * whatever the files' sizes.
 */
export async function readLogTail(path: string, maxBytes: number): Promise<Buffer> {
  const live = await tailOf(path, maxBytes);
  if (live.length >= maxBytes) return live;
  const older = await tailOf(rotatedPath(path), maxBytes - live.length).catch(() => Buffer.alloc(0));
  return older.length ? Buffer.concat([older, live]) : live;
}

/** The last `lines` lines of a log (and its `.1`), from at most its last `maxBytes`. */
export async function readLogLines(path: string, lines: number, maxBytes: number): Promise<string> {
  if (lines <= 0) return '';
  const text = (await readLogTail(path, maxBytes)).toString('utf8');
  const all = text.split('\n');
  if (all.at(-1) === '') all.pop();
  return all.length ? `${all.slice(-lines).join('\n')}\n` : '';
}

export interface CapOptions {
  capBytes?: number;
  keepBytes?: number;
}

/**
 * Caps one log: when it holds more than `capBytes` (allocated, so a sparse hole does not count),
 * its last `keepBytes` go to `<path>.1` (via a fresh temp file and a rename) and the file is
 * truncated in place. Returns whether it rotated. Missing files are left alone.
 */
export async function capLogFile(path: string, opts: CapOptions = {}): Promise<boolean> {
  const cap = opts.capBytes ?? LOG_CAP_BYTES;
  const keep = Math.min(opts.keepBytes ?? LOG_KEEP_BYTES, cap);
  const fh = await openLogFile(path, constants.O_RDWR | constants.O_NONBLOCK);
  if (!fh) return false;
  const tmp = `${rotatedPath(path)}.tmp`;
  try {
    const st = await fh.stat();
    const used = Math.min(st.size, st.blocks * 512);
    if (used <= cap) return false;
    await rm(tmp, { force: true });
    const out = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      let end = st.size;
      await out.write(withoutNuls(await readRange(fh, Math.max(0, end - keep), end)));
      // What the VMM wrote while we copied, once more (bounded), then truncate at once.
      const grown = (await fh.stat()).size;
      if (grown > end) {
        await out.write(withoutNuls(await readRange(fh, Math.max(end, grown - keep), grown)));
        end = grown;
      }
      await fh.truncate(0);
    } finally {
      await out.close();
    }
    await rename(tmp, rotatedPath(path));
    return true;
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => {});
    throw e;
  } finally {
    await fh.close();
  }
}

export interface LogCapperOptions extends CapOptions {
  /** The logs to check, asked for at every check (e.g. those of running VMs). */
  files: () => Iterable<string>;
  everyMs?: number;
  onRotate?: (path: string) => void;
  onError?: (path: string, err: unknown) => void;
}

/** Checks a changing set of logs on a timer (unref'd); one check at a time. */
export class LogCapper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<string[]> | undefined;

  constructor(private readonly o: LogCapperOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.checkNow(), this.o.everyMs ?? LOG_CHECK_EVERY_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Checks every file now (joins a check in progress); resolves with the rotated paths. */
  checkNow(): Promise<string[]> {
    this.running ??= this.checkAll().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async checkAll(): Promise<string[]> {
    const rotated: string[] = [];
    for (const path of this.o.files()) {
      try {
        if (await capLogFile(path, this.o)) {
          rotated.push(path);
          this.o.onRotate?.(path);
        }
      } catch (e) {
        this.o.onError?.(path, e);
      }
    }
    return rotated;
  }
}
