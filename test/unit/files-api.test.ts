import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import * as tar from 'tar-stream';
import { BangerError } from '../../src/api/errors.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { type FilesDaemon, startFilesDaemon } from '../helpers/files-daemon.js';
import { tarOf } from '../helpers/tar.js';

let d: FilesDaemon;
let g: string; // the fake guest's tree (a host dir)
const fake = new HostFakeGuest();

/** A guest whose reads fail after some bytes, as a guest that dies mid-transfer. */
class DyingGuest extends HostFakeGuest {
  override async readFile() {
    const stream = new PassThrough();
    stream.end(Buffer.alloc(100_000, 7));
    // The guest's verdict comes after its last byte, as the real channel's does.
    const done = once(stream, 'end').then(() => Promise.reject(new Error('agent: read: EIO: input/output error')));
    return { stream: stream as Readable, done };
  }
}

/**
 * A FAKE guest whose tar fails after some bytes with the error text the test sets: what a hostile
 * (or merely non-English) guest can put in the verdict that travels in the HTTP trailer.
 */
class SayingGuest extends HostFakeGuest {
  error = new Error('');
  override async tarOut() {
    const stream = new PassThrough();
    stream.end(Buffer.alloc(10_000, 1));
    const err = this.error;
    const done = once(stream, 'end').then(() => Promise.reject(err));
    return { stream: stream as Readable, done };
  }
}
const saying = new SayingGuest();

before(async () => {
  d = await startFilesDaemon({ dev: fake, dying: new DyingGuest(), saying });
  g = join(d.dir, 'guest');
  await mkdir(g);
});
after(() => d.close());

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
async function drain(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function rejects(p: Promise<unknown>, code: string, re?: RegExp): Promise<BangerError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof BangerError, `not a BangerError: ${e}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected a ${code} error`);
}

test('writeFile streams bytes into a new file with its mode (mkdirs), readFile streams them back with size and mode', async () => {
  const data = randomBytes(5 * 1024 * 1024 + 17);
  const path = join(g, 'new/dir/blob.bin');
  // Fed in small pieces, as a pipe would: the body is streamed, not one buffer.
  const source = Readable.from(
    (function* () {
      for (let i = 0; i < data.length; i += 65_536) yield data.subarray(i, i + 65_536);
    })(),
  );
  const w = await d.client.writeFile('dev', path, source, { mode: 0o640, mkdirs: true });
  assert.equal(w.size, data.length);
  assert.equal(sha(await readFile(path)), sha(data));
  assert.equal((await stat(path)).mode & 0o7777, 0o640);

  const r = await d.client.readFile('dev', path);
  const got = await drain(r.stream);
  assert.equal(sha(got), sha(data));
  assert.deepEqual(await r.done, { ok: true, size: data.length, mode: 0o640 });
});

test('writeFile without mkdirs into a missing directory fails and leaves nothing', async () => {
  const e = await rejects(d.client.writeFile('dev', join(g, 'absent/x'), Readable.from([Buffer.from('x')])), 'not_found');
  assert.match(e.message, /absent\/x/);
  await assert.rejects(stat(join(g, 'absent')));
});

test('stat, list, mkdir, move and remove reach the guest', async () => {
  await writeFile(join(g, 'a.txt'), 'hello');
  await symlink('a.txt', join(g, 'link'));
  const s = await d.client.statFile('dev', join(g, 'a.txt'));
  assert.equal(s.type, 'file');
  assert.equal(s.size, 5);
  const l = await d.client.statFile('dev', join(g, 'link'));
  assert.deepEqual([l.type, l.linkTarget], ['symlink', 'a.txt']);

  await d.client.makeDir('dev', { path: join(g, 'p/q/r'), parents: true, mode: 0o750 });
  assert.ok((await stat(join(g, 'p/q/r'))).isDirectory());
  await d.client.moveFile('dev', { from: join(g, 'a.txt'), to: join(g, 'p/b.txt') });
  assert.equal(await readFile(join(g, 'p/b.txt'), 'utf8'), 'hello');

  const list = await d.client.listFiles('dev', join(g, 'p'));
  assert.deepEqual(list.entries.map((e) => `${e.name}:${e.type}`).sort(), ['b.txt:file', 'q:dir']);
  assert.equal(list.truncated, false);

  await rejects(d.client.removeFile('dev', join(g, 'p')), 'bad_request'); // a directory, not recursive
  await d.client.removeFile('dev', join(g, 'p'), { recursive: true });
  await assert.rejects(stat(join(g, 'p')));
});

