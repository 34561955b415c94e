// Issue 9 (bombs): an xz stream whose header asks for a 4 GiB dictionary is refused by the memory
// limit banger gives the xz CLI, with a BangerError; an ordinary xz stream still decompresses.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import * as zlib from 'node:zlib';
import { BangerError } from '../../src/api/errors.js';
import { decompressor } from '../../src/archive/decompress.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { requires } from '../helpers/prereq.js';

const hasXz = spawnSync('xz', ['--version']).status === 0;

async function inflate(data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(Readable.from([data]), decompressor('xz', new ProcessRunner()), async (src: AsyncIterable<Buffer>) => {
    for await (const c of src) chunks.push(c);
  });
  return Buffer.concat(chunks);
}

test('xz: a header asking for a 4 GiB dictionary is refused; a normal stream decompresses', { skip: requires(hasXz, 'needs the xz CLI') }, async () => {
  const plain = Buffer.from('hello world\n'.repeat(100));
  const xz = spawnSync('xz', ['-c'], { input: plain }).stdout;
  assert.ok((await inflate(xz)).equals(plain));
  // Block header after the 12-byte stream header: size, flags, LZMA2 filter id 0x21, props size, dict byte.
  const bomb = Buffer.from(xz);
  const at = 12;
  assert.deepEqual([bomb[at + 2], bomb[at + 3]], [0x21, 0x01], 'one LZMA2 filter');
  const len = ((bomb[at] as number) + 1) * 4;
  bomb[at + 4] = 40; // dictionary 4 GiB - 1
  bomb.writeUInt32LE(zlib.crc32(bomb.subarray(at, at + len - 4)), at + len - 4);
  // Positive control: without the limit, xz accepts the forged header.
  assert.equal(spawnSync('xz', ['-dcq'], { input: bomb }).status, 0);
  await assert.rejects(inflate(bomb), (e: unknown) => {
    assert.ok(e instanceof BangerError, String(e));
    assert.equal(e.code, 'rejected_content');
    assert.match(e.message, /Memory usage limit/i);
    return true;
  });
});
