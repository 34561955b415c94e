import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import * as tar from 'tar-stream';
import { BangerError } from '../../src/api/errors.js';
import { applyLayer, entryComponents, RootfsLedger } from '../../src/images/layer-apply.js';
import { fixupScript, imageSizeFor } from '../../src/images/rootfs-build.js';

type Entry = Partial<tar.Header> & { name: string; body?: string };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const { body, ...h } of entries) {
    await new Promise<void>((res, rej) =>
      pack.entry({ uid: 0, gid: 0, mode: h.type === 'directory' ? 0o755 : 0o644, ...h }, body ?? '', (e) => (e ? rej(e) : res())),
    );
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const LIMITS = { maxBytes: 1 << 30, maxEntries: 100_000 };
const isRoot = process.getuid?.() === 0;

describe('applyLayer', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'banger-layer-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const fresh = async (name: string) => {
    const root = join(dir, name);
    await mkdir(root);
    return root;
  };
  const apply = async (root: string, entries: Entry[], ledger: RootfsLedger, chownOnDisk = isRoot, label = 'test layer') =>
    applyLayer(Readable.from(await tarOf(entries)), { root, chownOnDisk, label, ...LIMITS }, ledger);

  it('stacks layers: whiteouts, opaque dirs, setuid, ownership, symlinks and hardlinks', async () => {
    const root = await fresh('stack');
    const ledger = new RootfsLedger();
    await apply(
      root,
      [
        { name: 'etc/', type: 'directory' },
        { name: 'etc/a', body: 'a' },
        { name: 'etc/b', body: 'b' },
        { name: 'usr/bin/su', body: 'su', mode: 0o4755 },
        { name: 'usr/bin/newgrp', body: 'ng', mode: 0o2755, gid: 42 },
        { name: 'usr/bin/su2', type: 'link', linkname: 'usr/bin/su' },
        { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
        { name: 'opt/x/keep-not', body: 'lower' },
        { name: 'opt/x/sub/deep', body: 'lower' },
        { name: 'home/u/', type: 'directory', uid: 1000, gid: 1000, mode: 0o700 },
        { name: 'home/u/notes', body: 'n', uid: 1000, gid: 1000, mode: 0o600 },
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
      ],
      ledger,
    );
    await apply(
      root,
      [
        { name: 'etc/.wh.a', body: '' },
        { name: 'opt/x/new', body: 'upper' },
        { name: 'opt/x/.wh..wh..opq', body: '' },
        { name: 'bin/tool', body: 'through a relative symlink', mode: 0o755 },
        { name: 'etc/b', body: 'replaced' },
      ],
      ledger,
    );

    await assert.rejects(lstat(join(root, 'etc/a')), { code: 'ENOENT' });
    assert.equal(await readFile(join(root, 'etc/b'), 'utf8'), 'replaced');
    assert.deepEqual((await readdir(join(root, 'opt/x'))).sort(), ['new']);
    const su = await stat(join(root, 'usr/bin/su'));
    assert.equal(su.mode & 0o7777, 0o4755);
    assert.equal((await stat(join(root, 'usr/bin/newgrp'))).mode & 0o7777, 0o2755);
    assert.equal((await stat(join(root, 'usr/bin/su2'))).ino, su.ino);
    assert.equal(await readlink(join(root, 'bin')), 'usr/bin');
    assert.equal(await readFile(join(root, 'usr/bin/tool'), 'utf8'), 'through a relative symlink');
    assert.equal(ledger.specials.get('dev/null')?.type, 'char');
    if (isRoot) {
      assert.equal((await stat(join(root, 'home/u/notes'))).uid, 1000);
      assert.equal((await stat(join(root, 'usr/bin/newgrp'))).gid, 42);
    }
  });

  it('records ownership instead of chowning when not root, and the fixup script writes it', async () => {
    const root = await fresh('ledger');
    const ledger = new RootfsLedger();
    await apply(
      root,
      [
        { name: 'usr/bin/sudo', body: 'sudo', mode: 0o4755 },
        { name: 'home/u/f', body: 'x', uid: 1000, gid: 1001 },
        { name: 'dev/fifo', type: 'fifo', mode: 0o600 },
      ],
      ledger,
      false,
    );
    assert.deepEqual(ledger.owners.get('home/u/f'), { uid: 1000, gid: 1001, mode: 0o644 });
    assert.equal((await stat(join(root, 'usr/bin/sudo'))).mode & 0o7777, 0o4755);
    const { script, skipped } = fixupScript(ledger, false);
    assert.deepEqual(skipped, []);
    assert.match(script, /^sif "\/home\/u\/f" uid 1000$/m);
    assert.match(script, /^sif "\/home\/u\/f" gid 1001$/m);
    assert.match(script, /^cd "\/dev"\nmknod "fifo" p\ncd "\/"$/m);
    assert.match(script, /^sif "\/dev\/fifo" mode 010600$/m);
    // As root nothing but the special node needs debugfs.
    assert.doesNotMatch(fixupScript(ledger, true).script, /home/);
  });

  describe('hostile layers are refused and write nothing outside the root', () => {
    const outsideName = 'outside-sentinel';
    const cases: Array<[string, Entry[], RegExp]> = [
      ['a ../ path', [{ name: '../outside-sentinel/pwned', body: 'x' }], /has a "\.\." component/],
      ['a nested ../ path', [{ name: 'a/../../outside-sentinel/pwned', body: 'x' }], /has a "\.\." component/],
      [
        'a write through an absolute symlink',
        [
          { name: 'esc', type: 'symlink', linkname: `${'/'}tmp` },
          { name: 'esc/pwned', body: 'x' },
        ],
        /symlink to the absolute path/,
      ],
      [
        'a write through a symlink that climbs out',
        [
          { name: 'a/up', type: 'symlink', linkname: '../../outside-sentinel' },
          { name: 'a/up/pwned', body: 'x' },
        ],
        /leaves the image root/,
      ],
      ['a hardlink out of the root', [{ name: 'h', type: 'link', linkname: '../outside-sentinel/victim' }], /outside the image root/],
      ['a hardlink to a missing file', [{ name: 'h', type: 'link', linkname: 'etc/shadow' }], /not in the image/],
    ];
    for (const [what, entries, message] of cases) {
      it(`refuses ${what}`, async () => {
        const base = await fresh(`hostile-${what.replace(/\W+/g, '-')}`);
        const root = join(base, 'root');
        const outside = join(base, outsideName);
        await mkdir(root);
        await mkdir(outside);
        await assert.rejects(apply(root, entries, new RootfsLedger()), (e: unknown) => {
          assert.ok(e instanceof BangerError, String(e));
          assert.equal(e.code, 'rejected_content');
          assert.match(e.message, message);
          assert.match(e.message, /test layer/);
          return true;
        });
        assert.deepEqual(await readdir(outside), []);
      });
    }

    it('refuses a truncated tar', async () => {
      const root = await fresh('truncated');
      const whole = await tarOf([{ name: 'big', body: 'y'.repeat(5000) }]);
      await assert.rejects(
        applyLayer(Readable.from(whole.subarray(0, 2048)), { root, chownOnDisk: false, label: 'cut layer', ...LIMITS }, new RootfsLedger()),
        (e: unknown) => {
          assert.ok(e instanceof BangerError, String(e));
          assert.match(e.message, /cut layer/);
          return true;
        },
      );
    });

    it('enforces the size limit', async () => {
      const root = await fresh('limit');
      await assert.rejects(
        applyLayer(
          Readable.from(await tarOf([{ name: 'a', body: 'z'.repeat(100) }])),
          { root, chownOnDisk: false, label: 'l', maxBytes: 10, maxEntries: 10 },
          new RootfsLedger(),
        ),
        /over the limit of 10 bytes/,
      );
    });
  });
});

describe('entryComponents and sizing', () => {
  it('normalises names and spots ..', () => {
    assert.deepEqual(entryComponents('./usr//bin/'), ['usr', 'bin']);
    assert.deepEqual(entryComponents('/etc/passwd'), ['etc', 'passwd']);
    assert.equal(entryComponents('a/../b'), 'dotdot');
  });
  it('sizes images at content × 1.5 with a 1 GiB floor and checks an explicit size', () => {
    assert.equal(imageSizeFor({ bytes: 10, entries: 1 }), 1024 ** 3);
    assert.equal(imageSizeFor({ bytes: 2 * 1024 ** 3, entries: 0 }), 3 * 1024 ** 3);
    assert.throws(() => imageSizeFor({ bytes: 2 * 1024 ** 3, entries: 0 }, 1024 ** 3), /cannot hold this image/);
  });
});