test('guest paths must be absolute, without NUL or control characters; "/" is never removed', async () => {
  await rejects(d.client.statFile('dev', 'relative/x'), 'bad_request', /not absolute/);
  await rejects(d.client.statFile('dev', '/tmp/a\nb'), 'bad_request', /control character/);
  await rejects(d.client.statFile('dev', `/${'a'.repeat(5000)}`), 'bad_request', /longer than/);
  await rejects(d.client.removeFile('dev', '/', { recursive: true }), 'bad_request', /root/);
  await rejects(d.client.makeDir('dev', { path: 'x' }), 'bad_request');
  await rejects(d.client.moveFile('dev', { from: '/a', to: 'b' }), 'bad_request');
  await rejects(d.client.writeFile('dev', 'rel', Readable.from([Buffer.from('x')])), 'bad_request');
});

test('an unknown VM is not_found, a missing guest file is not_found (before any byte)', async () => {
  await rejects(d.client.statFile('nope', '/root'), 'not_found', /nope/);
  await rejects(d.client.readFile('dev', join(g, 'missing')), 'not_found');
});

test('a download the guest fails after some bytes ends with the error in the trailer: done rejects', async () => {
  const r = await d.client.readFile('dying', '/root/x');
  const got = await drain(r.stream);
  assert.equal(got.length, 100_000);
  await rejects(r.done, 'upstream_failed', /EIO/);
});

test('archiveOut streams the guest tar of a path; archiveIn unpacks a tar into a guest directory', async () => {
  await mkdir(join(g, 'tree/sub'), { recursive: true });
  await writeFile(join(g, 'tree/sub/f'), 'content');
  const out = await d.client.archiveOut('dev', join(g, 'tree'));
  const names: string[] = [];
  const ex = tar.extract();
  const reading = (async () => {
    for await (const e of ex) {
      names.push(e.header.name.replace(/\/$/, ''));
      e.resume();
    }
  })();
  out.stream.pipe(ex);
  await reading;
  await out.done;
  assert.deepEqual(names.sort(), ['tree', 'tree/sub', 'tree/sub/f']);

  const body = await tarOf([
    { name: 'x', type: 'directory', mode: 0o700 },
    { name: 'x/run.sh', body: '#!/bin/sh\n', mode: 0o755 },
  ]);
  await d.client.archiveIn('dev', join(g, 'unpacked'), Readable.from([body]));
  assert.equal(await readFile(join(g, 'unpacked/x/run.sh'), 'utf8'), '#!/bin/sh\n');
  assert.equal((await stat(join(g, 'unpacked/x/run.sh'))).mode & 0o777, 0o755);
  assert.equal((await stat(join(g, 'unpacked/x'))).mode & 0o777, 0o700);
});

test('an upload the daemon refuses before reading it (unknown VM) fails at once and stops the producer', async () => {
  let produced = 0;
  let stopped = false;
  const endless = new Readable({
    read() {
      produced += 65_536;
      this.push(Buffer.alloc(65_536));
    },
    destroy(err, cb) {
      stopped = true;
      cb(err);
    },
  });
  await rejects(d.client.writeFile('nope', '/root/x', endless), 'not_found', /nope/);
  assert.ok(stopped, 'the endless body was destroyed');
  assert.ok(produced < 1024 ** 3, 'and never read whole');
});

test('a guest error with characters above U+00FF and control bytes reaches the client intact (escaped in the trailer), not as "cut short"', async () => {
  const text = 'tar: /root/données/世界 😀: Permission denied\u2028next\x7f\x01\x1b[2J\u202eend\ttab\nline "quoted" \\ back';
  saying.error = new BangerError('upstream_failed', text, { fix: 'vérifier les droits — 権限を確認' });
  const r = await d.client.archiveOut('saying', '/root/x');
  assert.equal((await drain(r.stream)).length, 10_000);
  const e = await rejects(r.done, 'upstream_failed');
  assert.equal(e.message, text);
  assert.equal(e.fix, 'vérifier les droits — 権限を確認');
});

test("a guest error longer than a header can carry is clipped, and still arrives as the guest's error", async () => {
  const long = `${'世'.repeat(20_000)}`;
  saying.error = new BangerError('precondition_failed', long, { fix: 'é'.repeat(10_000) });
  const r = await d.client.archiveOut('saying', '/root/x');
  await drain(r.stream);
  const e = await rejects(r.done, 'precondition_failed');
  assert.ok(long.startsWith(e.message.replace(/…$/, '')), 'a prefix of the guest message');
  assert.ok(e.message.length > 1000 && e.message.length <= 1501, `clipped to ${e.message.length}`);
  assert.ok((e.fix ?? '').length > 100 && (e.fix ?? '').length <= 501);
});
