// Fuzz of the tar/layer unpacker (issue 9): random and mutated tar streams, built with tar-stream
// from a vocabulary of hostile names (.., whiteouts of the root, links out of the tree, absolute
// links to a canary), applied as 1-3 stacked layers into a fresh tree on the tmpfs, next to a
// canary directory. Per case: the unpacker settles (no uncaught exception, no hang), nothing
// outside the tree changes, and what the tree really occupies stays within its accounting and
// budget (memory stays bounded on a tmpfs). Fixed seed; the seed and case are printed on failure.
//   BANGER_FUZZ_SEED=<n> replays a run; BANGER_FUZZ_CASES=<n> makes it longer.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import * as tar from 'tar-stream';
import { BangerError } from '../../src/api/errors.js';
import { applyLayer, RootfsLedger } from '../../src/images/layer-apply.js';
import { fixupScript } from '../../src/images/rootfs-build.js';
import { fuzzCases, type Rng } from '../helpers/fuzz.js';

const CASES = 400;
const SEED = 0x1a7e5;
const BUDGET = 2 << 20;

let base: string;
let canary: string;
/** What the canary held before the run: path → content or link target. */
let canaryBefore: Map<string, string>;

async function snapshot(dir: string, prefix = ''): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    const rel = `${prefix}${e.name}`;
    const st = await lstat(p);
    if (st.isSymbolicLink()) out.set(rel, `link:${await readlink(p)}`);
    else if (st.isDirectory()) {
      out.set(rel, `dir:${st.mode & 0o7777}`);
      for (const [k, v] of await snapshot(p, `${rel}/`)) out.set(k, v);
    } else out.set(rel, `file:${st.mode & 0o7777}:${st.uid}:${await readFile(p, 'utf8')}`);
  }
  return out;
}

/** Bytes the tree occupies (allocated blocks, each inode once). */
async function allocated(dir: string, seen = new Set<number>()): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    const st = await lstat(p);
    if (!seen.has(st.ino)) {
      seen.add(st.ino);
      total += st.blocks * 512;
    }
    if (st.isDirectory()) total += await allocated(p, seen);
  }
  return total;
}

before(async () => {
  // The tmpfs is where trees are bounded by memory; elsewhere (no /dev/shm) the same checks run on disk.
  base = await mkdtemp(existsSync('/dev/shm') ? '/dev/shm/bgtest-fuzz-' : '/tmp/bg-fuzz-');
  canary = join(base, 'canary');
  await mkdir(join(canary, 'etc'), { recursive: true });
  await writeFile(join(canary, 'keep'), 'precious');
  await writeFile(join(canary, 'etc', 'passwd'), 'root:x:0:0');
});
after(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

function name(rng: Rng): string {
  const comps = [
    'a',
    'b',
    'etc',
    'usr',
    'x y',
    'q"',
    '..',
    '.',
    '',
    '.wh..wh..opq',
    '.wh.a',
    '.wh.b',
    '.wh.',
    '.wh..',
    '.wh...',
    'l',
    'up',
    'canary',
    '\x1b[31m',
    'é',
  ];
  const n = 1 + rng.int(4);
  const parts: string[] = [];
  for (let i = 0; i < n; i++) parts.push(rng.bool(0.1) ? rng.string(12, 'abc./\\ "') : rng.pick(comps));
  let s = parts.join('/');
  if (rng.bool(0.1)) s = `/${s}`;
  if (rng.bool(0.1)) s = `./${s}`;
  if (rng.bool(0.05)) s = 'z'.repeat(rng.range(100, 300));
  return s;
}

function linkTarget(rng: Rng): string {
  return rng.pick([
    'a',
    'etc',
    '../canary',
    '../../canary',
    '..',
    '.',
    '',
    'a/../..',
    canary,
    join(canary, 'keep'),
    '/etc',
    'l',
    'up/..',
    name(rng),
    'x'.repeat(rng.range(1, 5000)),
  ]);
}

type Header = Partial<tar.Header> & { name: string };

function entry(rng: Rng): { header: Header; body: Buffer } {
  const type = rng.pick([
    'file',
    'file',
    'file',
    'directory',
    'directory',
    'symlink',
    'symlink',
    'link',
    'character-device',
    'block-device',
    'fifo',
    'contiguous-file',
  ] as const);
  const header: Header = {
    name: name(rng),
    type,
    mode: rng.pick([0o644, 0o755, 0o4755, 0o777, 0, 0o7777, rng.int(0o10000)]),
    uid: rng.pick([0, 1000, 65534, rng.int(2 ** 31)]),
    gid: rng.pick([0, 1000, rng.int(2 ** 31)]),
    mtime: new Date(rng.int(2 ** 31) * 1000),
  };
  if (type === 'symlink' || type === 'link') header.linkname = linkTarget(rng);
  if (type === 'character-device' || type === 'block-device') {
    header.devmajor = rng.int(256);
    header.devminor = rng.int(256);
  }
  const size = type === 'file' || type === 'contiguous-file' ? rng.pick([0, 1, 100, 4096, 4097, rng.int(200_000)]) : 0;
  return { header, body: size ? Buffer.alloc(size, rng.int(256)) : Buffer.alloc(0) };
}

async function tarOf(entries: Array<{ header: Header; body: Buffer }>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const read = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const { header, body } of entries) {
    await new Promise<void>((res, rej) => pack.entry(header, body, (e) => (e ? rej(e) : res())));
  }
  pack.finalize();
  await read;
  return Buffer.concat(chunks);
}

