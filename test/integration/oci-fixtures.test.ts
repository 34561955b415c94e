// Sanity checks of the OCI test helpers against the real distribution registry (docker-registry)
// and the scripted fake: if these fail, the image-pull tests built on them mean nothing.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import {
  blobResponse,
  buildImage,
  buildLayer,
  buildLayerFromTar,
  buildTar,
  imageRoutes,
  MEDIA,
  pushImage,
  pushIndex,
  pushRaw,
  sha256,
  startFakeRegistry,
} from '../helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../helpers/oci-registry.js';

const ACCEPT_ALL = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');

async function tarEntries(
  raw: Buffer,
): Promise<Array<{ name: string; type: string; linkname: string | null; size: number; uid: number; mode: number; devmajor: number }>> {
  const ex = tar.extract();
  const out: Array<{ name: string; type: string; linkname: string | null; size: number; uid: number; mode: number; devmajor: number }> = [];
  const done = (async () => {
    for await (const e of ex) {
      const h = e.header;
      out.push({ name: h.name, type: h.type, linkname: h.linkname ?? null, size: h.size, uid: h.uid, mode: h.mode, devmajor: h.devmajor });
      e.resume();
    }
  })();
  ex.end(raw);
  await done;
  return out;
}

function unzstd(blob: Buffer): Buffer {
  const r = spawnSync('zstd', ['-dcq'], { input: blob, maxBuffer: 1024 ** 3 });
  assert.equal(r.status, 0, r.stderr?.toString());
  return r.stdout;
}

