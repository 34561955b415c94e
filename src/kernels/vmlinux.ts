import { readFile, rename, rm, writeFile } from 'node:fs/promises';

/** LZ4 legacy frame magic (0x184C2102, little endian), what the kernel's LZ4 bzImage payload starts with. */
const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
/** Every legacy block but the last decompresses to exactly this. */
const LEGACY_BLOCK = 8 * 1024 * 1024;
const COMPRESS_BOUND = LEGACY_BLOCK + Math.floor(LEGACY_BLOCK / 255) + 16;
const MAX_OUTPUT = 1024 * 1024 * 1024;

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
    let m = o - offset;
    if (offset >= len) {
      out.copy(out, o, m, m + len);
      o += len;
    } else {
      // Overlapping copy (a repeating pattern): byte by byte.
      for (let i = 0; i < len; i++) out[o++] = out[m++] as number;
    }
  }
  return o;
}

/**
 * Decodes an LZ4 legacy frame starting at `start` (the magic). Stops after the first short block
 * (the last one), at the end of the data, or at anything that is not a plausible block (the
 * kernel appends the uncompressed size after the frame).
 */
export function lz4DecodeLegacy(buf: Buffer, start: number, maxOutput = MAX_OUTPUT): Buffer | undefined {
  if (!buf.subarray(start, start + 4).equals(LZ4_LEGACY_MAGIC)) return undefined;
  let pos = start + 4;
  const blocks: Buffer[] = [];
  let total = 0;
  while (pos + 4 <= buf.length) {
    const size = buf.readUInt32LE(pos);
    if (size === 0 || size > COMPRESS_BOUND || pos + 4 + size > buf.length) break;
    const out = Buffer.allocUnsafe(LEGACY_BLOCK);
    let n: number;
    try {
      n = lz4DecodeBlock(buf.subarray(pos + 4, pos + 4 + size), out);
    } catch {
      break;
    }
    total += n;
    if (total > maxOutput) return undefined;
    blocks.push(out.subarray(0, n));
    pos += 4 + size;
    if (n < LEGACY_BLOCK) break;
  }
  return blocks.length ? Buffer.concat(blocks, total) : undefined;
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

/** Offsets of every LZ4 legacy magic in the buffer. */
function magicOffsets(buf: Buffer): number[] {
  const offs: number[] = [];
  for (let i = buf.indexOf(LZ4_LEGACY_MAGIC); i !== -1; i = buf.indexOf(LZ4_LEGACY_MAGIC, i + 1)) offs.push(i);
  return offs;
}

/**
 * The uncompressed ELF vmlinux inside an LZ4-compressed bzImage (what Debian ships): tries each
 * LZ4 legacy magic and keeps the first decode that is a whole ELF. Same approach as
 * scripts/guest-assets.sh extract_vmlinux and the kernel's extract-vmlinux, without the lz4 CLI.
 */
export function extractVmlinuxFrom(bzImage: Buffer): Buffer | undefined {
  for (const off of magicOffsets(bzImage)) {
    const out = lz4DecodeLegacy(bzImage, off);
    if (out && isElf64(out)) return out;
  }
  return undefined;
}

/** Writes `out` (atomically) when `bzImagePath` holds an LZ4 payload; false when it does not. */
export async function extractVmlinux(bzImagePath: string, out: string): Promise<boolean> {
  const vmlinux = extractVmlinuxFrom(await readFile(bzImagePath));
  if (!vmlinux) return false;
  const tmp = `${out}.tmp`;
  try {
    await writeFile(tmp, vmlinux, { mode: 0o644 });
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
  return true;
}
