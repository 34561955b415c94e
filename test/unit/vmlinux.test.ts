import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { extractVmlinuxFrom, isElf64, lz4DecodeBlock, lz4DecodeLegacy } from '../../src/kernels/vmlinux.js';
import { guestAssets } from '../helpers/banger.js';
import { fakeElf } from '../helpers/elf.js';
import { requires } from '../helpers/prereq.js';

const hasLz4 = spawnSync('lz4', ['--version']).status === 0;

test('lz4DecodeBlock: literals-only block and an overlapping match', () => {
  const out = Buffer.alloc(64);
  // token 0x50: 5 literals, no match (last sequence).
  assert.equal(lz4DecodeBlock(Buffer.from([0x50, ...Buffer.from('hello')]), out), 5);
  assert.equal(out.subarray(0, 5).toString(), 'hello');
  // "ab" then a match of 8 at offset 2 → "ababababab", then 1 final literal.
  const n = lz4DecodeBlock(Buffer.from([0x24, 0x61, 0x62, 0x02, 0x00, 0x10, 0x21]), out);
  assert.equal(out.subarray(0, n).toString(), 'ababababab!');
  assert.throws(() => lz4DecodeBlock(Buffer.from([0x10, 0x61, 0x05, 0x00]), out), /offset out of range/);
});

test('isElf64 accepts a whole x86-64 ELF64 header and refuses the rest', () => {
  assert.equal(isElf64(fakeElf()), true);
  const elf32 = fakeElf();
  elf32[4] = 1;
  assert.equal(isElf64(elf32), false);
  assert.equal(isElf64(Buffer.from('MZ not elf')), false);
  const truncated = fakeElf(64 + 56).subarray(0, 100);
  assert.equal(isElf64(truncated), false);
});

test('a bzImage-like blob: LZ4 legacy payload (lz4 -l) after junk, size trailer after it', {
  skip: requires(hasLz4, 'needs the lz4 CLI to build the fixture'),
}, () => {
  const elf = Buffer.concat([fakeElf(), Buffer.alloc(9 * 1024 * 1024, 7)]); // > one 8 MiB legacy block
  const lz = spawnSync('lz4', ['-l', '-c', '-q'], { input: elf, maxBuffer: 64 << 20 });
  assert.equal(lz.status, 0);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE(elf.length);
  // Junk with a false magic before the real payload.
  const blob = Buffer.concat([Buffer.from([0x02, 0x21, 0x4c, 0x18, 0xff, 0xff, 0xff, 0xff]), Buffer.alloc(500, 1), lz.stdout, trailer, Buffer.alloc(300, 2)]);
  const out = extractVmlinuxFrom(blob);
  assert.ok(out);
  assert.ok(out.equals(elf));
  assert.equal(lz4DecodeLegacy(Buffer.from('nope'), 0), undefined);
  assert.equal(extractVmlinuxFrom(Buffer.alloc(1000)), undefined);
});

const assets = guestAssets();
const real = (() => {
  if (!assets) return undefined;
  const m = JSON.parse(readFileSync(`${assets.kernelDir}/../../assets.json`, 'utf8')) as { vmlinuz?: string };
  return m.vmlinuz && existsSync(m.vmlinuz) && existsSync(`${assets.kernelDir}/vmlinux`)
    ? { vmlinuz: m.vmlinuz, vmlinux: `${assets.kernelDir}/vmlinux` }
    : undefined;
})();

test('the real Debian bzImage: same vmlinux as scripts/guest-assets.sh (lz4 CLI) extracts', {
  skip: requires(real, 'guest assets missing: run scripts/guest-assets.sh'),
}, () => {
  const r = real as { vmlinuz: string; vmlinux: string };
  const out = extractVmlinuxFrom(readFileSync(r.vmlinuz));
  assert.ok(out && isElf64(out));
  assert.ok(out.equals(readFileSync(r.vmlinux)));
});
