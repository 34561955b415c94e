import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { guestAssets } from '../helpers/banger.js';
import { serveOnLoopback } from '../helpers/http.js';
import { requires } from '../helpers/prereq.js';
import { TestHome } from './harness.js';

/**
 * `banger kernel pull` against a loopback Debian mirror (and a loopback archive URL): the real
 * CLI and daemon, nothing leaves 127.0.0.1.
 */

const assets = guestAssets();
const deb = assets?.kernelDeb;
const debSkip = requires(deb, 'the kernel .deb is missing (kernelDeb in assets.json): run scripts/guest-assets.sh');

interface CatalogItem {
  name: string;
  state: 'pulled' | 'available';
  version: string;
  kernel: { name: string; version: string } | null;
}
interface KernelJson {
  name: string;
  version: string;
  kernelPath: string;
  initrdPath: string | null;
  modulesDir: string | null;
  source: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Package stanzas for a meta package pointing at `pkg`, served from `pool/…/<file>`. */
function packagesIndex(pkg: string, version: string, file: string, size: number, sha: string): Buffer {
  return gzipSync(`Package: linux-headers-cloud-amd64
Version: ${version}
Depends: linux-headers-x
Filename: pool/main/l/x/linux-headers-cloud-amd64_${version}_amd64.deb
Size: 10
SHA256: ${'0'.repeat(64)}

Package: linux-image-cloud-amd64
Version: ${version}
Depends: ${pkg} (= ${version})
Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_${version}_amd64.deb
Size: 1500
SHA256: ${'1'.repeat(64)}

Package: ${pkg}
Version: ${version}
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux for x86-64 cloud
 The Linux kernel and modules for use on cloud platforms.
Filename: pool/main/l/linux-signed-amd64/${file}
Size: ${size}
SHA256: ${sha}
`);
}

async function evilTarZst(): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  pack.entry({ name: 'vmlinux', mode: 0o644 }, 'not really a kernel');
  pack.entry({ name: '../../../evil-sentinel', mode: 0o644 }, 'pwned');
  pack.finalize();
  await done;
  const z = spawnSync('zstd', ['-q', '-c'], { input: Buffer.concat(chunks) });
  assert.equal(z.status, 0, 'zstd is needed to build the fixture');
  return z.stdout;
}

