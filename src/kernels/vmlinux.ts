import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { BangerError } from '../api/errors.js';

/** LZ4 legacy frame magic (0x184C2102, little endian), what the kernel's LZ4 bzImage payload starts with. */
const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
/** Every legacy block but the last decompresses to exactly this. */
const LEGACY_BLOCK = 8 * 1024 * 1024;
const COMPRESS_BOUND = LEGACY_BLOCK + Math.floor(LEGACY_BLOCK / 255) + 16;
/** A vmlinux is tens of MiB; a payload decoding past this is not a kernel. */
const MAX_OUTPUT = 256 * 1024 * 1024;
/** All candidate frames of one bzImage together (false magics decode a little, or not at all). */
const MAX_TOTAL_DECODE = 512 * 1024 * 1024;
/** Magic numbers tried per bzImage: a real one has its payload near the start and a false one or two. */
const MAX_CANDIDATES = 64;
/** A bzImage is ~10 MiB. */
const MAX_INPUT = 128 * 1024 * 1024;

/** Decodes one LZ4 block into `out`; returns the number of bytes written, or throws on malformed input. */
export function lz4DecodeBlock(src: Buffer, out: Buffer): number {
  let s = 0;
  let o = 0;
  const end = src.length;
  while (s < end) {
    const token = src[s++] as number;
    let lit = token >> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (s >= end) throw new Error('truncated literal length');
        b = src[s++] as number;
        lit += b;
      } while (b === 255);
    }
    if (s + lit > end || o + lit > out.length) throw new Error('literals run past the block');
    src.copy(out, o, s, s + lit);
    s += lit;
    o += lit;
    if (s === end) break; // the last sequence has literals only
    if (s + 2 > end) throw new Error('truncated match offset');
    const offset = (src[s] as number) | ((src[s + 1] as number) << 8);
    s += 2;
    if (offset === 0 || offset > o) throw new Error('match offset out of range');
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (s >= end) throw new Error('truncated match length');
        b = src[s++] as number;
        len += b;
      } while (b === 255);
    }
    if (o + len > out.length) throw new Error('match runs past the output');
    const m = o - offset;
    // An overlapping match repeats the last `offset` bytes: copy the pattern in chunks that double
    // (each source range ends before its destination), not byte by byte.
    for (let done = 0; done < len; ) {
      const n = Math.min(len - done, offset + done);
      out.copy(out, o + done, m, m + n);
      done += n;
    }
    o += len;
  }
  return o;
}

/** What one legacy frame decoded to: the data, nothing plausible, or more than allowed. */
type LegacyResult = { kind: 'ok'; data: Buffer } | { kind: 'none' } | { kind: 'too-big' };

/**
 * Decodes an LZ4 legacy frame starting at `start` (the magic), one block per step: the generator
 * yields after each block so an async caller can let the event loop turn (a block is at most
 * 8 MiB out and COMPRESS_BOUND in). Stops after the first short block (the last one), at the end
 * of the data, or at anything that is not a plausible block (the kernel appends the uncompressed
 * size after the frame). `budget.left` is shared by every frame a caller tries and counts down.
 */
function* legacySteps(buf: Buffer, start: number, maxOutput: number, budget: { left: number }): Generator<void, LegacyResult> {
  if (!buf.subarray(start, start + 4).equals(LZ4_LEGACY_MAGIC)) return { kind: 'none' };
  let pos = start + 4;
  const blocks: Buffer[] = [];
  let total = 0;
  while (pos + 4 <= buf.length) {
    const size = buf.readUInt32LE(pos);
    if (size === 0 || size > COMPRESS_BOUND || pos + 4 + size > buf.length) break;
    if (budget.left <= 0) return { kind: 'too-big' };
    const out = Buffer.allocUnsafe(LEGACY_BLOCK);
    let n: number;
    try {
      n = lz4DecodeBlock(buf.subarray(pos + 4, pos + 4 + size), out);
    } catch {
      break;
    }
    total += n;
    budget.left -= n;
    if (total > maxOutput) return { kind: 'too-big' };
    blocks.push(out.subarray(0, n));
    pos += 4 + size;
    if (n < LEGACY_BLOCK) break;
    yield;
  }
  return blocks.length ? { kind: 'ok', data: Buffer.concat(blocks, total) } : { kind: 'none' };
}

function runSync<T>(g: Generator<void, T>): T {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
  }
}

async function runYielding<T>(g: Generator<void, T>): Promise<T> {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
    await yieldToLoop();
  }
}

/**
 * Decodes an LZ4 legacy frame starting at `start` (the magic), synchronously; undefined when there
 * is none or it decodes to more than `maxOutput`. Prefer `extractVmlinux`, which yields.
 */
export function lz4DecodeLegacy(buf: Buffer, start: number, maxOutput = MAX_OUTPUT): Buffer | undefined {
  const r = runSync(legacySteps(buf, start, maxOutput, { left: maxOutput }));
  return r.kind === 'ok' ? r.data : undefined;
}

/**
 * True for a whole x86-64 ELF64 little-endian executable: magic, class, data, machine, and the
 * program and section header tables inside the data (a truncated decode fails the last check).
 */
