/**
 * Frames of the agent's data channels (docs/processes.md, "Data channels"): an 8-byte header —
 * magic 0xBA 0x6E, type, stream, payload length (u32 little-endian, at most
 * MAX_FRAME_PAYLOAD) — then the payload. Pure: no I/O.
 *
 * The guest is hostile: a length over the limit is refused before anything is allocated, and
 * bytes that do not start a frame are skipped up to the next magic (counted, so a caller can
 * give up on a channel that sends only garbage).
 *
 * It lives in util because the client speaks it too: `/procs/:proc/attach` carries these frames.
 */

export const FRAME_MAGIC_0 = 0xba;
export const FRAME_MAGIC_1 = 0x6e;
export const FRAME_HEADER_BYTES = 8;
export const MAX_FRAME_PAYLOAD = 256 * 1024;

/** host → guest: S start, D data, E end of data, C cancel. guest → host: A accepted, D data, R result. */
export type FrameType = 'S' | 'D' | 'E' | 'C' | 'A' | 'R';
const FRAME_TYPES = new Set<string>(['S', 'D', 'E', 'C', 'A', 'R']);

/** 0 = data/stdin, 1 = stdout, 2 = stderr. */
export type FrameStream = 0 | 1 | 2;

export interface Frame {
  type: FrameType;
  stream: FrameStream;
  payload: Buffer;
}

export class FrameError extends Error {}

export function encodeFrame(type: FrameType, payload: Buffer | string = Buffer.alloc(0), stream: FrameStream = 0): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (body.length > MAX_FRAME_PAYLOAD) throw new FrameError(`frame payload of ${body.length} bytes is over ${MAX_FRAME_PAYLOAD}`);
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header[0] = FRAME_MAGIC_0;
  header[1] = FRAME_MAGIC_1;
  header[2] = type.charCodeAt(0);
  header[3] = stream;
  header.writeUInt32LE(body.length, 4);
  return Buffer.concat([header, body]);
}

/** Splits data into D frames of at most MAX_FRAME_PAYLOAD bytes. */
export function encodeData(data: Buffer, stream: FrameStream = 0): Buffer[] {
  const frames: Buffer[] = [];
  for (let at = 0; at < data.length; at += MAX_FRAME_PAYLOAD) {
    frames.push(encodeFrame('D', data.subarray(at, at + MAX_FRAME_PAYLOAD), stream));
  }
  return frames;
}

/** Incremental decoder: push chunks, get whole frames. Holds at most one frame's bytes. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes the next frame needs in all (its header, then header + payload): nothing is joined before. */
  private needed = FRAME_HEADER_BYTES;
  /** Bytes skipped while looking for a frame's magic. */
  skippedBytes = 0;

  push(chunk: Buffer): Frame[] {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const frames: Frame[] = [];
    for (;;) {
      const frame = this.next();
      if (!frame) return frames;
      frames.push(frame);
    }
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  private drop(n: number): void {
    const buf = this.flatten().subarray(n);
    this.chunks = buf.length ? [buf] : [];
    this.buffered = buf.length;
  }

  private next(): Frame | null {
    // A guest writing a byte at a time must not make each push join everything buffered.
    if (this.buffered < this.needed) return null;
    let buf = this.flatten();
    // Resynchronise (a leftover of an abandoned session): skip to the next possible magic. A loop,
    // not recursion: a megabyte of garbage must not exhaust the stack.
    while (buf.length >= FRAME_HEADER_BYTES && !startsFrame(buf)) {
      let at = buf.indexOf(FRAME_MAGIC_0, 1);
      if (at < 0) at = buf.length;
      this.skippedBytes += at;
      this.drop(at);
      buf = this.flatten();
    }
    if (buf.length < FRAME_HEADER_BYTES) {
      this.needed = FRAME_HEADER_BYTES;
      return null;
    }
    const length = buf.readUInt32LE(4);
    if (length > MAX_FRAME_PAYLOAD) throw new FrameError(`the guest sent a frame of ${length} bytes (at most ${MAX_FRAME_PAYLOAD})`);
    if (buf.length < FRAME_HEADER_BYTES + length) {
      this.needed = FRAME_HEADER_BYTES + length;
      return null;
    }
    const frame: Frame = {
      type: String.fromCharCode(buf[2] as number) as FrameType,
      stream: buf[3] as FrameStream,
      payload: Buffer.from(buf.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length)),
    };
    this.drop(FRAME_HEADER_BYTES + length);
    this.needed = FRAME_HEADER_BYTES;
    return frame;
  }
}

function startsFrame(buf: Buffer): boolean {
  return buf[0] === FRAME_MAGIC_0 && buf[1] === FRAME_MAGIC_1 && FRAME_TYPES.has(String.fromCharCode(buf[2] ?? 0)) && (buf[3] ?? 3) <= 2;
}