describe('layer builders', () => {
  test('entries of every kind, and the digests', async () => {
    const entries = [
      { type: 'dir', path: 'etc', mode: 0o755, uid: 0, gid: 0 },
      { type: 'file', path: 'etc/hello', content: 'hi\n', mode: 0o600, uid: 1000, gid: 1000 },
      { type: 'symlink', path: 'etc/link', target: 'hello' },
      { type: 'hardlink', path: 'etc/hard', target: 'etc/hello' },
      { type: 'whiteout', path: 'usr/share/doc' },
      { type: 'opaque', dir: 'var/cache' },
      { type: 'raw', header: { name: '../escape', type: 'file', size: 1 }, content: 'x' },
      { type: 'raw', header: { name: '/abs', type: 'file', size: 0 }, content: '' },
      { type: 'raw', header: { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 } },
    ] as const;
    const gz = await buildLayer([...entries], 'gzip');
    const zs = await buildLayer([...entries], 'zstd');
    const none = await buildLayer([...entries], 'none');
    const dk = await buildLayer([...entries], 'gzip', { docker: true });
    assert.equal(gz.mediaType, MEDIA.ociLayerGzip);
    assert.equal(zs.mediaType, MEDIA.ociLayerZstd);
    assert.equal(none.mediaType, MEDIA.ociLayer);
    assert.equal(dk.mediaType, MEDIA.dockerLayerGzip);
    // Deterministic: same entries, same tar, so the same diff ID whatever the compression.
    assert.equal(gz.diffId, zs.diffId);
    assert.equal(gz.diffId, none.digest);
    assert.equal(gz.digest, sha256(gz.blob));
    assert.equal(sha256(gunzipSync(gz.blob)), gz.diffId);
    assert.equal(sha256(unzstd(zs.blob)), zs.diffId);
    assert.deepEqual(zs.blob.subarray(0, 4), Buffer.from([0x28, 0xb5, 0x2f, 0xfd]));

    const got = await tarEntries(none.blob);
    assert.deepEqual(
      got.map((e) => [e.name, e.type]),
      [
        ['etc', 'directory'],
        ['etc/hello', 'file'],
        ['etc/link', 'symlink'],
        ['etc/hard', 'link'],
        ['usr/share/.wh.doc', 'file'],
        ['var/cache/.wh..wh..opq', 'file'],
        ['../escape', 'file'],
        ['/abs', 'file'],
        ['dev/null', 'character-device'],
      ],
    );
    assert.equal(got[1]?.uid, 1000);
    assert.equal(got[1]?.mode, 0o600);
    assert.equal(got[2]?.linkname, 'hello');
    assert.equal(got[3]?.linkname, 'etc/hello');
    assert.equal(got[8]?.devmajor, 1);
  });

  test('buildLayerFromTar streams a tarball to a temp file, with both digests', async () => {
    const dir = await mkdtemp('/tmp/bg-oci-t-');
    try {
      const raw = await buildTar([{ type: 'file', path: 'big', content: Buffer.alloc(3 * 1024 * 1024, 7) }]);
      await writeFile(join(dir, 'l.tar'), raw);
      for (const c of ['gzip', 'zstd', 'none'] as const) {
        const l = await buildLayerFromTar(join(dir, 'l.tar'), c);
        try {
          const blob = await readFile(l.path);
          assert.equal(l.size, blob.length);
          assert.equal(l.digest, sha256(blob));
          assert.equal(l.diffId, sha256(raw));
          const back = c === 'gzip' ? gunzipSync(blob) : c === 'zstd' ? unzstd(blob) : blob;
          assert.ok(back.equals(raw), c);
        } finally {
          await l.cleanup();
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('against docker-registry', () => {
  let reg: LocalRegistry;
  before(async () => {
    reg = await startRegistry();
  });
  after(async () => {
    await reg?.stop();
  });

  test('/v2/ answers with the API version header', async () => {
    const r = await fetch(`${reg.url}/v2/`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('docker-distribution-api-version'), 'registry/2.0');
    assert.match(reg.host, /^127\.0\.0\.1:\d+$/);
  });

  test('a 2-layer gzip+zstd OCI image round-trips', async () => {
    const l1 = await buildLayer([{ type: 'file', path: 'a.txt', content: 'layer one' }], 'gzip');
    const l2 = await buildLayer(
      [
        { type: 'file', path: 'b.txt', content: 'layer two' },
        { type: 'whiteout', path: 'a.txt' },
      ],
      'zstd',
    );
    const pushed = await pushImage(reg.url, 'test/two', 'v1', {
      layers: [l1, l2],
      config: { Env: ['PATH=/usr/bin:/bin', 'FOO=bar'], Cmd: ['/bin/sh'], Entrypoint: ['/init'], WorkingDir: '/srv', User: '1000:1000' },
      architecture: 'amd64',
      os: 'linux',
      manifestFormat: 'oci',
    });
    const m = await fetch(`${reg.url}/v2/test/two/manifests/v1`, { headers: { Accept: ACCEPT_ALL } });
    assert.equal(m.status, 200);
    assert.equal(m.headers.get('content-type'), MEDIA.ociManifest);
    assert.equal(m.headers.get('docker-content-digest'), pushed.manifestDigest);
    const body = Buffer.from(await m.arrayBuffer());
    assert.equal(sha256(body), pushed.manifestDigest);
    const manifest = JSON.parse(body.toString()) as {
      config: { digest: string; mediaType: string };
      layers: Array<{ digest: string; mediaType: string; size: number }>;
    };
    assert.equal(manifest.config.digest, pushed.configDigest);
    assert.equal(manifest.config.mediaType, MEDIA.ociConfig);
    assert.deepEqual(
      manifest.layers.map((l) => [l.mediaType, l.digest, l.size]),
      [
        [MEDIA.ociLayerGzip, l1.digest, l1.size],
        [MEDIA.ociLayerZstd, l2.digest, l2.size],
      ],
    );
    // By digest too.
    const byDigest = await fetch(`${reg.url}/v2/test/two/manifests/${pushed.manifestDigest}`, { headers: { Accept: ACCEPT_ALL } });
    assert.equal(sha256(Buffer.from(await byDigest.arrayBuffer())), pushed.manifestDigest);

    const cfg = await fetch(`${reg.url}/v2/test/two/blobs/${pushed.configDigest}`);
    const cfgBytes = Buffer.from(await cfg.arrayBuffer());
    assert.equal(sha256(cfgBytes), pushed.configDigest);
    const config = JSON.parse(cfgBytes.toString()) as {
      architecture: string;
      os: string;
      config: { Env: string[]; User: string };
      rootfs: { diff_ids: string[] };
    };
    assert.equal(config.architecture, 'amd64');
    assert.equal(config.os, 'linux');
    assert.deepEqual(config.config.Env, ['PATH=/usr/bin:/bin', 'FOO=bar']);
    assert.equal(config.config.User, '1000:1000');
    assert.deepEqual(config.rootfs.diff_ids, [l1.diffId, l2.diffId]);

    for (const l of [l1, l2]) {
      const b = await fetch(`${reg.url}/v2/test/two/blobs/${l.digest}`);
      assert.equal(b.status, 200);
      assert.equal(b.headers.get('docker-content-digest'), l.digest);
      assert.equal(b.headers.get('content-length'), String(l.size));
      assert.ok(Buffer.from(await b.arrayBuffer()).equals(l.blob));
      const h = await fetch(`${reg.url}/v2/test/two/blobs/${l.digest}`, { method: 'HEAD' });
      assert.equal(h.status, 200);
      assert.equal(h.headers.get('content-length'), String(l.size));
    }
    // Pushing again skips existing blobs (HEAD) and yields the same digest.
    assert.equal(
      (
        await pushImage(reg.url, 'test/two', 'v1', {
          layers: [l1, l2],
          config: { Env: ['PATH=/usr/bin:/bin', 'FOO=bar'], Cmd: ['/bin/sh'], Entrypoint: ['/init'], WorkingDir: '/srv', User: '1000:1000' },
        })
      ).manifestDigest,
      pushed.manifestDigest,
    );
    const missing = await fetch(`${reg.url}/v2/test/two/blobs/sha256:${'0'.repeat(64)}`);
    assert.equal(missing.status, 404);
  });

  test('a Docker v2 image with a file-backed layer', async () => {
    const dir = await mkdtemp('/tmp/bg-oci-t-');
    try {
      await writeFile(join(dir, 'l.tar'), await buildTar([{ type: 'file', path: 'x', content: Buffer.alloc(1024 * 1024, 1) }]));
      const l = await buildLayerFromTar(join(dir, 'l.tar'), 'gzip', { docker: true });
      try {
        const pushed = await pushImage(reg.url, 'test/docker', 'latest', { layers: [l], manifestFormat: 'docker' });
        const m = await fetch(`${reg.url}/v2/test/docker/manifests/latest`, { headers: { Accept: ACCEPT_ALL } });
        assert.equal(m.headers.get('content-type'), MEDIA.dockerManifest);
        const manifest = JSON.parse(await m.text()) as { config: { mediaType: string }; layers: Array<{ mediaType: string; digest: string }> };
        assert.equal(manifest.config.mediaType, MEDIA.dockerConfig);
        assert.equal(manifest.layers[0]?.mediaType, MEDIA.dockerLayerGzip);
        assert.equal(m.headers.get('docker-content-digest'), pushed.manifestDigest);
        const b = await fetch(`${reg.url}/v2/test/docker/blobs/${l.digest}`);
        assert.equal(sha256(Buffer.from(await b.arrayBuffer())), l.digest);
      } finally {
        await l.cleanup();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  for (const format of ['oci', 'docker'] as const) {
    test(`a multi-arch index (${format})`, async () => {
      const repo = `test/multi-${format}`;
      const amd = await buildLayer([{ type: 'file', path: 'arch', content: 'amd64' }], 'gzip', { docker: format === 'docker' });
      const arm = await buildLayer([{ type: 'file', path: 'arch', content: 'arm64' }], 'gzip', { docker: format === 'docker' });
      const a = await pushImage(reg.url, repo, null, { layers: [amd], architecture: 'amd64', os: 'linux', manifestFormat: format });
      const b = await pushImage(reg.url, repo, null, { layers: [arm], architecture: 'arm64', variant: 'v8', os: 'linux', manifestFormat: format });
      const idx = await pushIndex(
        reg.url,
        repo,
        'latest',
        [
          { manifestDigest: b.manifestDigest, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
          { manifestDigest: a.manifestDigest, platform: { os: 'linux', architecture: 'amd64' } },
        ],
        format,
      );
      const r = await fetch(`${reg.url}/v2/${repo}/manifests/latest`, { headers: { Accept: ACCEPT_ALL } });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-type'), format === 'oci' ? MEDIA.ociIndex : MEDIA.dockerList);
      assert.equal(r.headers.get('docker-content-digest'), idx.indexDigest);
      const index = JSON.parse(await r.text()) as { manifests: Array<{ digest: string; mediaType: string; size: number; platform: { architecture: string } }> };
      assert.deepEqual(
        index.manifests.map((m) => [m.platform.architecture, m.digest, m.mediaType]),
        [
          ['arm64', b.manifestDigest, b.manifestMediaType],
          ['amd64', a.manifestDigest, a.manifestMediaType],
        ],
      );
      assert.equal(index.manifests[1]?.size, a.manifestSize);
      const plat = await fetch(`${reg.url}/v2/${repo}/manifests/${a.manifestDigest}`, { headers: { Accept: ACCEPT_ALL } });
      assert.equal(sha256(Buffer.from(await plat.arrayBuffer())), a.manifestDigest);
    });
  }

  test('pushRaw reports refusals instead of throwing', async () => {
    // A manifest whose layer the registry does not have: distribution refuses it.
    const img = buildImage({ layers: [{ blob: Buffer.from('x'), digest: sha256('nope'), diffId: sha256('nope'), mediaType: MEDIA.ociLayerGzip, size: 1 }] });
    const r = await pushRaw(reg.url, 'test/raw', 'bad', img.manifest, img.manifestMediaType);
    assert.equal(r.status, 400);
    assert.match(r.body.toString(), /MANIFEST_BLOB_UNKNOWN|BLOB_UNKNOWN/);
  });
});

describe('fake registry', () => {
  test('serves an image, truncated blobs and wrong digests', async () => {
    const layer = await buildLayer([{ type: 'file', path: 'f', content: 'payload' }], 'gzip');
    const img = buildImage({ layers: [layer] });
    const fake = await startFakeRegistry({
      routes: {
        ...imageRoutes('x/y', 'latest', img),
        '/v2/x/y/blobs/sha256:truncated': { ...blobResponse(Buffer.alloc(1000, 1)), truncateAt: 100 },
        '/v2/x/y/blobs/sha256:wrong': blobResponse('not what the digest says', layer.digest),
      },
    });
    try {
      const m = await fetch(`${fake.url}/v2/x/y/manifests/latest`, { headers: { Accept: ACCEPT_ALL } });
      assert.equal(m.headers.get('content-type'), MEDIA.ociManifest);
      assert.equal(sha256(Buffer.from(await m.arrayBuffer())), img.manifestDigest);
      const b = await fetch(`${fake.url}/v2/x/y/blobs/${layer.digest}`);
      assert.ok(Buffer.from(await b.arrayBuffer()).equals(layer.blob));
      const h = await fetch(`${fake.url}/v2/x/y/blobs/${layer.digest}`, { method: 'HEAD' });
      assert.equal(h.headers.get('content-length'), String(layer.size));
      const t = await fetch(`${fake.url}/v2/x/y/blobs/sha256:truncated`);
      assert.equal(t.headers.get('content-length'), '1000');
      await assert.rejects(t.arrayBuffer());
      const w = await fetch(`${fake.url}/v2/x/y/blobs/sha256:wrong`);
      assert.notEqual(sha256(Buffer.from(await w.arrayBuffer())), layer.digest);
      assert.equal((await fetch(`${fake.url}/v2/x/y/blobs/sha256:other`)).status, 404);
    } finally {
      await fake.stop();
    }
  });

  test('the Bearer token flow, with Basic credentials on the token endpoint', async () => {
    const fake = await startFakeRegistry({
      auth: { token: 'tok-123', basic: { username: 'alice', password: 's3cret' } },
      routes: { '/v2/x/y/manifests/latest': { status: 200, headers: { 'Content-Type': MEDIA.ociManifest }, body: '{}' } },
    });
    try {
      const first = await fetch(`${fake.url}/v2/x/y/manifests/latest`);
      assert.equal(first.status, 401);
      const challenge = first.headers.get('www-authenticate') ?? '';
      assert.equal(challenge, `Bearer realm="${fake.url}/token",service="fake",scope="repository:x/y:pull"`);
      const realm = /realm="([^"]+)"/.exec(challenge)?.[1] ?? '';
      const tokenUrl = `${realm}?service=fake&scope=${encodeURIComponent('repository:x/y:pull')}`;
      assert.equal((await fetch(tokenUrl)).status, 401);
      const basic = `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
      const tok = (await (await fetch(tokenUrl, { headers: { Authorization: basic } })).json()) as { token: string };
      assert.equal(tok.token, 'tok-123');
      const second = await fetch(`${fake.url}/v2/x/y/manifests/latest`, { headers: { Authorization: `Bearer ${tok.token}` } });
      assert.equal(second.status, 200);
      assert.equal(fake.requests.filter((r) => r.path === '/token').length, 2);
      assert.equal(fake.requests.at(-2)?.query.get('scope'), 'repository:x/y:pull');
    } finally {
      await fake.stop();
    }
  });

  test('anonymous token endpoint and handlers', async () => {
    const fake = await startFakeRegistry({
      auth: { token: 'anon', tokenField: 'access_token' },
      routes: { 'GET /v2/x/y/tags/list': (req) => ({ status: 200, body: JSON.stringify({ q: req.query.get('n') }) }) },
    });
    try {
      const tok = (await (await fetch(`${fake.url}/token`)).json()) as { access_token: string };
      assert.equal(tok.access_token, 'anon');
      const r = await fetch(`${fake.url}/v2/x/y/tags/list?n=5`, { headers: { Authorization: 'Bearer anon' } });
      assert.deepEqual(await r.json(), { q: '5' });
    } finally {
      await fake.stop();
    }
  });
});
