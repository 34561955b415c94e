import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BUILTIN_KERNELS, loadCatalog, loadKernelCatalog, mergeCatalogs, parseCatalog } from '../../src/kernels/catalog.js';
import { serveOnLoopback } from '../helpers/http.js';

const SHA = 'ab'.repeat(32);
const archiveEntry = {
  name: 'fc-6.1',
  distro: 'firecracker-ci',
  arch: 'x86_64',
  version: '6.1.102',
  description: 'Firecracker CI kernel',
  size: 12345,
  source: { kind: 'archive', url: 'https://example.invalid/vmlinux-6.1.tar.zst', sha256: SHA.toUpperCase(), format: 'tar.zst' },
};

let dir: string;
let http: Awaited<ReturnType<typeof serveOnLoopback>>;
let base: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kcat-'));
  http = await serveOnLoopback((req, res) => {
    if (req.url === '/cat.json') res.end(JSON.stringify({ kernels: [archiveEntry] }));
    else res.writeHead(404).end();
  });
  base = http.base;
});
after(async () => {
  await http.close();
  await rm(dir, { recursive: true, force: true });
});

const invalid = (fn: () => unknown, ...res: RegExp[]) =>
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'invalid_config');
    for (const re of res) assert.match(e.message, re);
    return true;
  });

test('the built-in catalog: debian-cloud through the Debian index', () => {
  assert.deepEqual(
    BUILTIN_KERNELS.map((e) => e.name),
    ['debian-cloud'],
  );
  const e = BUILTIN_KERNELS[0];
  assert.deepEqual(e?.source, { kind: 'debian-index', suite: 'bookworm', component: 'main', package: 'linux-image-cloud-amd64' });
  assert.match(e?.description ?? '', /QEMU/);
  assert.match(e?.description ?? '', /Firecracker/);
  // The built-ins pass their own schema.
  assert.equal(parseCatalog(JSON.stringify({ kernels: BUILTIN_KERNELS }), 'builtin').length, 1);
});

test('parseCatalog: valid entries; sha256 lower-cased; description defaults to ""', () => {
  const [a, b] = parseCatalog(
    JSON.stringify({
      kernels: [
        archiveEntry,
        {
          name: 'debian-trixie',
          distro: 'debian-13',
          arch: 'x86_64',
          version: 'latest',
          source: { kind: 'debian-index', suite: 'trixie', component: 'main', package: 'linux-image-cloud-amd64', mirror: 'http://127.0.0.1:9/debian' },
        },
      ],
    }),
    '/x/cat.json',
  );
  assert.equal(a?.source.kind === 'archive' && a.source.sha256, SHA);
  assert.equal(b?.description, '');
  assert.equal(b?.source.kind === 'debian-index' && b.source.mirror, 'http://127.0.0.1:9/debian');
});

test('parseCatalog: errors name the file and the bad field', () => {
  invalid(() => parseCatalog('{ nope', '/x/cat.json'), /\/x\/cat\.json/, /invalid JSON/);
  invalid(
    () => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, source: { ...archiveEntry.source, sha256: 'abc' } }] }), '/x/cat.json'),
    /\/x\/cat\.json/,
    /kernels\[0\] \(fc-6\.1\)\.source\.sha256/,
    /64 hex/,
  );
  invalid(() => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, arch: 'aarch64' }] }), '/x/c.json'), /kernels\[0\] \(fc-6\.1\)\.arch/);
  invalid(() => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, name: 'Bad Name' }] }), '/x/c.json'), /\.name/);
  invalid(() => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, source: { kind: 'rsync' } }] }), '/x/c.json'), /\.source/);
  invalid(() => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, sizee: 1 }] }), '/x/c.json'), /unknown field "sizee"/);
  invalid(
    () => parseCatalog(JSON.stringify({ kernels: [{ ...archiveEntry, source: { ...archiveEntry.source, url: 'ftp://x/y' } }] }), '/x/c.json'),
    /source\.url/,
  );
  invalid(() => parseCatalog(JSON.stringify({ images: [] }), '/x/c.json'), /kernels/);
  invalid(() => parseCatalog(JSON.stringify({ kernels: [archiveEntry, archiveEntry] }), '/x/c.json'), /"fc-6\.1" appears twice/);
});

test('mergeCatalogs: user entries add to and override built-ins by name; origin is kept', () => {
  const override = { ...BUILTIN_KERNELS[0], description: 'mine' } as (typeof BUILTIN_KERNELS)[number];
  const merged = mergeCatalogs(BUILTIN_KERNELS, [
    { origin: '/a.json', entries: [override] },
    { origin: '/b.json', entries: parseCatalog(JSON.stringify({ kernels: [archiveEntry] }), '/b.json') },
  ]);
  assert.deepEqual(
    merged.map((m) => [m.entry.name, m.origin, m.entry.description]),
    [
      ['debian-cloud', '/a.json', 'mine'],
      ['fc-6.1', '/b.json', 'Firecracker CI kernel'],
    ],
  );
});

test('loadKernelCatalog: relative paths from the config dir, URLs over http; unreadable → invalid_config naming it', async () => {
  await mkdir(join(dir, 'cfg'), { recursive: true });
  await writeFile(join(dir, 'cfg', 'mine.json'), JSON.stringify({ kernels: [{ ...archiveEntry, name: 'local-one' }] }));
  const all = await loadKernelCatalog(['mine.json', `${base}/cat.json`], join(dir, 'cfg'));
  assert.deepEqual(
    all.map((c) => [c.entry.name, c.origin]),
    [
      ['debian-cloud', 'builtin'],
      ['fc-6.1', `${base}/cat.json`],
      ['local-one', join(dir, 'cfg', 'mine.json')],
    ],
  );
  await assert.rejects(
    loadCatalog('missing.json', dir),
    (e: unknown) => e instanceof BangerError && e.code === 'invalid_config' && e.message.includes(join(dir, 'missing.json')),
  );
  await assert.rejects(
    loadCatalog(`${base}/nope.json`, dir),
    (e: unknown) => e instanceof BangerError && e.code === 'upstream_failed' && /nope\.json/.test(e.message) && /404/.test(e.message),
  );
});
