/**
 * Reading a guest process's output in bounded pieces: what a tool shows is the head and the tail
 * of each stream since the caller's offsets, never the whole log, and the offsets to read on from.
 */
import { Writable } from 'node:stream';
import { BangerError } from '../api/errors.js';
import type { Proc, ProcEvent } from '../api/proc-schemas.js';
import { jsonLength, prefixWithin, sanitize, suffixWithin } from './text.js';

/** The part of the client the output reader uses (a fake in unit tests). */
export interface OutputSource {
  process(vm: string, proc: string): Promise<Proc>;
  processOutput(
    vm: string,
    proc: string,
    opts: { stdoutFrom?: number; stderrFrom?: number; follow?: boolean; signal?: AbortSignal },
    onEvent: (e: ProcEvent) => void,
  ): Promise<Proc | undefined>;
}

export type StreamName = 'stdout' | 'stderr';

/** Bytes [from, from + max) of one stream as the guest has them now. */
async function readRange(api: OutputSource, vm: string, id: string, stream: StreamName, from: number, max: number, otherAt: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  const stop = new AbortController();
  await api.processOutput(
    vm,
    id,
    { stdoutFrom: stream === 'stdout' ? from : otherAt, stderrFrom: stream === 'stderr' ? from : otherAt, signal: stop.signal },
    (e) => {
      if (e.type !== stream || got >= max) return;
      const data = Buffer.from(e.data, 'base64');
      // An event may start before `from` (the guest answers in whole chunks): drop what precedes it.
      const skip = Math.max(0, from - e.offset);
      const piece = data.subarray(skip, skip + (max - got));
      parts.push(piece);
      got += piece.length;
      if (got >= max) stop.abort();
    },
  );
  return Buffer.concat(parts);
}

export interface StreamText {
  text: string;
  truncated: boolean;
  /** Where the next read of this stream starts (the bytes the guest had when this one was read). */
  next: number;
}

/** Room left in a budget for the omission marker. */
const MARKER_ROOM = 120;

/**
 * One stream since `from`, at most `budget` JSON characters: read whole when it is small, else its
 * head and its tail (two bounded reads; the middle never leaves the guest), with a marker naming
 * the omitted bytes and the offset to read them from.
 */
export async function readStream(api: OutputSource, vm: string, proc: Proc, stream: StreamName, from: number, budget: number): Promise<StreamText> {
  const total = stream === 'stdout' ? proc.stdoutBytes : proc.stderrBytes;
  const otherAt = stream === 'stdout' ? proc.stderrBytes : proc.stdoutBytes;
  const start = Math.max(0, Math.min(from, total));
  const size = total - start;
  if (size === 0) return { text: '', truncated: false, next: total };
  let headText: string;
  let tailText: string;
  let tailFrom: number;
  if (size <= 2 * budget) {
    const whole = (await readRange(api, vm, proc.id, stream, start, size, otherAt)).toString('utf8');
    if (jsonLength(whole) <= budget) return { text: sanitize(whole), truncated: false, next: start + Buffer.byteLength(whole) };
    headText = whole;
    tailText = whole;
    tailFrom = start;
  } else {
    headText = (await readRange(api, vm, proc.id, stream, start, budget, otherAt)).toString('utf8');
    tailFrom = total - budget;
    tailText = (await readRange(api, vm, proc.id, stream, tailFrom, budget, otherAt)).toString('utf8');
  }
  const room = Math.max(0, budget - MARKER_ROOM);
  const head = prefixWithin(headText, Math.floor(room * 0.4));
  const headEnd = start + Buffer.byteLength(head);
  let tail = suffixWithin(tailText, room - jsonLength(head));
  // From one string (a small stream), the tail must not reach back into the head.
  if (tailFrom + Buffer.byteLength(tailText) - Buffer.byteLength(tail) < headEnd) tail = tailText.slice(head.length);
  const tailStart = total - Buffer.byteLength(tail);
  const marker = `\n[… ${tailStart - headEnd} bytes omitted: read them with process_output from offset ${headEnd} …]\n`;
  return { text: sanitize(head) + marker + sanitize(tail), truncated: true, next: total };
}

/**
 * A sink that keeps the first `headMax` and the last `tailMax` bytes of what is written to it and
 * counts the rest: a patch of any size is read in bounded memory.
 */
/** What a head-and-tail read takes in at most before it gives up (the middle is dropped, not stored). */
export const MAX_STREAM_BYTES = 64 * 1024 * 1024;

export class HeadTailSink extends Writable {
  private head: Buffer[] = [];
  private headLen = 0;
  private tail: Buffer = Buffer.alloc(0);
  total = 0;

  constructor(
    private readonly headMax: number,
    private readonly tailMax: number,
    /** Bytes read in all: past it the stream fails (a guest streaming without end cannot hold the call). */
    private readonly totalMax = MAX_STREAM_BYTES,
  ) {
    super();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.total += chunk.length;
    if (this.total > this.totalMax) {
      cb(new BangerError('payload_too_large', `the guest sent more than ${this.totalMax} bytes`, { fix: 'export it as a branch instead' }));
      return;
    }
    let rest = chunk;
    if (this.headLen < this.headMax) {
      const take = rest.subarray(0, this.headMax - this.headLen);
      this.head.push(take);
      this.headLen += take.length;
      rest = rest.subarray(take.length);
    }
    if (rest.length > 0) {
      const joined = Buffer.concat([this.tail, rest]);
      this.tail = joined.subarray(Math.max(0, joined.length - this.tailMax));
    }
    cb();
  }

  /** The bytes kept: head, then (when some were dropped) a marker and the tail. */
  text(): { text: string; cut: boolean } {
    const head = Buffer.concat(this.head).toString('utf8');
    const dropped = this.total - this.headLen - this.tail.length;
    if (dropped <= 0) return { text: head + this.tail.toString('utf8'), cut: false };
    return { text: `${head}\n[… ${dropped} bytes omitted …]\n${this.tail.toString('utf8')}`, cut: true };
  }
}

/** A sink that keeps everything up to `max` bytes and fails beyond (a patch exported to a file must be whole). */
export class BoundedSink extends Writable {
  private parts: Buffer[] = [];
  total = 0;

  constructor(private readonly max: number) {
    super();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.total += chunk.length;
    if (this.total > this.max) {
      cb(new BangerError('payload_too_large', `the patch is larger than ${this.max} bytes`, { fix: 'export it as a branch instead' }));
      return;
    }
    this.parts.push(chunk);
    cb();
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}
