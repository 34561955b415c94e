/**
 * `GET /v1/vms/:ref/logs`: the last lines of a guest-fed log, then (with follow) what is appended.
 *
 * The guest decides how fast the log grows; the client decides how fast it reads. So: the tail is
 * read at an offset (at most TAIL_MAX_BYTES, whatever the file's size), following reads one chunk
 * at a time and waits for 'drain' whenever the response's buffer is full (a client that stops
 * reading stops the reading here), and everything stops when the client goes. A copy-truncate
 * rotation (../vmm/console-log.ts) is seen as the file shrinking: following restarts at its start.
 * Following also ends when the writer is done for good (`ended`: the VM's boot is over), after the
 * bytes it wrote last: `vm logs -f` of a VM that stops, restarts or is deleted returns.
 */
import { watch } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { openLogFile, readLogLines } from '../vmm/console-log.js';

/** The initial tail is cut from at most this many bytes at the end of the log. */
export const TAIL_MAX_BYTES = 4 * 1024 * 1024;
const CHUNK_BYTES = 64 * 1024;
const POLL_MS = 500;

export interface StreamLogOptions {
  lines: number;
  follow: boolean;
  pollMs?: number;
  /**
   * While following, asked at the start and at every poll: true once nothing more will be
   * appended (the VM's boot ended). What was written up to then is sent, then the stream ends.
   */
  ended?: () => Promise<boolean>;
}

/** Writes the log to `res` and ends it; resolves when done (or the client left). Never rejects. */
export async function streamLog(path: string, o: StreamLogOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let gone = false;
  /** Wakes the wait for a change of the log (watch, poll, client gone). */
  let wake = () => {};
  /** Wakes the wait for 'drain' (drain or client gone only: a change of the log must not). */
  let wakeDrain = () => {};
  const onGone = () => {
    gone = true;
    wake();
    wakeDrain();
  };
  // The response's 'close' means the client left (or the response ended); the request's own
  // 'close' only says its body was read.
  res.once('close', onGone);
  req.socket.once('close', onGone);
  let fh: FileHandle | undefined;
  let watcher: ReturnType<typeof watch> | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    // The live file's size before the tail is read: following starts there, so nothing is lost
    // between the two and nothing is sent twice (unless it is rotated in between).
    fh = await openLogFile(path).catch(() => undefined);
    let offset = fh ? (await fh.stat()).size : 0;
    const tail = await readLogLines(path, o.lines, TAIL_MAX_BYTES).catch(() => '');
    if (
      tail &&
      !(await write(
        res,
        tail,
        () => gone,
        (w) => (wakeDrain = w),
      ))
    )
      return;
    if (!o.follow) return;
    // An empty log would otherwise hold back the headers until the guest writes something.
    res.flushHeaders();

    let changed = true;
    /** A poll tick is due: time to ask `ended` again (not on every write the watcher reports). */
    let due = true;
    const poke = () => {
      changed = true;
      wake();
    };
    try {
      watcher = watch(path, poke);
      watcher.on('error', () => {});
    } catch {
      /* not there yet: the poll below finds it */
    }
    timer = setInterval(() => {
      due = true;
      poke();
    }, o.pollMs ?? POLL_MS);
    const buf = Buffer.alloc(CHUNK_BYTES);
    while (!gone) {
      if (!changed) await new Promise<void>((r) => (wake = r));
      changed = false;
      if (gone) break;
      // Asked before the read: once the writer is done, one more read to the end has it all.
      let last = false;
      if (due && o.ended) {
        due = false;
        last = await o.ended().catch(() => false);
      }
      if (!fh) {
        fh = await openLogFile(path).catch(() => undefined);
        if (!fh) {
          if (last) return;
          continue;
        }
        offset = 0;
      }
      for (;;) {
        const { size } = await fh.stat();
        if (size < offset) offset = 0; // truncated in place (rotation): the new content starts at 0
        if (size <= offset) break;
        const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK_BYTES, size - offset), offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
        const chunk = Buffer.from(buf.subarray(0, bytesRead).filter((b) => b !== 0));
        if (
          chunk.length &&
          !(await write(
            res,
            chunk,
            () => gone,
            (w) => (wakeDrain = w),
          ))
        )
          return;
        if (gone) return;
      }
      if (last) return;
    }
  } catch {
    /* the log vanished or the client went away mid-write: nothing more to send */
  } finally {
    res.off('close', onGone);
    req.socket.off('close', onGone);
    watcher?.close();
    if (timer) clearInterval(timer);
    await fh?.close().catch(() => {});
    if (!res.writableEnded && !res.destroyed) res.end();
  }
}

/** res.write, then wait for 'drain' when its buffer is full. False when the client is gone. */
async function write(res: ServerResponse, data: string | Buffer, isGone: () => boolean, setWake: (w: () => void) => void): Promise<boolean> {
  if (isGone()) return false;
  if (res.write(data)) return true;
  await new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      resolve();
    };
    res.once('drain', done);
    setWake(done);
  });
  return !isGone();
}