/** gpg with a throwaway home: the test's own archive key(s). */
function gpg(home: string, args: string[], input?: string | Buffer): Buffer {
  const r = spawnSync('gpg', ['--batch', '--quiet', '--homedir', home, '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { input });
  assert.equal(r.status, 0, `gpg ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A Release file listing `files` in its SHA256 section, clearsigned (InRelease) with the key in `home`. */
function inRelease(home: string, files: Record<string, Buffer>): Buffer {
  const lines = Object.entries(files).map(([path, bytes]) => ` ${sha256(bytes)} ${bytes.length} ${path}`);
  const release = `Origin: Debian\nSuite: stable\nCodename: bookworm\nArchitectures: amd64\nComponents: main\nSHA256:\n${lines.join('\n')}\n`;
  return gpg(home, ['--clearsign', '--output', '-'], release);
}

let http: Awaited<ReturnType<typeof serveOnLoopback>>;
let base: string;
let home: TestHome;
let fixtures: string;
const hits: string[] = [];
let debName = 'linux-image-6.1.0-0-cloud-amd64_1.0-1_amd64.deb';
let debPkg = 'linux-image-6.1.0-0-cloud-amd64';
let debVersion = '1.0-1';
let debSha = '';

before(async () => {
  fixtures = await mkdtemp(join(tmpdir(), 'kpull-'));
  const routes = new Map<string, Buffer | string>();
  // The test's archive key (in the keyring banger is told to trust) and a stranger's key.
  const archive = join(fixtures, 'gpg-archive');
  const stranger = join(fixtures, 'gpg-stranger');
  for (const [home, uid] of [
    [archive, 'banger test archive <archive@test.invalid>'],
    [stranger, 'someone else <stranger@test.invalid>'],
  ] as const) {
    await mkdir(home, { mode: 0o700 });
    gpg(home, ['--quick-gen-key', uid, 'ed25519', 'sign', 'never']);
  }
  writeFileSync(join(fixtures, 'keyring.gpg'), gpg(archive, ['--export']));
  const indexes: Record<string, Buffer> = {};
  if (deb) {
    debName = basename(deb);
    const m = /^(linux-image-[^_]+)_([^_]+)_amd64\.deb$/.exec(debName);
    assert.ok(m, `unexpected .deb name ${debName}`);
    debPkg = m[1] as string;
    debVersion = m[2] as string;
    const bytes = readFileSync(deb);
    debSha = sha256(bytes);
    indexes.debian = packagesIndex(debPkg, debVersion, debName, bytes.length, debSha);
    routes.set('/debian/dists/bookworm/main/binary-amd64/Packages.gz', indexes.debian);
    routes.set('/debian/dists/bookworm/InRelease', inRelease(archive, { 'main/binary-amd64/Packages.gz': indexes.debian }));
    // A signed Release that vouches for a different index than the one served.
    routes.set('/tampered/dists/bookworm/main/binary-amd64/Packages.gz', indexes.debian);
    routes.set(
      '/tampered/dists/bookworm/InRelease',
      inRelease(archive, { 'main/binary-amd64/Packages.gz': Buffer.concat([indexes.debian, Buffer.from('x')]) }),
    );
    // The right index, signed by a key banger was not told to trust.
    routes.set('/stranger/dists/bookworm/main/binary-amd64/Packages.gz', indexes.debian);
    routes.set('/stranger/dists/bookworm/InRelease', inRelease(stranger, { 'main/binary-amd64/Packages.gz': indexes.debian }));
    routes.set(`/debian/pool/main/l/linux-signed-amd64/${debName}`, deb);
  }
  // A mirror whose index has the wrong checksum for the package it serves.
  const fake = Buffer.from('!<arch>\nnot really a kernel package\n');
  const badIndex = packagesIndex(debPkg, debVersion, debName, fake.length, 'f'.repeat(64));
  routes.set('/bad/dists/bookworm/main/binary-amd64/Packages.gz', badIndex);
  routes.set('/bad/dists/bookworm/InRelease', inRelease(archive, { 'main/binary-amd64/Packages.gz': badIndex }));
  routes.set(`/bad/pool/main/l/linux-signed-amd64/${debName}`, fake);
  const evil = await evilTarZst();
  routes.set('/archives/evil.tar.zst', evil);

  http = await serveOnLoopback((req, res) => {
    hits.push(req.url ?? '');
    const body = routes.get(req.url ?? '');
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    if (typeof body === 'string') {
      res.writeHead(200, { 'content-length': statSync(body).size });
      createReadStream(body).pipe(res);
    } else res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  base = http.base;

  const catalog = join(fixtures, 'kernels.json');
  await writeFile(
    catalog,
    JSON.stringify({
      kernels: [
        {
          name: 'bad-sum',
          distro: 'debian-12',
          arch: 'x86_64',
          version: 'latest',
          description: 'index with a wrong SHA256',
          source: { kind: 'debian-index', suite: 'bookworm', component: 'main', package: 'linux-image-cloud-amd64', mirror: `${base}/bad` },
        },
        ...['tampered', 'stranger'].map((m) => ({
          name: m,
          distro: 'debian-12',
          arch: 'x86_64',
          version: 'latest',
          description: `mirror: ${m}`,
          source: { kind: 'debian-index', suite: 'bookworm', component: 'main', package: 'linux-image-cloud-amd64', mirror: `${base}/${m}` },
        })),
        {
          name: 'evil',
          distro: 'none',
          arch: 'x86_64',
          version: '1',
          description: 'tarball with a traversal entry',
          source: { kind: 'archive', url: `${base}/archives/evil.tar.zst`, sha256: sha256(evil), format: 'tar.zst' },
        },
      ],
    }),
  );
  home = await TestHome.create(`debian_mirror = "${base}/debian"\ndebian_keyring = "${join(fixtures, 'keyring.gpg')}"\nkernel_catalogs = ["${catalog}"]\n`);
});

after(async () => {
  await home?.destroy();
  await http?.close();
  await rm(fixtures, { recursive: true, force: true });
});

/** No staging leftovers and no partial downloads. */
function assertClean(): void {
  const staging = join(home.dir, 'state', 'staging');
  assert.deepEqual(existsSync(staging) ? readdirSync(staging) : [], [], 'staging is empty');
  const downloads = join(home.dir, 'cache', 'downloads');
  const left = existsSync(downloads) ? readdirSync(downloads) : [];
  assert.deepEqual(
    left.filter((f) => f.includes('partial')),
    [],
    'no partial downloads',
  );
}

test('`kernel list --available` shows the built-in and the user catalog entries', async () => {
  const { kernels } = await home.json<{ kernels: CatalogItem[] }>(['kernel', 'list', '--available']);
  assert.deepEqual(
    kernels.map((k) => [k.name, k.state]),
    [
      ['bad-sum', 'available'],
      ['debian-cloud', 'available'],
      ['evil', 'available'],
      ['stranger', 'available'],
      ['tampered', 'available'],
    ],
  );
  const text = await home.ok(['kernel', 'list', '--available']);
  assert.match(text, /^NAME\s+STATE\s+DISTRO\s+VERSION\s+SIZE\s+DESCRIPTION$/m);
  assert.match(text, /^debian-cloud\s+available\s+debian-12\s+latest/m);
  const show = await home.ok(['kernel', 'show', 'debian-cloud']);
  assert.match(show, /^state:\s+available \(banger kernel pull debian-cloud\)$/m);
  assert.match(show, /^source:\s+debian bookworm\/main linux-image-cloud-amd64$/m);
});

test('`kernel pull debian-cloud` through the loopback Debian index: vmlinux extracted, initramfs built', { skip: debSkip }, async () => {
  const r = await home.banger(['kernel', 'pull', 'debian-cloud']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^pulled kernel debian-cloud \(/);
  assert.ok(hits.includes(`/debian/pool/main/l/linux-signed-amd64/${debName}`));
  assert.ok(
    hits.every((h) => !h.includes('linux-headers')),
    'only the kernel package was fetched',
  );

  const k = await home.json<KernelJson>(['kernel', 'show', 'debian-cloud']);
  assert.equal(`linux-image-${k.version}`, debPkg, 'the kernel version is the package’s');
  assert.equal(k.source, `catalog:debian-cloud ${debPkg}=${debVersion} sha256:${debSha}`);
  assert.equal(basename(k.kernelPath), 'vmlinux');
  const head = readFileSync(k.kernelPath).subarray(0, 5);
  assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46, 2], 'an ELF64 vmlinux');
  assert.equal(basename(k.initrdPath ?? ''), 'banger-initramfs.cpio.gz');
  assert.ok(statSync(k.initrdPath as string).size > 1000);
  assert.ok(statSync(join(k.modulesDir as string, 'modules.order')).isFile());
  assert.ok(statSync(join(k.modulesDir as string, 'kernel')).isDirectory());

  const { kernels } = await home.json<{ kernels: CatalogItem[] }>(['kernel', 'list', '--available']);
  const item = kernels.find((c) => c.name === 'debian-cloud');
  assert.equal(item?.state, 'pulled');
  assert.equal(item?.kernel?.version, k.version);
  assertClean();

  // Again: refused without --force; with --force replaced from the cache (no second download).
  const again = await home.banger(['kernel', 'pull', 'debian-cloud']);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /already exists/);
  assert.match(again.stderr, /--force/);
  const downloads = hits.filter((h) => h.endsWith('.deb')).length;
  const forced = await home.json<KernelJson>(['kernel', 'pull', 'debian-cloud', '--force']);
  assert.equal(hits.filter((h) => h.endsWith('.deb')).length, downloads, 'served from the download cache');
  assert.equal(forced.source, k.source);
  assert.notEqual(forced.kernelPath, k.kernelPath);
  assert.equal(existsSync(k.kernelPath), false, 'the replaced kernel’s files are gone');
  assert.equal((await home.json<{ kernels: KernelJson[] }>(['kernel', 'list'])).kernels.length, 1);
  assertClean();
});

test('a checksum mismatch fails the pull: no kernel row, no staging or partial files', async () => {
  const before = (await home.json<{ kernels: KernelJson[] }>(['kernel', 'list'])).kernels;
  const r = await home.banger(['kernel', 'pull', 'bad-sum']);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /checksum mismatch/);
  assert.match(r.stderr, new RegExp(`expected sha256 ${'f'.repeat(64)}, got [0-9a-f]{64}`));
  assert.ok(hits.includes(`/bad/pool/main/l/linux-signed-amd64/${debName}`), 'the entry’s own mirror was used');
  assert.deepEqual((await home.json<{ kernels: KernelJson[] }>(['kernel', 'list'])).kernels, before);
  assertClean();
  const downloads = join(home.dir, 'cache', 'downloads');
  assert.equal(existsSync(join(downloads, 'f'.repeat(64))), false);
});

test('the index chain is anchored in the keyring: a tampered index or a stranger’s signature fails the pull', { skip: debSkip }, async () => {
  const t = await home.banger(['kernel', 'pull', 'tampered']);
  assert.notEqual(t.code, 0);
  assert.match(t.stderr, /does not match the signed Release/);
  const s = await home.banger(['kernel', 'pull', 'stranger']);
  assert.notEqual(s.code, 0);
  assert.match(s.stderr, /signature of .*InRelease does not verify/);
  assert.ok(!hits.some((h) => h.startsWith('/tampered/pool') || h.startsWith('/stranger/pool')), 'no package was downloaded');
  const kernels = await home.json<{ kernels: Array<{ name: string }> }>(['kernel', 'list']);
  assert.ok(!kernels.kernels.some((k) => k.name === 'tampered' || k.name === 'stranger'));
});

test('an archive entry with a traversal entry is rejected; nothing is left anywhere', async () => {
  const before = (await home.json<{ kernels: KernelJson[] }>(['kernel', 'list'])).kernels;
  const r = await home.banger(['kernel', 'pull', 'evil']);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /"\.\.\/\.\.\/\.\.\/evil-sentinel" rejected/);
  assert.match(r.stderr, /corrupt or hostile/);
  assert.deepEqual((await home.json<{ kernels: KernelJson[] }>(['kernel', 'list'])).kernels, before);
  assertClean();
  for (const d of [home.dir, join(home.dir, 'state'), join(home.dir, 'cache'), tmpdir()]) assert.equal(existsSync(join(d, 'evil-sentinel')), false);
  const downloads = join(home.dir, 'cache', 'downloads');
  assert.deepEqual(
    (existsSync(downloads) ? readdirSync(downloads) : []).filter((f) => !f.startsWith(debSha || '-')),
    [],
    'the refused archive is not kept in the cache',
  );
});

test('pulling an unknown entry: not found, pointing at the catalog', async () => {
  const r = await home.banger(['kernel', 'pull', 'nope']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /kernel catalog entry "nope" not found/);
  assert.match(r.stderr, /kernel list --available/);
});

test('`kernel rm` of a missing kernel fails; with --force it is not an error', async () => {
  assert.equal((await home.banger(['kernel', 'rm', 'nope'])).code, 1);
  assert.equal((await home.banger(['kernel', 'rm', 'nope', '--force'])).code, 0);
});

test('`kernel rm` of a pulled kernel removes its files; the entry is available again', { skip: debSkip }, async () => {
  const k = await home.json<KernelJson>(['kernel', 'show', 'debian-cloud']);
  await home.ok(['kernel', 'rm', 'debian-cloud']);
  assert.equal(existsSync(k.kernelPath), false);
  const { kernels } = await home.json<{ kernels: CatalogItem[] }>(['kernel', 'list', '--available']);
  assert.equal(kernels.find((c) => c.name === 'debian-cloud')?.state, 'available');
});
