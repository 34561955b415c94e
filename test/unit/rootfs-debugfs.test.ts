// Issue 9, hole 13b: names from an image reach debugfs command lines (the fixup script that makes
// device nodes and sets owners). Names with spaces, quotes, backslashes and tabs must land on the
// right inode, and no name may become a second debugfs command (e.g. `write HOSTFILE`, which would
// copy a host file into the image). Real mkfs.ext4 and debugfs; the image is inspected afterwards.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { DiskTools } from '../../src/host/disks.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyLayer, RootfsLedger } from '../../src/images/layer-apply.js';
import { buildRootfs, debugfsQuote, fixupScript } from '../../src/images/rootfs-build.js';
import { missing } from '../helpers/prereq.js';
import { tarOf } from '../helpers/tar.js';

const haveTools = ['mkfs.ext4', 'debugfs'].every((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);

/** `debugfs -R` one read-only command against the image (the test's own, carefully quoted). */
function debugfs(image: string, command: string): string {
  const r = spawnSync('debugfs', ['-R', command, image], { encoding: 'utf8' });
  return `${r.stdout}\n${r.stderr}`;
}

function statOf(image: string, path: string): { uid: number; gid: number; mode: number; type: string } | undefined {
  const out = debugfs(image, `stat ${debugfsQuote(path)}`);
  const m = /Type:\s+(.+?)\s+Mode:\s+(\d+)/.exec(out);
  const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(out);
  if (!m || !u) return undefined;
  return { type: m[1] as string, mode: Number.parseInt(m[2] as string, 8), uid: Number(u[1]), gid: Number(u[2]) };
}

describe('debugfs fixups of hostile names', () => {
  let dir: string;
  let secret: string;
  before(async () => {
    dir = await mkdtemp('/tmp/bg-debugfs-');
    secret = join(dir, 'host-secret');
    await writeFile(secret, 'host secret\n');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('quotes spaces, quotes, backslashes and tabs; a name with a newline is skipped, never run as a command', async (t) => {
    if (missing(t, haveTools, 'mkfs.ext4 and debugfs are needed')) return;
    const tree = join(dir, 'tree');
    const image = join(dir, 'root.ext4');
    await mkdir(tree);
    const ledger = new RootfsLedger();
    const injected = `x\nwrite ${secret} leaked\n`;
    await applyLayer(
      Readable.from(
        await tarOf([
          { name: 'a b', body: 'spaced', uid: 1234, gid: 1235 },
          { name: 'd e/', type: 'directory', uid: 7, gid: 8 },
          { name: 'd e/n o', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666, uid: 5, gid: 6 },
          { name: 'd e/p q', type: 'fifo', mode: 0o600 },
          { name: 'q" uid 4242 "', body: 'quoted', uid: 1001, gid: 1002 },
          { name: 'b\\c\td', body: 'odd', uid: 42, gid: 43 },
          { name: injected, body: 'nl', uid: 9, gid: 9 },
        ]),
      ),
      { root: tree, chownOnDisk: false, label: 'names', maxBytes: 1 << 20, maxEntries: 100 },
      ledger,
    );
    const disks = new DiskTools(new ProcessRunner());
    const { skipped } = await buildRootfs(disks, {
      tree,
      out: image,
      sizeBytes: 16 << 20,
      ledger,
      ownersOnDisk: false,
      scriptPath: join(dir, 'fixup.debugfs'),
    });

    assert.deepEqual(statOf(image, '/a b'), { type: 'regular', mode: 0o644, uid: 1234, gid: 1235 });
    assert.deepEqual(statOf(image, '/d e'), { type: 'directory', mode: 0o755, uid: 7, gid: 8 });
    assert.deepEqual(statOf(image, '/d e/n o'), { type: 'character special', mode: 0o666, uid: 5, gid: 6 });
    assert.equal(statOf(image, '/d e/p q')?.type, 'FIFO');
    assert.deepEqual(statOf(image, '/q" uid 4242 "'), { type: 'regular', mode: 0o644, uid: 1001, gid: 1002 });
    assert.deepEqual(statOf(image, '/b\\c\td'), { type: 'regular', mode: 0o644, uid: 42, gid: 43 });
    // The name with newlines cannot be written to debugfs: reported, and nothing of it ran.
    assert.ok(skipped.includes(injected), JSON.stringify(skipped));
    assert.ok(
      skipped.every((p) => p.startsWith('x\nwrite ')),
      'only the newline name and its parent directories are skipped',
    );
    assert.equal(statOf(image, '/leaked'), undefined, 'no host file was copied into the image');
    assert.doesNotMatch(debugfs(image, 'ls -l /'), /leaked/);
  });

  it('refuses to quote what debugfs cannot read back (newlines, NUL, lines long enough to be split)', () => {
    assert.equal(debugfsQuote('a\nb'), undefined);
    assert.equal(debugfsQuote('a\rb'), undefined);
    assert.equal(debugfsQuote('a\0b'), undefined);
    assert.equal(debugfsQuote('"'.repeat(2000)), undefined);
    assert.equal(debugfsQuote('/a "b"'), '"/a ""b"""');
    const ledger = new RootfsLedger();
    ledger.owners.set('"'.repeat(1600), { uid: 1, gid: 1, mode: 0o644 });
    const { script, skipped } = fixupScript(ledger, false);
    assert.equal(script, '');
    assert.equal(skipped.length, 1);
  });
});
