import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { capLogFile, LogCapper, readLogLines, readLogTail } from '../../src/vmm/console-log.js';
import { readTail } from '../../src/vmm/process.js';

/** The regex VmService.reconcile uses to decide that a dead VMM's guest powered off cleanly. */
const CLEAN_POWER_OFF = /reboot: Power down|System halted/;
const MiB = 1024 * 1024;

let dir: string;
let n = 0;
const fresh = () => join(dir, `log-${n++}`);
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-console-log-'));
});
after(() => rm(dir, { recursive: true, force: true }));

/**
 * Peak RSS growth while `fn` runs: VmHWM after resetting it through /proc/self/clear_refs ("5").
 * Undefined when the kernel does not allow the reset (the caller skips).
 */
async function peakRssGrowth(fn: () => Promise<unknown>): Promise<number | undefined> {
  const status = () => readFileSync('/proc/self/status', 'utf8');
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status())?.[1]) * 1024;
  try {
    writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    return undefined;
  }
  const before = kib('VmRSS');
  if (kib('VmHWM') > before + 4 * MiB) return undefined; // the reset did not take
  await fn();
  return kib('VmHWM') - before;
}

/** Appends with O_APPEND, as QEMU's `file` chardev with append=on and our VMM stdout do. */
function appender(path: string) {
  const fd = openSync(path, 'a', 0o600);
  return { write: (s: string | Buffer) => writeSync(fd, typeof s === 'string' ? Buffer.from(s) : s), close: () => closeSync(fd) };
}

test('a 600 MB (sparse) serial.log: the tail is read at an offset, bounded, and memory stays small', async (t) => {
  const path = fresh();
  await truncate(await writeFile(path, '').then(() => path), 600 * MiB);
  const fd = openSync(path, 'r+');
  writeSync(fd, '[  12.3] reboot: Power down\n', 600 * MiB);
  closeSync(fd);
  assert.ok((await stat(path)).size > 600 * MiB);
  let tail = '';
  const growth = await peakRssGrowth(async () => {
    tail = await readTail(path, 4096);
  });
  if (growth === undefined) return t.skip('peak RSS cannot be reset on this kernel (/proc/self/clear_refs)');
  assert.match(tail, CLEAN_POWER_OFF);
  assert.ok(Buffer.byteLength(tail) <= 4096);
  assert.ok(!tail.includes('\0'), 'the hole is not returned as NULs');
  // Reading the whole file (the old readFile) costs 600 MB; an offset read costs nothing visible.
  assert.ok(growth < 32 * MiB, `peak RSS grew by ${Math.round(growth / MiB)} MiB`);
});

test('rotation: over the cap, the last part moves to .1 and the live file is truncated; an O_APPEND writer goes on at the new end', async () => {
  const path = fresh();
  const w = appender(path);
  try {
    const line = `${'x'.repeat(99)}\n`;
    for (let i = 0; i < 30_000; i++) w.write(line); // ~3 MB of guest output
    w.write('[  99.9] reboot: Power down\n');
    assert.equal(await capLogFile(path, { capBytes: MiB, keepBytes: 256 * 1024 }), true);
    assert.equal((await stat(path)).size, 0);
    const old = await stat(`${path}.1`);
    assert.ok(old.size <= 256 * 1024 && old.size > 0);
    assert.ok((old.mode & 0o077) === 0, 'the rotated copy is private (0600)');
    // reconcile reads the console tail after the VMM died: the power-off line is still found.
    assert.match(await readTail(path, 4096), CLEAN_POWER_OFF);
    // The writer keeps its descriptor and appends at offset 0 of the truncated file: no hole.
    w.write('after rotation\n');
    assert.equal(await readFile(path, 'utf8'), 'after rotation\n');
    assert.equal(await capLogFile(path, { capBytes: MiB, keepBytes: 256 * 1024 }), false, 'under the cap: left alone');
    // Tail and lines span both files.
    assert.equal(await readLogLines(path, 2, 4096), '[  99.9] reboot: Power down\nafter rotation\n');
  } finally {
    w.close();
  }
});

test('rotation keeps a flooded log under the cap, checked repeatedly while the guest keeps writing', async () => {
  const path = fresh();
  const w = appender(path);
  const capper = new LogCapper({ files: () => [path], capBytes: MiB, keepBytes: 256 * 1024 });
  try {
    const burst = Buffer.alloc(512 * 1024, 'y');
    for (let round = 0; round < 12; round++) {
      for (let i = 0; i < 4; i++) w.write(burst); // 2 MiB per round
      await capper.checkNow();
      assert.ok((await stat(path)).size <= MiB, `round ${round}: live file ${(await stat(path)).size}`);
      assert.ok((await stat(`${path}.1`)).size <= 256 * 1024);
    }
  } finally {
    w.close();
  }
});

test('a writer without O_APPEND (Firecracker opens its own log) leaves a hole: not counted, not copied, not returned', async () => {
  const path = fresh();
  const fd = openSync(path, 'w');
  try {
    let pos = 0;
    const chunk = Buffer.alloc(256 * 1024, 'z');
    for (let i = 0; i < 12; i++) pos += writeSync(fd, chunk, 0, chunk.length, pos); // 3 MiB
    assert.equal(await capLogFile(path, { capBytes: MiB, keepBytes: 128 * 1024 }), true);
    pos += writeSync(fd, 'firecracker: late line\n', pos); // at the old offset: a 3 MiB hole before it
    const st = await stat(path);
    assert.ok(st.size > 3 * MiB, 'apparent size includes the hole');
    assert.equal(await capLogFile(path, { capBytes: MiB, keepBytes: 128 * 1024 }), false, 'allocated bytes are under the cap');
    assert.match(await readTail(path, 64), /z+firecracker: late line$/, 'the tail continues into .1, holes dropped');
    const rotated = await readFile(`${path}.1`);
    assert.ok(!rotated.includes(0));
  } finally {
    closeSync(fd);
  }
});

test('a symlinked log is never followed: the canary is neither read, copied nor truncated', async () => {
  const canary = fresh();
  const secret = `SECRET ${'s'.repeat(4000)}\n`;
  await writeFile(canary, secret.repeat(600)); // 2.4 MB, over the cap below
  const path = fresh();
  await symlink(canary, path);
  await assert.rejects(capLogFile(path, { capBytes: MiB }), /ELOOP|symbolic link/i);
  assert.equal(await readTail(path, 4096), '');
  assert.equal((await readLogTail(path, 4096).catch(() => Buffer.alloc(0))).length, 0);
  assert.equal(await readFile(canary, 'utf8'), secret.repeat(600));
  await assert.rejects(stat(`${path}.1`), /ENOENT/);
  // A planted `.1` symlink is replaced by the rename, not written through.
  const real = fresh();
  const w = appender(real);
  w.write(Buffer.alloc(2 * MiB, 'q'));
  w.close();
  await symlink(canary, `${real}.1`);
  assert.equal(await capLogFile(real, { capBytes: MiB, keepBytes: 1024 }), true);
  assert.equal(await readFile(canary, 'utf8'), secret.repeat(600));
  assert.equal((await readFile(`${real}.1`, 'utf8')).length, 1024);
});

test('missing logs are fine: nothing to cap, empty tail', async () => {
  const path = fresh();
  assert.equal(await capLogFile(path), false);
  assert.equal(await readTail(path), '');
  assert.equal(await readLogLines(path, 10, 4096), '');
  assert.deepEqual(await new LogCapper({ files: () => [path] }).checkNow(), []);
});
