import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { downloadVerified } from '../../src/archive/download.js';
import { serveOnLoopback } from '../helpers/http.js';

const BODY = Buffer.from('x'.repeat(100_000));
const SHA = createHash('sha256').update(BODY).digest('hex');
let http: Awaited<ReturnType<typeof serveOnLoopback>>;
let base: string;
let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dl-'));
  http = await serveOnLoopback((req, res) => {
    if (req.url === '/ok') res.writeHead(200, { 'content-length': BODY.length }).end(BODY);
    else if (req.url === '/chunked') {
      res.writeHead(200);
      res.write(BODY.subarray(0, 50_000));
      setTimeout(() => res.end(BODY.subarray(50_000)), 20);
    } else if (req.url === '/boom') res.writeHead(500, 'Internal Server Error').end();
    else res.writeHead(404).end();
  });
  base = http.base;
});
after(async () => {
  await http.close();
  await rm(dir, { recursive: true, force: true });
});

const noPartials = async () =>
  assert.deepEqual(
    (await readdir(dir)).filter((f) => f.includes('partial')),
    [],
  );

test('verified download: content, hash, progress, atomic publish', async () => {
  const seen: number[] = [];
  const r = await downloadVerified({
    url: `${base}/ok`,
    sha256: SHA.toUpperCase(),
    maxBytes: 1 << 20,
    dest: join(dir, 'ok'),
    onProgress: (b, t) => {
      assert.equal(t, BODY.length);
      seen.push(b);
    },
  });
  assert.deepEqual(r, { path: join(dir, 'ok'), sha256: SHA, bytes: BODY.length });
  assert.ok((await readFile(join(dir, 'ok'))).equals(BODY));
  assert.equal(seen.at(-1), BODY.length);
  await noPartials();
  const unverified = await downloadVerified({ url: `${base}/chunked`, maxBytes: 1 << 20, dest: join(dir, 'chunked') });
  assert.equal(unverified.sha256, SHA);
});

test('sha256 mismatch: rejected_content naming both hashes; nothing left', async () => {
  await assert.rejects(downloadVerified({ url: `${base}/ok`, sha256: 'f'.repeat(64), maxBytes: 1 << 20, dest: join(dir, 'bad') }), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'rejected_content');
    assert.match(e.message, new RegExp(`checksum mismatch for ${base}/ok: expected sha256 f{64}, got ${SHA}`));
    return true;
  });
  assert.equal((await readdir(dir)).includes('bad'), false);
  await noPartials();
});

test('HTTP errors: upstream_failed with URL and status; size limit (announced or streamed)', async () => {
  await assert.rejects(
    downloadVerified({ url: `${base}/boom`, maxBytes: 1 << 20, dest: join(dir, 'boom') }),
    (e: unknown) => e instanceof BangerError && e.code === 'upstream_failed' && e.message.includes(`${base}/boom`) && /HTTP 500/.test(e.message),
  );
  await assert.rejects(downloadVerified({ url: `${base}/missing`, maxBytes: 1 << 20, dest: join(dir, 'm') }), /HTTP 404/);
  await assert.rejects(
    downloadVerified({ url: `${base}/ok`, maxBytes: 1000, dest: join(dir, 'big') }),
    (e: unknown) => e instanceof BangerError && e.code === 'rejected_content' && /limit of 1000/.test(e.message),
  );
  await assert.rejects(
    downloadVerified({ url: `${base}/chunked`, maxBytes: 60_000, dest: join(dir, 'big2') }),
    (e: unknown) => e instanceof BangerError && e.code === 'rejected_content' && /limit of 60000/.test(e.message),
  );
  await assert.rejects(
    downloadVerified({ url: 'http://127.0.0.1:1/x', maxBytes: 10, dest: join(dir, 'refused') }),
    (e: unknown) => e instanceof BangerError && e.code === 'upstream_failed',
  );
  await assert.rejects(downloadVerified({ url: 'ftp://127.0.0.1/x', maxBytes: 10, dest: join(dir, 'ftp') }), /unsupported URL scheme/);
  assert.deepEqual((await readdir(dir)).sort(), ['chunked', 'ok']);
});

test('cancellation: cancelled, nothing left', async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(
    downloadVerified({ url: `${base}/ok`, maxBytes: 1 << 20, dest: join(dir, 'c'), signal: ac.signal }),
    (e: unknown) => e instanceof BangerError && e.code === 'cancelled',
  );
  await noPartials();
});
