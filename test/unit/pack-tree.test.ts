import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import * as tar from 'tar-stream';
import { packTree } from '../../src/archive/pack-tree.js';

let dir: string;
before(async () => {
  dir = await mkdtemp('/tmp/bg-pack-');
  await mkdir(join(dir, 'src/sub'), { recursive: true });
  await writeFile(join(dir, 'src/run.sh'), '#!/bin/sh\necho hi\n');
  await chmod(join(dir, 'src/run.sh'), 0o750);
  await writeFile(join(dir, 'src/sub/secret'), 'key');
  await chmod(join(dir, 'src/sub/secret'), 0o600);
  await chmod(join(dir, 'src/sub'), 0o710);
  await symlink('../run.sh', join(dir, 'src/sub/link'));
  await symlink('/etc/passwd', join(dir, 'src/abs'));
  await writeFile(join(dir, 'outside'), 'not in the tree');
  await symlink(join(dir, 'src'), join(dir, 'src-link'));
});
after(() => rm(dir, { recursive: true, force: true }));

interface Entry {
  type: string;
  mode: number;
  uid: number;
  body: string;
  linkname: string | null;
}
async function entriesOf(stream: Readable): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const ex = tar.extract();
  const reading = (async () => {
    for await (const e of ex) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      const h = e.header;
      out.set(h.name, { type: h.type ?? 'file', mode: h.mode ?? 0, uid: h.uid ?? -1, body: Buffer.concat(chunks).toString(), linkname: h.linkname ?? null });
    }
  })();
  await Promise.all([pipeline(stream, ex), reading]);
  return out;
}

test('a directory is archived under the given top name with its modes; links are archived as links, never followed', async () => {
  const got = await entriesOf(packTree(join(dir, 'src'), { name: 'app' }));
  assert.deepEqual([...got.keys()].sort(), ['app/', 'app/abs', 'app/run.sh', 'app/sub/', 'app/sub/link', 'app/sub/secret']);
  assert.equal(got.get('app/run.sh')?.mode, 0o750);
  assert.equal(got.get('app/run.sh')?.body, '#!/bin/sh\necho hi\n');
  assert.equal(got.get('app/sub/')?.mode, 0o710);
  assert.equal(got.get('app/sub/secret')?.mode, 0o600);
  assert.deepEqual([got.get('app/sub/link')?.type, got.get('app/sub/link')?.linkname], ['symlink', '../run.sh']);
  assert.deepEqual([got.get('app/abs')?.type, got.get('app/abs')?.linkname, got.get('app/abs')?.body], ['symlink', '/etc/passwd', '']);
  // Owners are 0:0 unless asked for.
  assert.ok([...got.values()].every((e) => e.uid === 0));
});

test('name "" archives the contents without a top entry; fileMode overrides regular files only; owners on request', async () => {
  const got = await entriesOf(packTree(join(dir, 'src'), { name: '', fileMode: 0o600, owners: true }));
  assert.deepEqual([...got.keys()].sort(), ['abs', 'run.sh', 'sub/', 'sub/link', 'sub/secret']);
  assert.equal(got.get('run.sh')?.mode, 0o600);
  assert.equal(got.get('sub/')?.mode, 0o710);
  assert.equal(got.get('run.sh')?.uid, process.getuid?.());
});

test('a symlinked source is archived as a link unless followTop; a socket inside is skipped and reported', async () => {
  const asLink = await entriesOf(packTree(join(dir, 'src-link'), { name: 'x' }));
  assert.deepEqual([...asLink.keys()], ['x']);
  assert.equal(asLink.get('x')?.type, 'symlink');

  const server = createServer();
  await new Promise<void>((r) => server.listen(join(dir, 'src/sub/sock'), r));
  try {
    const skipped: string[] = [];
    const followed = await entriesOf(packTree(join(dir, 'src-link'), { name: 'x', followTop: true, onSkip: (p, why) => skipped.push(`${p}: ${why}`) }));
    assert.ok(followed.has('x/run.sh'));
    assert.ok(!followed.has('x/sub/sock'));
    assert.deepEqual(skipped, [`${join(dir, 'src-link/sub/sock')}: a socket`]);
  } finally {
    server.close();
  }
});

test('a missing source fails the stream', async () => {
  await assert.rejects(entriesOf(packTree(join(dir, 'nope'), { name: 'x' })), /ENOENT/);
});
