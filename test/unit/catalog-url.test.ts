import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { insecureUrlProblem, isLoopbackHost } from '../../src/archive/download.js';
import { readCatalogSource } from '../../src/catalog/source.js';
import { serveOnLoopback } from '../helpers/http.js';

/**
 * Issue #9, 13 (catalogs over plain http): a catalog decides what is downloaded and booted, so it
 * is read only over https, from a file, or over http on loopback, and a redirect cannot take it
 * elsewhere. Anything that could reach a non-loopback address runs in a child process inside a
 * fresh network namespace (only `lo`), so a missing check shows up as a network error there and
 * nothing ever leaves the host.
 */

const CATALOG = JSON.stringify({ kernels: [] });
let dir: string;
let http: Awaited<ReturnType<typeof serveOnLoopback>>;
const hits: string[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'caturl-'));
  http = await serveOnLoopback((req, res) => {
    hits.push(req.url ?? '');
    if (req.url === '/cat.json') res.writeHead(200).end(CATALOG);
    else res.writeHead(404).end();
  });
});
after(async () => {
  await http.close();
  await rm(dir, { recursive: true, force: true });
});

test('which URLs a catalog may come from', () => {
  for (const ok of ['https://example.org/c.json', 'http://127.0.0.1:8080/c.json', 'http://127.1.2.3/c', 'http://localhost/c', 'http://[::1]:9/c']) {
    assert.equal(insecureUrlProblem(ok), undefined, ok);
  }
  for (const bad of [
    'http://example.org/c.json',
    'http://10.0.0.1/c',
    'http://127.0.0.1.evil.example/c',
    'http://[::ffff:7f00:1]/c',
    'ftp://example.org/c',
    'gopher://x/',
  ]) {
    assert.ok(insecureUrlProblem(bad), bad);
  }
  assert.equal(isLoopbackHost('LOCALHOST'), true);
  assert.equal(isLoopbackHost('128.0.0.1'), false);
});

test('loopback http and file catalogs are read (control)', async () => {
  const viaHttp = await readCatalogSource(`${http.base}/cat.json`, dir, 'kernel_catalogs');
  assert.equal(viaHttp.text, CATALOG);
  await writeFile(join(dir, 'cat.json'), CATALOG);
  assert.equal((await readCatalogSource(pathToFileURL(join(dir, 'cat.json')).href, '/', 'kernel_catalogs')).text, CATALOG);
  assert.equal((await readCatalogSource('cat.json', dir, 'image_catalogs')).text, CATALOG);
});

test('plain http to another host, directly or through a redirect, is refused before any request', async (t) => {
  if (spawnSync('unshare', ['-n', 'true']).status !== 0) return t.skip('cannot create a network namespace (unshare -n)');
  const moduleUrl = new URL('../../src/catalog/source.js', import.meta.url).href;
  // Runs in a new network namespace: 192.0.2.1 (TEST-NET-1) is unreachable there by construction.
  const child = `
    import { createServer } from 'node:http';
    const { readCatalogSource } = await import(${JSON.stringify(moduleUrl)});
    const hits = [];
    const server = createServer((req, res) => {
      hits.push(req.url);
      if (req.url === '/redirect') res.writeHead(302, { location: 'http://192.0.2.1/cat.json' }).end();
      else res.writeHead(200).end('{"kernels":[]}');
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const base = 'http://127.0.0.1:' + server.address().port;
    const out = {};
    for (const [k, url] of [['direct', 'http://192.0.2.1/cat.json'], ['redirect', base + '/redirect'], ['loopback', base + '/ok']]) {
      try { out[k] = { text: (await readCatalogSource(url, '/', 'image_catalogs')).text }; }
      catch (e) { out[k] = { code: e.code, message: e.message, fix: e.fix }; }
    }
    out.hits = hits;
    server.close();
    process.stdout.write(JSON.stringify(out));
  `;
  const r = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up && exec "$0" --input-type=module -e "$1"', process.execPath, child], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.direct.code, 'invalid_config', JSON.stringify(out.direct));
  assert.match(out.direct.message, /image catalog http:\/\/192\.0\.2\.1\/cat\.json uses plain http to a host that is not loopback/);
  assert.match(out.direct.fix, /https/);
  assert.equal(out.redirect.code, 'invalid_config', JSON.stringify(out.redirect));
  assert.match(out.redirect.message, /\(a redirect from http:\/\/127\.0\.0\.1:\d+\/redirect\) uses plain http/);
  assert.deepEqual(out.loopback, { text: '{"kernels":[]}' });
  assert.deepEqual(out.hits, ['/redirect', '/ok'], 'the redirect target was never requested');
});
