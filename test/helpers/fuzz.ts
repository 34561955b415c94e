/**
 * Seeded fuzzing helpers shared by test/unit/fuzz-*.test.ts.
 *
 * Every run is reproducible from its seed: `fuzzCases` prints the seed and the case index
 * of the first failure, and `BANGER_FUZZ_SEED` / `BANGER_FUZZ_CASES` replay or lengthen a run.
 */

/** mulberry32: a small, fast 32-bit PRNG. Returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Rng {
  private readonly next: () => number;
  constructor(readonly seed: number) {
    this.next = mulberry32(seed);
  }
  /** Float in [0, 1). */
  float(): number {
    return this.next();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Integer in [lo, hi] inclusive. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[this.int(items.length)] as T;
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
  /** Random-length string over `alphabet` (default: printable ASCII plus a few controls). */
  string(maxLen: number, alphabet?: string): string {
    const chars = alphabet ?? ' !"#$%&\'()*+,-./0123456789:;<=>?@ABCXYZabcxyz[\\]^_`{|}~\n\t\r\x00\x1b\x7f\u00e9\u{1f600}';
    const len = this.int(maxLen + 1);
    const cps = Array.from(chars);
    let s = '';
    for (let i = 0; i < len; i++) s += this.pick(cps);
    return s;
  }
  /**
   * Mutate a copy of `input`: bit flips, byte sets to edge values, insertions, deletions,
   * duplicated slices and truncation, `rounds` times.
   */
  mutate(input: Buffer, rounds = 1 + this.int(4)): Buffer {
    let buf = Buffer.from(input);
    for (let r = 0; r < rounds; r++) {
      const op = this.int(7);
      const pos = buf.length === 0 ? 0 : this.int(buf.length);
      switch (op) {
        case 0:
          if (buf.length > 0) buf[pos] = (buf[pos] as number) ^ (1 << this.int(8));
          break;
        case 1:
          if (buf.length > 0) buf[pos] = this.pick([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff]);
          break;
        case 2:
          buf = Buffer.concat([buf.subarray(0, pos), this.bytes(1 + this.int(8)), buf.subarray(pos)]);
          break;
        case 3:
          buf = Buffer.concat([buf.subarray(0, pos), buf.subarray(Math.min(buf.length, pos + 1 + this.int(8)))]);
          break;
        case 4: {
          const end = Math.min(buf.length, pos + 1 + this.int(16));
          buf = Buffer.concat([buf.subarray(0, end), buf.subarray(pos, end), buf.subarray(end)]);
          break;
        }
        case 5:
          buf = buf.subarray(0, pos);
          break;
        default:
          if (buf.length >= 2) buf.writeUInt16BE(this.pick([0, 1, 0x7fff, 0x8000, 0xffff]), Math.min(pos, buf.length - 2));
          break;
      }
    }
    return buf;
  }
}

export interface FuzzOptions {
  /** Default seed; `BANGER_FUZZ_SEED` overrides it. */
  seed: number;
  /** Default case count; `BANGER_FUZZ_CASES` overrides it. */
  cases: number;
}

/**
 * Run `body` for `cases` cases, each with its own Rng derived from the seed and the case
 * index. On the first failure, rethrow with the seed and case index in the message so the
 * case can be replayed with `BANGER_FUZZ_SEED=<seed>`.
 */
export async function fuzzCases(
  name: string,
  opts: FuzzOptions,
  body: (rng: Rng, index: number) => void | Promise<void>,
): Promise<{ seed: number; cases: number }> {
  const envSeed = process.env.BANGER_FUZZ_SEED;
  const envCases = process.env.BANGER_FUZZ_CASES;
  const seed = envSeed !== undefined && /^\d+$/.test(envSeed) ? Number(envSeed) >>> 0 : opts.seed >>> 0;
  const cases = envCases !== undefined && /^\d+$/.test(envCases) ? Number(envCases) : opts.cases;
  for (let i = 0; i < cases; i++) {
    const rng = new Rng((seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
    try {
      await body(rng, i);
    } catch (err) {
      const msg = `fuzz ${name}: failed at seed=${seed} case=${i} (replay: BANGER_FUZZ_SEED=${seed})`;
      console.error(msg);
      const wrapped = new Error(`${msg}: ${err instanceof Error ? err.message : String(err)}`);
      (wrapped as Error & { cause?: unknown }).cause = err;
      throw wrapped;
    }
  }
  return { seed, cases };
}
