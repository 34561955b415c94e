import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { BangerError } from '../../src/api/errors.js';
import { safeComponents, safeExtract } from '../../src/archive/safe-extract.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { type TarEntry, tarOf } from '../helpers/tar.js';

type E = TarEntry;
/** Builds a tar in memory from headers (+ bodies); safe-extract's tests give every mode and owner themselves. */
const makeTar = (entries: E[]) => tarOf(entries.map((e) => ({ mode: e.type === 'directory' ? 0o755 : 0o644, ...e })));

let base: string;
let sentinel: string;
let n = 0;
before(async () => {
  base = await mkdtemp(join(tmpdir(), 'safex-'));
  sentinel = join(base, 'sentinel');
  await mkdir(sentinel);
  await writeFile(join(sentinel, 'keep'), 'original');
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

const limits = { maxBytes: 1024 * 1024, maxEntries: 100 };
const runner = new ProcessRunner();

async function extract(buf: Buffer, over: Partial<typeof limits> = {}) {
  // dest is base/stage-N/root: a `..` from the root lands in stage-N, two in base (the sentinel's dir).
  const dest = join(base, `stage-${++n}`, 'root');
  const stats = await safeExtract(Readable.from([buf]), { dest, runner, label: 'test.tar', ...limits, ...over });
  return { dest, stats };
}

/** Extraction must fail with rejected_content naming the entry, leave no staging dir and not touch the sentinel. */
async function assertRejected(buf: Buffer, entry: string, reason: RegExp, over: Partial<typeof limits> = {}) {
  const dest = join(base, `stage-${++n}`, 'root');
  await assert.rejects(safeExtract(Readable.from([buf]), { dest, runner, label: 'test.tar', ...limits, ...over }), (e: unknown) => {
    assert.ok(e instanceof BangerError, String(e));
    assert.equal(e.code, 'rejected_content');
    assert.ok(e.message.includes(`"${entry}"`), e.message);
    assert.match(e.message, reason);
    assert.match(e.fix ?? '', /corrupt or hostile/);
    return true;
  });
  await assert.rejects(stat(dest), 'the staging dir is removed');
  assert.deepEqual(await readdir(join(dest, '..')), [], 'nothing written next to the staging dir');
  assert.deepEqual(await readdir(sentinel), ['keep']);
  assert.equal(await readFile(join(sentinel, 'keep'), 'utf8'), 'original');
  assert.deepEqual((await readdir(base)).filter((f) => !f.startsWith('stage-')).sort(), ['sentinel'], 'nothing written into the parent');
}

test('a good archive (gzip) extracts with modes, symlinks and hardlinks intact', async () => {
  const buf = await makeTar([
    { name: './', type: 'directory', mode: 0o755 },
    { name: 'boot/', type: 'directory', mode: 0o755 },
    { name: 'boot/vmlinuz-6.1', mode: 0o644, body: 'kernel' },
    { name: 'bin/tool', mode: 0o755, body: '#!/bin/sh\n' },
    { name: 'lib/modules/6.1/kernel/a.ko', mode: 0o600, body: 'ko' },
    { name: 'lib/modules/6.1/private/', type: 'directory', mode: 0o750 },
    { name: 'vmlinuz', type: 'symlink', linkname: 'boot/vmlinuz-6.1' },
    { name: 'lib/modules/6.1/up', type: 'symlink', linkname: '../../../boot' },
    { name: 'etc/abs', type: 'symlink', linkname: '/boot/vmlinuz-6.1' },
    { name: 'boot/hard', type: 'link', linkname: 'boot/vmlinuz-6.1' },
  ]);
  const { dest, stats } = await extract(gzipSync(buf));
  assert.equal(stats.entries, 10);
  assert.equal(await readFile(join(dest, 'boot/vmlinuz-6.1'), 'utf8'), 'kernel');
  assert.equal((await stat(join(dest, 'bin/tool'))).mode & 0o777, 0o755);
  assert.equal((await stat(join(dest, 'boot/vmlinuz-6.1'))).mode & 0o777, 0o644);
  assert.equal((await stat(join(dest, 'lib/modules/6.1/kernel/a.ko'))).mode & 0o777, 0o600);
  assert.equal((await stat(join(dest, 'lib/modules/6.1/private'))).mode & 0o777, 0o750);
  assert.equal(await readlink(join(dest, 'vmlinuz')), 'boot/vmlinuz-6.1');
  assert.equal(await readlink(join(dest, 'lib/modules/6.1/up')), '../../../boot');
  assert.equal(await readlink(join(dest, 'etc/abs')), '/boot/vmlinuz-6.1', 'absolute targets inside the root are kept verbatim');
  assert.equal((await stat(join(dest, 'boot/hard'))).ino, (await stat(join(dest, 'boot/vmlinuz-6.1'))).ino);
});

test('uncompressed and xz/zstd-free plain tar works too; the root entry "." is fine', async () => {
  const { dest } = await extract(
    await makeTar([
      { name: '.', type: 'directory', mode: 0o755 },
      { name: './a', body: 'x', mode: 0o644 },
    ]),
  );
  assert.equal(await readFile(join(dest, 'a'), 'utf8'), 'x');
});

test('"../" path is rejected', async () => {
  await assertRejected(
    await makeTar([
      { name: 'ok', body: 'x' },
      { name: '../../sentinel/evil', body: 'x' },
    ]),
    '../../sentinel/evil',
    /"\.\." path component/,
  );
  await assertRejected(await makeTar([{ name: 'a/../../x', body: 'x' }]), 'a/../../x', /"\.\."/);
});

test('absolute path is rejected', async () => {
  await assertRejected(await makeTar([{ name: join(sentinel, 'evil'), body: 'x' }]), join(sentinel, 'evil'), /absolute path/);
});

test('a symlink leaving the root is rejected, and so is a file written through a symlink', async () => {
  await assertRejected(
    await makeTar([
      { name: 'esc', type: 'symlink', linkname: '../../sentinel' },
      { name: 'esc/evil', body: 'x' },
    ]),
    'esc',
    /leaves the archive root/,
  );
  await assertRejected(await makeTar([{ name: 'esc', type: 'symlink', linkname: '/../../sentinel' }]), 'esc', /leaves the archive root/);
  // An in-root symlink is fine, but nothing is ever written through it.
  await assertRejected(
    await makeTar([
      { name: 'dir/', type: 'directory' },
      { name: 'here', type: 'symlink', linkname: 'dir' },
      { name: 'here/evil', body: 'x' },
    ]),
    'here/evil',
    /through the symlink "here"/,
  );
  // A chain of individually harmless links that climbs out.
  await assertRejected(
    await makeTar([
      { name: 'sub/', type: 'directory' },
      { name: 'sub/up', type: 'symlink', linkname: '..' },
      { name: 'esc', type: 'symlink', linkname: 'sub/up/..' },
    ]),
    'esc',
    /leaves the archive root/,
  );
  // The same chain with the links in the other order: caught by the final check.
  await assertRejected(
    await makeTar([
      { name: 'sub/', type: 'directory' },
      { name: 'esc', type: 'symlink', linkname: 'sub/up/..' },
      { name: 'sub/up', type: 'symlink', linkname: '..' },
    ]),
    'esc',
    /leaves the archive root/,
  );
});

test('a file replacing a symlink does not write through it', async () => {
  const { dest } = await extract(
    await makeTar([
      { name: 'f', type: 'symlink', linkname: 'g' },
      { name: 'g', body: 'target' },
      { name: 'f', body: 'new' },
    ]),
  );
  assert.ok((await lstat(join(dest, 'f'))).isFile());
  assert.equal(await readFile(join(dest, 'g'), 'utf8'), 'target');
});

test('hardlinks to outside, absolute or missing targets are rejected', async () => {
  await assertRejected(await makeTar([{ name: 'h', type: 'link', linkname: '../../sentinel/keep' }]), 'h', /outside the archive/);
  await assertRejected(await makeTar([{ name: 'h', type: 'link', linkname: join(sentinel, 'keep') }]), 'h', /outside the archive/);
  await assertRejected(await makeTar([{ name: 'h', type: 'link', linkname: 'nothere' }]), 'h', /does not exist/);
  await assertRejected(
    await makeTar([
      { name: 'd/', type: 'directory' },
      { name: 's', type: 'symlink', linkname: 'd' },
      { name: 'd/f', body: 'x' },
      { name: 'h', type: 'link', linkname: 's/f' },
    ]),
    'h',
    /through a symlink/,
  );
});

test('device nodes and FIFOs are rejected', async () => {
  await assertRejected(await makeTar([{ name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 }]), 'dev/null', /device node/);
  await assertRejected(await makeTar([{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 }]), 'dev/sda', /device node/);
  await assertRejected(await makeTar([{ name: 'pipe', type: 'fifo' }]), 'pipe', /FIFO/);
});

test('size and entry-count limits', async () => {
  await assertRejected(
    await makeTar([
      { name: 'a', body: 'x'.repeat(600) },
      { name: 'b', body: 'y'.repeat(600) },
    ]),
    'b',
    /exceeds the limit of 1000 bytes/,
    { maxBytes: 1000 },
  );
  await assertRejected(
    await makeTar([
      { name: 'a', body: '' },
      { name: 'b', body: '' },
      { name: 'c', body: '' },
    ]),
    'c',
    /more than 2 entries/,
    { maxEntries: 2 },
  );
});

test('garbage input fails cleanly; the target must be new', async () => {
  const dest = join(base, 'garbage', 'root');
  await assert.rejects(
    safeExtract(Readable.from([gzipSync(Buffer.from('not a tar at all'.repeat(100)))]), { dest, runner, label: 'g', ...limits }),
    BangerError,
  );
  await assert.rejects(stat(dest));
  const { dest: existing } = await extract(await makeTar([{ name: 'a', body: 'x' }]));
  await assert.rejects(safeExtract(Readable.from([await makeTar([])]), { dest: existing, runner, label: 'again', ...limits }), /already exists/);
  assert.equal(await readFile(join(existing, 'a'), 'utf8'), 'x', 'an existing directory is left alone');
});

test('safeComponents', () => {
  assert.deepEqual(safeComponents('t', './a//b/./c'), ['a', 'b', 'c']);
  assert.deepEqual(safeComponents('t', './'), []);
  assert.throws(() => safeComponents('t', '/etc'), /absolute/);
  assert.throws(() => safeComponents('t', 'a/../b'), /"\.\."/);
});