async function layer(rng: Rng): Promise<Buffer> {
  const entries = Array.from({ length: 1 + rng.int(12) }, () => entry(rng));
  const whole = await tarOf(entries);
  // Half the layers are well-formed tar; the rest are mutated (bit flips, truncation, splices).
  return rng.bool() ? whole : rng.mutate(whole, 1 + rng.int(6));
}

test('fuzz: random and mutated layers never escape the tree, throw uncaught, or outgrow their accounting', async () => {
  canaryBefore = await snapshot(canary);
  const outcomes = { applied: 0, rejected: 0 };
  await fuzzCases('layer', { seed: SEED, cases: CASES }, async (rng, i) => {
    const root = join(base, `t${i}`);
    await mkdir(root);
    const ledger = new RootfsLedger();
    const layers = 1 + rng.int(3);
    const chownOnDisk = rng.bool();
    for (let l = 0; l < layers; l++) {
      const bytes = await layer(rng);
      // Chunked like a network stream, so entries straddle chunk boundaries.
      const chunks: Buffer[] = [];
      for (let p = 0; p < bytes.length; ) {
        const n = 1 + rng.int(8192);
        chunks.push(bytes.subarray(p, p + n));
        p += n;
      }
      try {
        await applyLayer(
          Readable.from(chunks),
          { root, chownOnDisk, maxBytes: 1 << 20, maxEntries: 200, maxTreeBytes: BUDGET, label: `fuzz layer ${l}` },
          ledger,
        );
        outcomes.applied++;
      } catch (e) {
        // Bad input is refused with a clear BangerError, never a raw fs error or a crash.
        assert.ok(
          e instanceof BangerError,
          `not a BangerError: ${e instanceof Error ? `${(e as NodeJS.ErrnoException).code ?? e.name}: ${e.message.slice(0, 300)}` : String(e)}`,
        );
        assert.equal(e.code, 'rejected_content');
        assert.doesNotMatch(e.message, /[\x00-\x1f]/, 'control characters reach the message');
        outcomes.rejected++;
        break;
      }
    }
    // Nothing outside the tree changed: the canary beside it, and the base holds only trees and the canary.
    assert.deepEqual(await snapshot(canary), canaryBefore, 'the canary beside the tree changed');
    for (const n of await readdir(base)) assert.ok(n === 'canary' || /^t\d+$/.test(n), `unexpected ${n} beside the trees`);
    // The tree's real footprint is within its accounting and its budget.
    const used = await allocated(root);
    assert.ok(used <= ledger.treeBytes, `the tree occupies ${used} bytes but the ledger counted ${ledger.treeBytes}`);
    assert.ok(used <= BUDGET, `the tree occupies ${used} bytes, over the ${BUDGET} budget`);
    // Whatever the ledger recorded can be turned into a debugfs script without throwing.
    const { script } = fixupScript(ledger, chownOnDisk);
    for (const line of script.split('\n')) assert.ok(line.length < 8000, 'a debugfs script line could be split');
    await rm(root, { recursive: true, force: true });
  });
  assert.ok(outcomes.applied > 0 && outcomes.rejected > 0, `the corpus exercises both outcomes (${outcomes.applied} applied, ${outcomes.rejected} rejected)`);
});
