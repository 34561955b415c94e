// Issue 9, holes 11 and 13a: hostile layers fed to the real unpacker. Every assertion is on the
// host: a canary next to the tree, what the tree holds on the tmpfs, what is left in /dev/shm.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import * as zlib from 'node:zlib';
import { BangerError } from '../../src/api/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { memoryBudgetOf, ScratchSpace } from '../../src/host/scratch.js';
import { applyLayer, RootfsLedger, TreeOverBudget } from '../../src/images/layer-apply.js';
import { fetchAndFlatten } from '../../src/images/oci-pull.js';
import { BlobCache } from '../../src/oci/blob-cache.js';
import { parseReference } from '../../src/oci/reference.js';
import { RegistryClient } from '../../src/oci/registry.js';
import type { OpContext } from '../../src/util/op-context.js';
import { buildImage, buildLayer, imageRoutes, startFakeRegistry } from '../helpers/oci-fixtures.js';
import { type TarEntry, tarOf } from '../helpers/tar.js';

type Entry = TarEntry;

const LIMITS = { maxBytes: 1 << 30, maxEntries: 100_000 };
const isRoot = process.getuid?.() === 0;

/** Bytes a tree actually occupies (allocated blocks, what a tmpfs takes from RAM). */
async function allocatedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    const st = await lstat(p);
    total += st.blocks * 512;
    if (e.isDirectory()) total += await allocatedBytes(p);
  }
  return total;
}

/** An OpContext that records what the operation logged (a named fake: no registry of operations behind it). */
function fakeCtx(): OpContext & { logs: string[] } {
  const logs: string[] = [];
  return {
    id: 'op-test',
    signal: new AbortController().signal,
    logs,
    stage() {},
    progress() {},
    log: (l) => void logs.push(l),
    setTarget() {},
    checkCancelled() {},
  };
}

