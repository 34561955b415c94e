import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { BangerError } from '../../src/api/errors.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { compareDebianVersions, fetchKernelStanzas, parseDepends, parseStanzas, resolveKernelPackage } from '../../src/kernels/debian-index.js';
import { serveOnLoopback } from '../helpers/http.js';

const SHA_A = 'a'.repeat(64);
const SHA_B = 'B'.repeat(64);

const INDEX = `Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.119+1)
Version: 6.1.119-1
Installed-Size: 13
Depends: linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)
Description: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on cloud platforms.
Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.119-1_amd64.deb
Size: 1496
SHA256: ${'c'.repeat(64)}

Package: linux-image-6.1.0-28-cloud-amd64
Version: 6.1.119-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb
Size: 26713492
SHA256: ${SHA_A}

Package: linux-image-6.1.0-27-cloud-amd64
Version: 6.1.115-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-27-cloud-amd64_6.1.115-1_amd64.deb
Size: 100
SHA256: ${SHA_B}
`;

test('parseStanzas: keys, continuation lines, blank-line separation, filter', () => {
  const s = parseStanzas(INDEX);
  assert.equal(s.length, 3);
  assert.equal(s[0]?.Package, 'linux-image-cloud-amd64');
  assert.match(s[0]?.Description ?? '', /meta-package\)\nThis package depends/);
  assert.equal(s[1]?.Size, '26713492');
  assert.equal(parseStanzas(INDEX, (p) => p.includes('-27-')).length, 1);
  assert.deepEqual(parseStanzas('\n\n'), []);
});

test('parseDepends: names, "(= version)", alternatives, arch qualifiers', () => {
  assert.deepEqual(parseDepends('linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)'), [{ name: 'linux-image-6.1.0-28-cloud-amd64', version: '6.1.119-1' }]);
  assert.deepEqual(
    parseDepends('kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool, libc6:amd64').map((d) => d.name),
    ['kmod', 'linux-base', 'initramfs-tools', 'linux-initramfs-tool', 'libc6'],
  );
  assert.deepEqual(parseDepends(undefined), []);
});

test('compareDebianVersions (dpkg order)', () => {
  const sorted = ['1.0~rc1', '1.0', '1.0-1', '1.0+b1', '1.0.1', '1:0.9', '6.1.119-1', '6.1.12-1'].sort(compareDebianVersions);
  assert.deepEqual(sorted, ['1.0~rc1', '1.0', '1.0-1', '1.0+b1', '1.0.1', '6.1.12-1', '6.1.119-1', '1:0.9']);
  assert.equal(compareDebianVersions('6.1.119-1', '6.1.119-1'), 0);
});

test('resolveKernelPackage follows the meta package to the versioned package', () => {
  const r = resolveKernelPackage(parseStanzas(INDEX), 'linux-image-cloud-amd64', 'http://mirror.example/debian/');
  assert.deepEqual(r, {
    package: 'linux-image-6.1.0-28-cloud-amd64',
    version: '6.1.119-1',
    filename: 'pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb',
    url: 'http://mirror.example/debian/pool/main/l/linux-signed-amd64/linux-image-6.1.0-28-cloud-amd64_6.1.119-1_amd64.deb',
    sha256: SHA_A,
    size: 26713492,
  });
  // A versioned package directly: itself (its Depends name no linux-image-*).
  const direct = resolveKernelPackage(parseStanzas(INDEX), 'linux-image-6.1.0-27-cloud-amd64', 'http://m');
  assert.equal(direct.sha256, SHA_B.toLowerCase());
  assert.equal(direct.url, 'http://m/pool/main/l/linux-signed-amd64/linux-image-6.1.0-27-cloud-amd64_6.1.115-1_amd64.deb');
});

test('resolveKernelPackage: newest version of the meta wins; errors name what is missing', () => {
  const twoMetas = `${INDEX}
Package: linux-image-cloud-amd64
Version: 6.1.115-1
Depends: linux-image-6.1.0-27-cloud-amd64 (= 6.1.115-1)
`;
  assert.equal(resolveKernelPackage(parseStanzas(twoMetas), 'linux-image-cloud-amd64', 'http://m').package, 'linux-image-6.1.0-28-cloud-amd64');
  assert.throws(
    () => resolveKernelPackage(parseStanzas(INDEX), 'linux-image-nope', 'http://m'),
    (e: unknown) => e instanceof BangerError && e.code === 'not_found' && /linux-image-nope/.test(e.message),
  );
  const dangling = INDEX.replace('Depends: linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)', 'Depends: linux-image-6.1.0-99-cloud-amd64 (= 6.1.200-1)');
  assert.throws(
    () => resolveKernelPackage(parseStanzas(dangling), 'linux-image-cloud-amd64', 'http://m'),
    /depends on linux-image-6\.1\.0-99-cloud-amd64 \(= 6\.1\.200-1\), which is not in/,
  );
  const noSha = INDEX.replace(`SHA256: ${SHA_A}`, 'MD5sum: 00');
  assert.throws(() => resolveKernelPackage(parseStanzas(noSha), 'linux-image-cloud-amd64', 'http://m'), /lacks Version, Filename, Size or SHA256/);
  const sneaky = INDEX.replace('Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-28', 'Filename: pool/../../etc/linux-image-6.1.0-28');
  assert.throws(() => resolveKernelPackage(parseStanzas(sneaky), 'linux-image-cloud-amd64', 'http://m'), /suspicious Filename/);
});

let http: Awaited<ReturnType<typeof serveOnLoopback>>;
let mirror: string;
const hits: string[] = [];
before(async () => {
  // Lots of unrelated stanzas so the index spans many chunks.
  const filler = Array.from({ length: 3000 }, (_, i) => `Package: pkg-${i}\nVersion: 1.${i}\nDescription: filler\n filler line\n`).join('\n');
  const gz = gzipSync(`${filler}\n${INDEX}`);
  http = await serveOnLoopback((req, res) => {
    hits.push(req.url ?? '');
    if (req.url === '/debian/dists/bookworm/main/binary-amd64/Packages.gz') {
      res.writeHead(200, { 'content-length': gz.length });
      res.end(gz);
      return;
    }
    res.writeHead(404).end();
  });
  mirror = `${http.base}/debian`;
});
after(() => http.close());

test('fetchKernelStanzas: Packages.xz missing → Packages.gz, keeps only linux-image-* stanzas', async () => {
  const { stanzas, url } = await fetchKernelStanzas(new ProcessRunner(), mirror, 'bookworm', 'main');
  assert.equal(url, `${mirror}/dists/bookworm/main/binary-amd64/Packages.gz`);
  assert.deepEqual(hits.slice(0, 2), ['/debian/dists/bookworm/main/binary-amd64/Packages.xz', '/debian/dists/bookworm/main/binary-amd64/Packages.gz']);
  assert.equal(stanzas.length, 3);
  assert.equal(resolveKernelPackage(stanzas, 'linux-image-cloud-amd64', mirror).sha256, SHA_A);
});

test('fetchKernelStanzas: no index at all → upstream_failed naming the URL and status', async () => {
  await assert.rejects(
    fetchKernelStanzas(new ProcessRunner(), mirror, 'trixie', 'main'),
    (e: unknown) =>
      e instanceof BangerError && e.code === 'upstream_failed' && /dists\/trixie\/main\/binary-amd64\/Packages/.test(e.message) && /404/.test(e.message),
  );
});
