import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { BuildLog } from '../../src/daemon/services/image-build.js';
import { boundedLines } from '../../src/util/bounded-lines.js';

/** A guest that prints `total` bytes of `a` without a newline, then one short line. */
function endlessLine(total: number): Readable {
  const chunk = Buffer.alloc(1024 * 1024, 0x61);
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= total) {
        this.push('\nafter\n');
        this.push(null);
        return;
      }
      const n = Math.min(chunk.length, total - sent);
      sent += n;
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n));
    },
  });
}

test('a 600 MB line without a newline is cut, never held whole, and the stream goes on', async () => {
  const lines: Array<{ len: number; cut: number }> = [];
  const rssBefore = process.memoryUsage().rss;
  let rssPeak = rssBefore;
  await boundedLines(endlessLine(600 * 1024 * 1024), {
    maxLineBytes: 16 * 1024,
    onLine: (l, cut) => {
      lines.push({ len: l.length, cut });
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    },
  });
  assert.deepEqual(lines, [
    { len: 16 * 1024, cut: 600 * 1024 * 1024 - 16 * 1024 },
    { len: 5, cut: 0 },
  ]);
  // readline would hold the whole 600 MB line (and throw on a longer one); this holds 16 KiB.
  assert.ok(rssPeak - rssBefore < 150 * 1024 * 1024, `memory grew by ${Math.round((rssPeak - rssBefore) / 1048576)} MiB`);
});

test('lines split across chunks are joined; a last line without a newline is kept', async () => {
  const got: string[] = [];
  await boundedLines(Readable.from([Buffer.from('one\ntw'), Buffer.from('o\n\nthr'), Buffer.from('ee')]), { maxLineBytes: 100, onLine: (l) => got.push(l) });
  assert.deepEqual(got, ['one', 'two', '', 'three']);
});

test('the build log stops growing at its cap and says how much it dropped', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'banger-buildlog-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const opLog: string[] = [];
  const log = new BuildLog(join(dir, 'b.log'), { log: (l: string) => opLog.push(l) }, 1000);
  for (let i = 0; i < 500; i++) log.line(`line ${i} ${'x'.repeat(40)}`, 0);
  log.line('cut', 12345);
  await log.close();
  const file = await readFile(join(dir, 'b.log'), 'utf8');
  assert.ok(file.length < 1200, `log file is ${file.length} bytes`);
  assert.match(file, /further lines are dropped/);
  assert.match(file, /\[\d+ lines dropped\]/);
  assert.ok(opLog.length < 40, `the operation log got ${opLog.length} lines`);
  const small = new BuildLog(join(dir, 'c.log'), { log: () => undefined });
  small.line('cut', 12345);
  await small.close();
  assert.match(await readFile(join(dir, 'c.log'), 'utf8'), /cut \[… 12345 more bytes of this line dropped\]/);
});