describe('hole 13a: whiteouts that name the root or its parent', () => {
  let base: string;
  before(async () => {
    base = await mkdtemp('/tmp/bg-whiteout-');
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  for (const name of ['.wh...', './.wh..', '.wh.', 'a/b/.wh...', 'a/.wh..', './a/b/.wh.']) {
    it(`refuses "${name}" and deletes nothing: the tree and a canary beside it survive`, async () => {
      const dir = await mkdtemp(join(base, 'case-'));
      const root = join(dir, 'root');
      const canary = join(dir, 'canary');
      await mkdir(root);
      await mkdir(canary);
      await writeFile(join(canary, 'keep'), 'precious');
      const ledger = new RootfsLedger();
      await applyLayer(
        Readable.from(
          await tarOf([
            { name: 'a/b/', type: 'directory' },
            { name: 'a/b/f', body: 'lower' },
          ]),
        ),
        { root, chownOnDisk: isRoot, label: 'lower', ...LIMITS },
        ledger,
      );
      await assert.rejects(
        applyLayer(Readable.from(await tarOf([{ name, body: '' }])), { root, chownOnDisk: isRoot, label: 'upper', ...LIMITS }, ledger),
        (e: unknown) => {
          assert.ok(e instanceof BangerError, String(e));
          assert.equal(e.code, 'rejected_content');
          assert.match(e.message, /whiteout of/);
          return true;
        },
      );
      assert.equal(await readFile(join(canary, 'keep'), 'utf8'), 'precious');
      assert.equal(await readFile(join(root, 'a/b/f'), 'utf8'), 'lower');
    });
  }

  it('still applies an ordinary whiteout', async () => {
    const root = await mkdtemp(join(base, 'ok-'));
    const ledger = new RootfsLedger();
    await applyLayer(
      Readable.from(
        await tarOf([
          { name: 'etc/a', body: 'a' },
          { name: 'etc/b', body: 'b' },
        ]),
      ),
      { root, chownOnDisk: isRoot, label: 'l1', ...LIMITS },
      ledger,
    );
    await applyLayer(Readable.from(await tarOf([{ name: 'etc/.wh.a', body: '' }])), { root, chownOnDisk: isRoot, label: 'l2', ...LIMITS }, ledger);
    assert.deepEqual(await readdir(join(root, 'etc')), ['b']);
  });

  it('escapes control characters of hostile names in its messages', async () => {
    const root = await mkdtemp(join(base, 'ctl-'));
    await assert.rejects(
      applyLayer(
        Readable.from(await tarOf([{ name: '\x1b]0;pwned\x07/../x', body: '' }])),
        { root, chownOnDisk: isRoot, label: 'l', ...LIMITS },
        new RootfsLedger(),
      ),
      (e: unknown) => {
        assert.ok(e instanceof BangerError);
        assert.doesNotMatch(e.message, /[\x00-\x1f]/);
        assert.match(e.message, /\\x1b\]0;pwned\\x07/);
        return true;
      },
    );
  });
});

describe('hole 11: decompression bombs on tmpfs', () => {
  let shm: string | undefined;
  let state: string;
  before(async () => {
    state = await mkdtemp('/tmp/bg-bomb-');
    if (existsSync('/dev/shm')) {
      shm = await mkdtemp('/dev/shm/bgtest-bomb-');
      await chmod(shm, 0o1777);
    }
  });
  after(async () => {
    await rm(state, { recursive: true, force: true });
    if (shm) await rm(shm, { recursive: true, force: true });
  });

  const BUDGET = 1 << 20;
  /** 32 MiB of zeros gzip to ~32 KiB: 32 × the budget from a layer far smaller than it. */
  const BOMB = 32 << 20;

  it('stops a layer that inflates past a memory tree’s budget before writing past it', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const s = new ScratchSpace({
      diskDir: join(state, 'direct', 'scratch'),
      memParent: shm,
      recordFile: join(state, 'direct', 'scratch-mem'),
      memBudget: () => BUDGET,
    });
    const tree = await s.make('image-tree', 64 << 10);
    assert.equal(memoryBudgetOf(tree), BUDGET);
    const layer = zlib.gzipSync(
      await tarOf([
        { name: 'small', body: 'x'.repeat(1000) },
        { name: 'bomb', body: Buffer.alloc(BOMB) },
      ]),
    );
    assert.ok(layer.length < BUDGET / 8, `the compressed layer (${layer.length} B) is far under the budget`);
    await assert.rejects(
      applyLayer(
        Readable.from(layer).pipe(zlib.createGunzip()),
        { root: tree, chownOnDisk: isRoot, label: 'bomb layer', ...LIMITS, maxBytes: 1 << 30 },
        new RootfsLedger(),
      ),
      (e: unknown) => {
        assert.ok(e instanceof TreeOverBudget, String(e));
        assert.equal(e.code, 'rejected_content');
        assert.ok(e.fix);
        return true;
      },
    );
    const used = await allocatedBytes(tree);
    assert.ok(used <= BUDGET, `the tree holds ${used} bytes on the tmpfs, over the ${BUDGET} budget`);
    assert.equal(existsSync(join(tree, 'bomb')), false, 'the bomb entry was not started');
    await s.sweep();
    assert.deepEqual(await readdir(shm), [], 'nothing left on the tmpfs');
  });

  it('many small entries count too (per-entry cost), not only content bytes', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const s = new ScratchSpace({
      diskDir: join(state, 'entries', 'scratch'),
      memParent: shm,
      recordFile: join(state, 'entries', 'scratch-mem'),
      memBudget: () => 256 << 10,
    });
    const tree = await s.make('image-tree', 4096);
    const entries: Entry[] = [];
    for (let i = 0; i < 2000; i++) entries.push({ name: `d${i}/`, type: 'directory' });
    await assert.rejects(
      applyLayer(Readable.from(await tarOf(entries)), { root: tree, chownOnDisk: isRoot, label: 'many', ...LIMITS }, new RootfsLedger()),
      TreeOverBudget,
    );
    assert.ok((await readdir(tree)).length < 2000);
    await s.sweep();
    assert.deepEqual(await readdir(shm), []);
  });

  it('a pull whose layer inflates past the memory budget unpacks again on disk; nothing stays on the tmpfs', async (t) => {
    if (!shm) return t.skip('no /dev/shm on this host');
    const bomb = await buildLayer(
      [
        { type: 'file', path: 'etc/os-release', content: 'ID=bomb\n' },
        { type: 'file', path: 'bomb', content: Buffer.alloc(BOMB) },
      ],
      'gzip',
    );
    const second = await buildLayer([{ type: 'file', path: 'etc/after', content: 'upper\n' }], 'gzip');
    const img = buildImage({ layers: [bomb, second] });
    const registry = await startFakeRegistry({ routes: imageRoutes('test/bomb', 'latest', img) });
    try {
      const s = new ScratchSpace({
        diskDir: join(state, 'pull', 'scratch'),
        memParent: shm,
        recordFile: join(state, 'pull', 'scratch-mem'),
        memBudget: () => BUDGET,
      });
      const cache = new BlobCache(join(state, 'pull', 'blobs'));
      const client = new RegistryClient(parseReference(`${registry.host}/test/bomb:latest`), {});
      const trees: string[] = [];
      let usedAtFallback: number | undefined;
      const ctx = fakeCtx();
      const flat = await fetchAndFlatten(
        client,
        cache,
        {
          placeTree: async (estimate) => {
            // Asked again: the first (memory) tree is still there, as the overflow left it.
            if (trees.length === 1) usedAtFallback = await allocatedBytes(trees[0] as string);
            const tree = await s.make('image-tree', estimate);
            trees.push(tree);
            return tree;
          },
          runner: new ProcessRunner(),
          chownOnDisk: isRoot,
          platform: { os: 'linux', architecture: 'amd64' },
          maxBytes: 1 << 30,
          maxEntries: 1000,
        },
        ctx,
      );
      assert.equal(trees.length, 2, 'a memory tree, then one on disk');
      assert.ok((trees[0] as string).startsWith(`${shm}/`));
      assert.ok(flat.root.startsWith(join(state, 'pull', 'scratch')), flat.root);
      assert.ok(usedAtFallback !== undefined && usedAtFallback <= BUDGET, `the memory tree held ${usedAtFallback} bytes, over its ${BUDGET} budget`);
      assert.equal(existsSync(trees[0] as string), false, 'the memory tree was removed');
      assert.equal((await stat(join(flat.root, 'bomb'))).size, BOMB, 'the disk tree is whole');
      assert.equal(await readFile(join(flat.root, 'etc/after'), 'utf8'), 'upper\n');
      assert.equal(flat.ledger.bytes, BOMB + 'ID=bomb\n'.length + 'upper\n'.length, 'the ledger counts the disk tree only once');
      assert.ok(ctx.logs.some((l) => /unpacking again on disk/.test(l)));
      const memDir = s.memoryDir as string;
      assert.deepEqual(await readdir(memDir), [], 'nothing of the pull is left on the tmpfs');
      await s.sweep();
      assert.deepEqual(await readdir(shm), []);
    } finally {
      await registry.stop();
    }
  });
});
