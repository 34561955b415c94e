import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { serveOnLoopback } from '../helpers/http.js';
import { requires } from '../helpers/prereq.js';
import { TestHome } from './harness.js';

/**
 * Issue #9, 13: `kernel pull` from a Debian mirror whose signed InRelease is past its
 * Valid-Until stops at the InRelease: nothing else is requested from the mirror, no kernel row,
 * nothing in staging. The control mirror (same index, Valid-Until in the future) goes on to the
 * Packages index, so the check is what stops the expired one. Loopback only.
 */

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gpgOk = spawnSync('gpg', ['--version']).status === 0 && spawnSync('gpgv', ['--version']).status === 0;

function gpg(home: string, args: string[], input?: string): Buffer {
  const r = spawnSync('gpg', ['--batch', '--quiet', '--homedir', home, '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { input });
  assert.equal(r.status, 0, `gpg ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

let fixtures: string;
let home: TestHome;
let http: Awaited<ReturnType<typeof serveOnLoopback>>;
const hits: string[] = [];

before(async () => {
  if (!gpgOk) return;
  fixtures = await mkdtemp(join(tmpdir(), 'kexpiry-'));
  const keyHome = join(fixtures, 'gpg');
  await mkdir(keyHome, { mode: 0o700 });
  gpg(keyHome, ['--quick-gen-key', 'banger test archive <archive@test.invalid>', 'ed25519', 'sign', 'never']);
  writeFileSync(join(fixtures, 'keyring.gpg'), gpg(keyHome, ['--export']));
  // An index whose package has a bogus checksum: the control pull fails later, at the download.
  const index = gzipSync(`Package: linux-image-cloud-amd64\nVersion: 1\nFilename: pool/k.deb\nSize: 4\nSHA256: ${'a'.repeat(64)}\n`);
  const inRelease = (validUntil: string) =>
    gpg(
      keyHome,
      ['--clearsign', '--output', '-'],
      `Origin: Debian\nSuite: unstable\nCodename: sid\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nValid-Until: ${validUntil}\nSHA256:\n ${sha256(index)} ${index.length} main/binary-amd64/Packages.gz\n`,
    );
  const routes = new Map<string, Buffer>([
    ['/expired/dists/sid/InRelease', inRelease('Sun, 02 Jan 2000 00:00:00 UTC')],
    ['/expired/dists/sid/main/binary-amd64/Packages.gz', index],
    ['/fresh/dists/sid/InRelease', inRelease('Fri, 01 Jan 2100 00:00:00 UTC')],
    ['/fresh/dists/sid/main/binary-amd64/Packages.gz', index],
    ['/fresh/pool/k.deb', Buffer.from('!<ar')],
  ]);
  http = await serveOnLoopback((req, res) => {
    hits.push(req.url ?? '');
    const body = routes.get(req.url ?? '');
    if (!body) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  const entry = (name: string) => ({
    name,
    distro: 'debian-sid',
    arch: 'x86_64',
    version: 'latest',
    description: name,
    source: { kind: 'debian-index', suite: 'sid', component: 'main', package: 'linux-image-cloud-amd64', mirror: `${http.base}/${name}` },
  });
  await writeFile(join(fixtures, 'kernels.json'), JSON.stringify({ kernels: [entry('expired'), entry('fresh')] }));
  home = await TestHome.create(`debian_keyring = "${join(fixtures, 'keyring.gpg')}"\nkernel_catalogs = ["${join(fixtures, 'kernels.json')}"]\n`);
});

after(async () => {
  await home?.destroy();
  await http?.close();
  if (fixtures) await rm(fixtures, { recursive: true, force: true });
});

test('an expired signed InRelease stops the pull before anything else is fetched', { skip: requires(gpgOk, 'gpg/gpgv are not installed') }, async () => {
  const r = await home.banger(['kernel', 'pull', 'expired']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /InRelease expired: its Valid-Until is Sun, 02 Jan 2000 00:00:00 GMT/);
  assert.match(r.stderr, /fix: .*up-to-date mirror/);
  assert.deepEqual(
    hits.filter((h) => h.startsWith('/expired/')),
    ['/expired/dists/sid/InRelease'],
    'only the InRelease was requested',
  );
  const kernels = await home.json<{ kernels: Array<{ name: string }> }>(['kernel', 'list']);
  assert.equal(kernels.kernels.length, 0);
  const staging = join(home.dir, 'state', 'staging');
  assert.deepEqual(existsSync(staging) ? readdirSync(staging) : [], []);

  // Control: the same index with a Valid-Until in the future passes the check and is read.
  const c = await home.banger(['kernel', 'pull', 'fresh']);
  assert.equal(c.code, 1, 'the control still fails, at the bogus package');
  assert.doesNotMatch(c.stderr, /expired/);
  assert.ok(hits.includes('/fresh/dists/sid/main/binary-amd64/Packages.gz'), 'the control went on to the index');
});
