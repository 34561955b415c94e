// Issue 9, hole 13c: a hostile kernel package's bzImage carries an LZ4 payload built to blow up:
// overlapping-copy bombs (8 MiB out of ~33 KiB in, block after block) and many candidate frames.
// The decode must stop at a bound with a clear error and let the event loop turn while it works;
// the extracted file must not be written through anything planted beside it.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { extractVmlinux, extractVmlinuxFromAsync, isElf64 } from '../../src/kernels/vmlinux.js';
import { fakeElf } from '../helpers/elf.js';

const MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
const BLOCK = 8 * 1024 * 1024;

/** LZ4 length continuation bytes for `n` (after the 15 in the token nibble). */
function lengthBytes(n: number): number[] {
  const out: number[] = [];
  for (; n >= 255; n -= 255) out.push(255);
  out.push(n);
  return out;
}

/** A block of literals only (what an incompressible chunk becomes). */
function literalBlock(data: Buffer): Buffer {
  const head = data.length >= 15 ? [0xf0, ...lengthBytes(data.length - 15)] : [data.length << 4];
  return Buffer.concat([Buffer.from(head), data]);
}

/** One literal, a match at offset 1 repeating it, then 5 final literals: `out` bytes from ~out/255 in. */
function bombBlock(out = BLOCK): Buffer {
  const matchLen = out - 1 - 5;
  return Buffer.concat([Buffer.from([0x1f, 0x41, 0x01, 0x00, ...lengthBytes(matchLen - 19)]), Buffer.from([0x50]), Buffer.from('AAAAA')]);
}

function frame(blocks: Buffer[]): Buffer {
  const parts: Buffer[] = [MAGIC];
  for (const b of blocks) {
    const size = Buffer.alloc(4);
    size.writeUInt32LE(b.length);
    parts.push(size, b);
  }
  return Buffer.concat(parts);
}

/** Counts event-loop turns until stopped: a decode that never yields leaves it at 0. */
function loopTurns(): { stop(): number } {
  let turns = 0;
  let running = true;
  const tick = () => {
    if (!running) return;
    turns++;
    setImmediate(tick);
  };
  setImmediate(tick);
  return {
    stop() {
      running = false;
      return turns;
    },
  };
}

function isTooBig(e: unknown): boolean {
  assert.ok(e instanceof BangerError, String(e));
  assert.equal(e.code, 'rejected_content');
  assert.match(e.message, /decodes to more than/);
  assert.ok(e.fix);
  return true;
}

describe('LZ4 kernels built to blow up', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp('/tmp/bg-vmlinux-');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('an overlapping-copy bomb stops at the default output bound, and the event loop turns during the decode', async () => {
    const bomb = frame(Array.from({ length: 64 }, () => bombBlock())); // 512 MiB claimed from ~2 MiB
    assert.ok(bomb.length < 4 << 20);
    const turns = loopTurns();
    await assert.rejects(extractVmlinuxFromAsync(bomb, 'bomb'), isTooBig);
    assert.ok(turns.stop() >= 16, 'the loop turned between blocks');
  });

  it('a decode budget spans every candidate frame: many frames just under the output bound still stop', async () => {
    // Each frame: one 8 MiB bomb block and a short last block (9 MiB, not an ELF).
    const one = frame([bombBlock(), literalBlock(Buffer.alloc(1 << 20, 0x41))]);
    const many = Buffer.concat(Array.from({ length: 20 }, () => one));
    const turns = loopTurns();
    await assert.rejects(extractVmlinuxFromAsync(many, 'many frames', { maxOutput: 16 << 20, maxTotal: 48 << 20 }), (e: unknown) => {
      isTooBig(e);
      assert.match((e as Error).message, /in all/);
      return true;
    });
    assert.ok(turns.stop() >= 5, 'the loop turned between frames');
  });

  it('a payload that is not LZ4 at all (garbage after magics) is no kernel, and no error', async () => {
    const junk = Buffer.concat(Array.from({ length: 1000 }, () => Buffer.concat([MAGIC, Buffer.from([0xff, 0xff, 0xff, 0x7f]), Buffer.alloc(20, 3)])));
    assert.equal(await extractVmlinuxFromAsync(junk), undefined);
  });

  it('a real-looking kernel still extracts, and nothing planted beside the output is written through', async () => {
    const elf = fakeElf(BLOCK + 4096);
    const bz = join(dir, 'vmlinuz');
    await writeFile(
      bz,
      Buffer.concat([Buffer.alloc(512, 1), frame([literalBlock(elf.subarray(0, BLOCK)), literalBlock(elf.subarray(BLOCK))]), Buffer.alloc(64, 2)]),
    );
    const canary = join(dir, 'canary');
    await writeFile(canary, 'precious');
    const out = join(dir, 'vmlinux');
    // The names an earlier version wrote through (a kernel archive could carry them).
    await symlink(canary, `${out}.tmp`);
    assert.equal(await extractVmlinux(bz, out), true);
    const got = await readFile(out);
    assert.ok(isElf64(got) && got.equals(elf));
    assert.equal(await readFile(canary, 'utf8'), 'precious');
    assert.equal(await readlink(`${out}.tmp`), canary);
    assert.deepEqual((await readdir(dir)).sort(), ['canary', 'vmlinux', 'vmlinux.tmp', 'vmlinuz'], 'no temporary file left');
  });

  it('a bzImage that is a symlink (to a host file) is not read', async () => {
    const link = join(dir, 'vmlinuz-link');
    await symlink('/etc/hostname', link);
    await assert.rejects(extractVmlinux(link, join(dir, 'from-link')), { code: 'ELOOP' });
    assert.ok(!(await readdir(dir)).includes('from-link'));
  });
});