export function isElf64(b: Buffer): boolean {
  if (b.length < 64) return false;
  if (b[0] !== 0x7f || b[1] !== 0x45 || b[2] !== 0x4c || b[3] !== 0x46) return false;
  if (b[4] !== 2 || b[5] !== 1 || b[6] !== 1) return false; // ELFCLASS64, little endian, version 1
  const type = b.readUInt16LE(16);
  if (type !== 2 && type !== 3) return false; // ET_EXEC or ET_DYN
  if (b.readUInt16LE(18) !== 0x3e) return false; // EM_X86_64
  const phoff = Number(b.readBigUInt64LE(32));
  const shoff = Number(b.readBigUInt64LE(40));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  const shentsize = b.readUInt16LE(58);
  const shnum = b.readUInt16LE(60);
  if (b.readUInt16LE(52) !== 64 || phnum === 0 || phentsize !== 56 || phoff + phnum * phentsize > b.length) return false;
  if (shoff !== 0 && (shentsize !== 64 || shoff + shnum * shentsize > b.length)) return false;
  return true;
}

/** Offsets of the LZ4 legacy magics in the buffer (at most `max`). */
function magicOffsets(buf: Buffer, max = MAX_CANDIDATES): number[] {
  const offs: number[] = [];
  for (let i = buf.indexOf(LZ4_LEGACY_MAGIC); i !== -1 && offs.length < max; i = buf.indexOf(LZ4_LEGACY_MAGIC, i + 1)) offs.push(i);
  return offs;
}

/**
 * The uncompressed ELF vmlinux inside an LZ4-compressed bzImage (what Debian ships): tries each
 * LZ4 legacy magic and keeps the first decode that is a whole ELF. Same approach as
 * scripts/guest-assets.sh extract_vmlinux and the kernel's extract-vmlinux, without the lz4 CLI.
 * Synchronous (blocks the event loop while it decodes): the daemon uses `extractVmlinux`.
 */
export function extractVmlinuxFrom(bzImage: Buffer): Buffer | undefined {
  const budget = { left: MAX_TOTAL_DECODE };
  for (const off of magicOffsets(bzImage)) {
    const r = runSync(legacySteps(bzImage, off, MAX_OUTPUT, budget));
    if (r.kind === 'ok' && isElf64(r.data)) return r.data;
    if (budget.left <= 0) return undefined;
  }
  return undefined;
}

export interface DecodeLimits {
  /** Largest vmlinux accepted. */
  maxOutput: number;
  /** Bytes decoded over every candidate frame of one bzImage. */
  maxTotal: number;
}

const LIMITS: DecodeLimits = { maxOutput: MAX_OUTPUT, maxTotal: MAX_TOTAL_DECODE };

function tooBig(what: string, limits: DecodeLimits): BangerError {
  return new BangerError(
    'rejected_content',
    `${what}: its LZ4 payload decodes to more than ${limits.maxOutput / 1048576} MiB (or its candidates to more than ${limits.maxTotal / 1048576} MiB in all); no kernel is that big`,
    {
      fix: 'the kernel package is corrupt or hostile; use another kernel',
    },
  );
}

/**
 * `extractVmlinuxFrom` that lets the event loop turn after every block (8 MiB of output at most),
 * and fails with a clear error when a hostile payload decodes past the limits.
 */
export async function extractVmlinuxFromAsync(bzImage: Buffer, what = 'the kernel image', limits: DecodeLimits = LIMITS): Promise<Buffer | undefined> {
  const budget = { left: limits.maxTotal };
  for (const off of magicOffsets(bzImage)) {
    await yieldToLoop();
    const r = await runYielding(legacySteps(bzImage, off, limits.maxOutput, budget));
    if (r.kind === 'too-big') throw tooBig(what, limits);
    if (r.kind === 'ok' && isElf64(r.data)) return r.data;
    if (budget.left <= 0) throw tooBig(what, limits);
  }
  return undefined;
}

/**
 * Writes `out` (atomically) when `bzImagePath` holds an LZ4 payload; false when it does not. The
 * bzImage is opened without following a link and must be a regular file of sane size; the
 * temporary file is created new (O_EXCL, O_NOFOLLOW) under a random name, so nothing planted
 * beside `out` (by the archive the kernel came from) is written through.
 */
export async function extractVmlinux(bzImagePath: string, out: string): Promise<boolean> {
  const fh = await open(bzImagePath, constants.O_RDONLY | constants.O_NOFOLLOW);
  let bzImage: Buffer;
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BangerError('rejected_content', `${bzImagePath} is not a regular file`, { fix: 'the kernel package is corrupt or hostile' });
    if (st.size > MAX_INPUT)
      throw new BangerError('rejected_content', `${bzImagePath} is ${st.size} bytes, more than any kernel image (${MAX_INPUT / 1048576} MiB)`, {
        fix: 'the kernel package is corrupt or hostile',
      });
    bzImage = Buffer.alloc(st.size);
    const { bytesRead } = await fh.read(bzImage, 0, st.size, 0);
    bzImage = bzImage.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const vmlinux = await extractVmlinuxFromAsync(bzImage, basename(bzImagePath));
  if (!vmlinux) return false;
  const tmp = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const w = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
    try {
      await w.writeFile(vmlinux);
    } finally {
      await w.close();
    }
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
  return true;
}
