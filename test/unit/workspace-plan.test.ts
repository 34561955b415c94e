import assert from 'node:assert/strict';
import { test } from 'node:test';
import { assemblePlan, MAX_PLAN_ENTRIES, parseNameStatus, parseRefListing, parseStageListing, splitZ } from '../../src/daemon/services/workspace-git.js';

const Z = '\0';
const blob = 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391';

test('git listings are parsed from their -z forms, names with spaces, tabs and newlines intact', () => {
  const idx = parseStageListing(`100644 ${blob} 0\ta b.txt${Z}160000 ${blob} 0\tsub${Z}100755 ${blob} 0\tline\nbreak${Z}`);
  assert.deepEqual(
    idx.map((e) => [e.mode, e.stage, e.path]),
    [
      ['100644', 0, 'a b.txt'],
      ['160000', 0, 'sub'],
      ['100755', 0, 'line\nbreak'],
    ],
  );
  assert.deepEqual(parseNameStatus(`M${Z}x${Z}D${Z}tab\there${Z}A${Z}new${Z}`), [
    { status: 'M', path: 'x' },
    { status: 'D', path: 'tab\there' },
    { status: 'A', path: 'new' },
  ]);
  assert.deepEqual(splitZ(`a${Z}${Z}b${Z}`), ['a', 'b']);
  assert.throws(() => parseStageListing(`garbage${Z}`));
});

test('the plan: tracked minus deleted, uncommitted kinds, untracked only on request, gitlinks apart, conflicts once', () => {
  const index = [
    { mode: '100644', object: blob, stage: 0, path: 'kept' },
    { mode: '100644', object: blob, stage: 0, path: 'edited' },
    { mode: '100644', object: blob, stage: 0, path: 'gone' },
    { mode: '100644', object: blob, stage: 0, path: 'staged-new' },
    { mode: '160000', object: blob, stage: 0, path: 'sub' },
    { mode: '100644', object: blob, stage: 1, path: 'conflict' },
    { mode: '100644', object: blob, stage: 2, path: 'conflict' },
  ];
  const changes = [
    { status: 'M', path: 'edited' },
    { status: 'D', path: 'gone' },
    { status: 'A', path: 'staged-new' },
    { status: 'M', path: 'conflict' },
  ];
  const sizes: Record<string, number> = { kept: 1, edited: 10, 'staged-new': 100, conflict: 1000, loose: 10000 };
  const base = {
    top: '/r',
    head: 'h',
    branch: 'main',
    mode: 'full' as const,
    index,
    changes,
    untracked: ['loose', 'nested-repo/'],
    sizeOf: (p: string) => sizes[p] ?? 0,
  };
  const without = assemblePlan({ ...base, includeUntracked: false });
  assert.deepEqual(
    without.plan.entries.map((e) => [e.path, e.kind]),
    [
      ['kept', 'tracked'],
      ['edited', 'modified'],
      ['staged-new', 'added'],
      ['conflict', 'modified'],
    ],
  );
  assert.equal(without.plan.files, 4);
  assert.equal(without.plan.bytes, 1111);
  assert.deepEqual(without.plan.deleted, ['gone']);
  assert.equal(without.plan.untrackedSkipped, 1); // the nested repository is never counted or shipped
  assert.deepEqual(without.overlay.sort(), ['conflict', 'edited', 'staged-new']);
  assert.deepEqual(
    without.gitlinks.map((g) => g.path),
    ['sub'],
  );
  const withUntracked = assemblePlan({ ...base, includeUntracked: true });
  assert.equal(withUntracked.plan.files, 5);
  assert.equal(withUntracked.plan.bytes, 11111);
  assert.equal(withUntracked.plan.untrackedSkipped, 0);
  assert.ok(withUntracked.overlay.includes('loose'));
  assert.ok(!withUntracked.overlay.includes('nested-repo/'));
});

test('a huge repository: the listing is cut, the counts are whole', () => {
  const n = MAX_PLAN_ENTRIES + 5;
  const index = Array.from({ length: n }, (_, i) => ({ mode: '100644', object: blob, stage: 0, path: `f${i}` }));
  const r = assemblePlan({ top: '/r', head: 'h', branch: null, mode: 'shallow', includeUntracked: false, index, changes: [], untracked: [], sizeOf: () => 2 });
  assert.equal(r.plan.entries.length, MAX_PLAN_ENTRIES);
  assert.equal(r.plan.entriesTruncated, true);
  assert.equal(r.plan.files, n);
  assert.equal(r.plan.bytes, 2 * n);
});

test('ref listings: branches and tags with their ids; anything else is an error, never passed to the guest', () => {
  const other = 'b'.repeat(64);
  assert.deepEqual(parseRefListing(`${blob} refs/heads/main\n${other} refs/tags/v1.0\n\n`), [
    [blob, 'refs/heads/main'],
    [other, 'refs/tags/v1.0'],
  ]);
  assert.deepEqual(parseRefListing(''), []);
  for (const bad of [
    `${blob} refs/remotes/origin/x`,
    `${blob} refs/heads/a b`,
    `${blob} refs/heads/a\rcreate refs/heads/evil ${blob}`,
    `xyz refs/heads/a`,
    `${blob}  refs/heads/a`,
  ]) {
    assert.throws(() => parseRefListing(`${bad}\n`), /unexpected git for-each-ref line/, bad);
  }
});
