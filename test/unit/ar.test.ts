import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { BangerError } from '../../src/api/errors.js';
import { debDataStream, parseArHeaders, readArMembers } from '../../src/archive/ar.js';
import { safeExtract } from '../../src/archive/safe-extract.js';
import { ProcessRunner } from '../../src/host/runner.js';

async function makeTar(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const [name, body] of Object.entries(files)) pack.entry({ name, mode: 0o644 }, body);
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** An ar archive the way dpkg-deb writes one: GNU-style names ending in "/", data padded to even sizes. */
export function makeAr(members: Array<[string, Buffer]>): Buffer {
  const parts: Buffer[] = [Buffer.from('!<arch>\n')];
  for (const [name, data] of members) {
    const h = `${`${name}/`.padEnd(16)}${'0'.padEnd(12)}${'0'.padEnd(6)}${'0'.padEnd(6)}${'100644'.padEnd(8)}${String(data.length).padEnd(10)}\`\n`;
    assert.equal(h.length, 60);
    parts.push(Buffer.from(h, 'latin1'), data);
    if (data.length % 2) parts.push(Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ar-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('a .deb: members parsed (odd sizes padded), data.tar.gz extracted through safeExtract', async () => {
  const data = gzipSync(await makeTar({ 'boot/vmlinuz-6.1': 'kernel', 'lib/modules/6.1/modules.dep': '' }));
  const deb = makeAr([
    ['debian-binary', Buffer.from('2.0\n')],
    ['control.tar.gz', Buffer.from('odd')],
    ['data.tar.gz', data],
  ]);
  const path = join(dir, 'k.deb');
  await writeFile(path, deb);
  const members = await readArMembers(path);
  assert.deepEqual(
    members.map((m) => [m.name, m.size]),
    [
      ['debian-binary', 4],
      ['control.tar.gz', 3],
      ['data.tar.gz', data.length],
    ],
  );
  assert.deepEqual(parseArHeaders(deb, 'k.deb'), members, 'in-memory parse agrees');
  const d = await debDataStream(path);
  assert.equal(d.compression, 'gzip');
  const dest = join(dir, 'tree');
  await safeExtract(d.stream, { dest, runner: new ProcessRunner(), label: 'k.deb', maxBytes: 1 << 20, maxEntries: 10, compression: d.compression });
  assert.equal(await readFile(join(dest, 'boot/vmlinuz-6.1'), 'utf8'), 'kernel');
  assert.ok((await stat(join(dest, 'lib/modules/6.1/modules.dep'))).isFile());
});

test('not an ar archive, truncated member, no data.tar: rejected_content', async () => {
  const bad = async (buf: Buffer, re: RegExp) => {
    const p = join(dir, `bad-${Math.random()}.deb`);
    await writeFile(p, buf);
    await assert.rejects(debDataStream(p, 'x.deb'), (e: unknown) => e instanceof BangerError && e.code === 'rejected_content' && re.test(e.message));
  };
  await bad(Buffer.from('PK\x03\x04 zip file'), /!<arch> magic/);
  const good = makeAr([
    ['debian-binary', Buffer.from('2.0\n')],
    ['data.tar.xz', Buffer.alloc(100)],
  ]);
  await bad(good.subarray(0, good.length - 50), /runs past the end/);
  await bad(
    makeAr([
      ['debian-binary', Buffer.from('2.0\n')],
      ['control.tar.gz', Buffer.alloc(10)],
    ]),
    /no data\.tar member/,
  );
  await bad(makeAr([['data.tar.gz', Buffer.alloc(10)]]), /first member is not debian-binary/);
  const corrupt = Buffer.from(good);
  corrupt[8 + 58] = 0x41;
  await bad(corrupt, /bad member header/);
});
