import type { Readable } from 'node:stream';

export interface BoundedLinesOptions {
  /** Longer lines are cut here (bytes) and the rest of the line is dropped. */
  maxLineBytes: number;
  /** Called once per line, without its newline; `cutBytes` counts what was dropped from it. */
  onLine: (line: string, cutBytes: number) => void;
}

/**
 * Splits a stream someone else writes (a guest's output) into lines while holding at most
 * `maxLineBytes` of a line in memory, however long the line: readline would buffer a line of any
 * length, and a 512 M-character line ends in an uncaught RangeError.
 */
export function boundedLines(input: Readable, o: BoundedLinesOptions): Promise<void> {
  let parts: Buffer[] = [];
  let held = 0;
  let cut = 0;
  const flush = () => {
    o.onLine(Buffer.concat(parts).toString('utf8'), cut);
    parts = [];
    held = 0;
    cut = 0;
  };
  const take = (chunk: Buffer) => {
    const room = o.maxLineBytes - held;
    if (chunk.length <= room) {
      parts.push(chunk);
      held += chunk.length;
    } else {
      if (room > 0) parts.push(chunk.subarray(0, room));
      held += Math.max(room, 0);
      cut += chunk.length - Math.max(room, 0);
    }
  };
  return new Promise((resolve, reject) => {
    input.on('data', (data: Buffer | string) => {
      let chunk = typeof data === 'string' ? Buffer.from(data) : data;
      for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10)) {
        take(chunk.subarray(0, nl));
        flush();
        chunk = chunk.subarray(nl + 1);
      }
      if (chunk.length) take(chunk);
    });
    input.on('end', () => {
      if (held || cut) flush();
      resolve();
    });
    input.on('error', reject);
  });
}
