import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { serveOnLoopback } from '../helpers/http.js';
import { TestHome } from './harness.js';

/**
 * Issue #9 holes 3 and 5 end to end: hostile kernel archives (served from a loopback "catalog
 * author") and a hostile import directory go through the real CLI and daemon. The assertions are
 * on the host: canary paths outside the home stay absent or untouched, no file the daemon wrote
 * carries a host secret, staging is empty and no kernel row appears.
 */

const VERSION = '6.1.0-66-evil-amd64';
const SECRET = 'TOPSECRET-kernel-pull-canary';

type Entry = { name: string; type?: 'file' | 'symlink' | 'directory'; body?: string; linkname?: string };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname ?? '' });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory', mode: 0o755 });
    else pack.entry({ name: e.name, mode: 0o644 }, e.body ?? 'x');
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let fixtures: string;
let secretFile: string;
let hostLib: string;
let canary: string;
let home: TestHome;
let http: Awaited<ReturnType<typeof serveOnLoopback>>;

before(async () => {
  fixtures = await mkdtemp(join(tmpdir(), 'khostile-'));
  secretFile = join(fixtures, 'secret', 'shadow');
  await mkdir(join(fixtures, 'secret'));
  await writeFile(secretFile, `${SECRET}\n`, { mode: 0o600 });
  // A host directory that looks like lib/ of a kernel: a `lib -> <it>` link must not move it.
  hostLib = join(fixtures, 'hostlib');
  await mkdir(join(hostLib, 'modules', VERSION), { recursive: true });
  await writeFile(join(hostLib, 'modules', VERSION, 'host-file.ko'), 'host data');
  canary = join(fixtures, 'canary', 'moved-here');
  await mkdir(join(fixtures, 'canary'));

  const archives: Record<string, Entry[]> = {
    // Hole 3: the version walks out of staging to an absent host path.
    'version-traversal': [
      { name: 'vmlinux', body: 'not really a kernel' },
      { name: 'mods/', type: 'directory' },
      { name: 'mods/payload.ko', body: 'attacker executable' },
      { name: 'kernel.json', body: JSON.stringify({ kernel: 'vmlinux', modules: 'mods', version: `${'../'.repeat(24)}${canary.slice(1)}` }) },
    ],
    // Hole 5: absolute links to host files as the kernel, as the initrd, and lib/ as a host directory.
    'kernel-link': [{ name: 'vmlinux', type: 'symlink', linkname: secretFile }],
    'initrd-link': [
      { name: `boot/vmlinuz-${VERSION}`, body: 'bz' },
      { name: `boot/initrd.img-${VERSION}`, type: 'symlink', linkname: secretFile },
    ],
    'lib-link': [
      { name: `boot/vmlinuz-${VERSION}`, body: 'bz' },
      { name: 'lib', type: 'symlink', linkname: hostLib },
    ],
    // A module that is a link to a host file: the pull may succeed, but the file is never read.
    'module-link': [
      { name: 'vmlinux', body: 'not really a kernel' },
      { name: `lib/modules/${VERSION}/kernel/drivers/block/virtio_blk.ko`, type: 'symlink', linkname: secretFile },
      { name: `lib/modules/${VERSION}/kernel/drivers/net/`, type: 'directory' },
      { name: `lib/modules/${VERSION}/kernel/drivers/net/virtio_net.ko`, type: 'symlink', linkname: `/${secretFile.slice(1)}` },
    ],
  };
  const routes = new Map<string, Buffer>();
  const kernels = [];
  for (const [name, entries] of Object.entries(archives)) {
    const body = await tarOf(entries);
    routes.set(`/${name}.tar`, body);
    kernels.push({
      name,
      distro: 'none',
      arch: 'x86_64',
      version: '1',
      description: name,
      source: { kind: 'archive', url: '', sha256: sha256(body), format: 'tar' },
    });
  }
  http = await serveOnLoopback((req, res) => {
    const body = routes.get(req.url ?? '');
    if (!body) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  for (const k of kernels) k.source.url = `${http.base}/${k.name}.tar`;
  await writeFile(join(fixtures, 'kernels.json'), JSON.stringify({ kernels }));
  home = await TestHome.create(`kernel_catalogs = ["${join(fixtures, 'kernels.json')}"]\n`);
});

after(async () => {
  await home?.destroy();
  await http?.close();
  await rm(fixtures, { recursive: true, force: true });
});

/** Every regular file under `dir` (gzip members decompressed) that contains the host secret. */
function filesWithSecret(dir: string): string[] {
  const hits: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size < 256 * 1024 * 1024) {
        let data = readFileSync(p);
        if (data[0] === 0x1f && data[1] === 0x8b) data = gunzipSync(data);
        if (data.includes(SECRET)) hits.push(p);
      }
    }
  };
  walk(dir);
  return hits;
}

async function kernelNames(): Promise<string[]> {
  return (await home.json<{ kernels: Array<{ name: string }> }>(['kernel', 'list'])).kernels.map((k) => k.name);
}

function assertStagingEmpty(): void {
  const staging = join(home.dir, 'state', 'staging');
  assert.deepEqual(existsSync(staging) ? readdirSync(staging) : [], [], 'staging is empty');
}

test('hole 3: a kernel.json version with ../ is refused; nothing lands outside staging', async () => {
  const r = await home.banger(['kernel', 'pull', 'version-traversal']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /kernel version .* is not a valid version/);
  assert.match(r.stderr, /fix: /);
  assert.equal(existsSync(canary), false, 'the attacker directory was not moved onto the host path');
  assert.deepEqual(readdirSync(join(fixtures, 'canary')), []);
  assert.equal((await kernelNames()).includes('version-traversal'), false);
  assertStagingEmpty();
});

test('hole 3: `kernel import` of a directory whose kernel.json version climbs out is refused', async () => {
  const dir = join(fixtures, 'import-src');
  await mkdir(join(dir, 'mods'), { recursive: true });
  await writeFile(join(dir, 'vmlinux'), 'k');
  await writeFile(join(dir, 'mods', 'payload.ko'), 'attacker executable');
  await writeFile(join(dir, 'kernel.json'), JSON.stringify({ kernel: 'vmlinux', modules: 'mods', version: `${'../'.repeat(24)}${canary.slice(1)}` }));
  const r = await home.banger(['kernel', 'import', 'imp', '--from', dir]);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /is not a valid version/);
  assert.equal(existsSync(canary), false);
  assert.ok(existsSync(join(dir, 'mods', 'payload.ko')), 'the source tree is untouched');
  assertStagingEmpty();
});

test('hole 5: an archive whose vmlinux or initrd links to a host file is refused; the secret is copied nowhere', async () => {
  for (const name of ['kernel-link', 'initrd-link']) {
    const r = await home.banger(['kernel', 'pull', name]);
    assert.equal(r.code, 1, `${name}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /leads outside .* through a symlink/, name);
    assert.equal((await kernelNames()).includes(name), false);
  }
  assert.deepEqual(filesWithSecret(home.dir), []);
  assertStagingEmpty();
});

test('hole 5: `lib -> <host dir>` in an archive does not move the host modules into banger', async () => {
  const r = await home.banger(['kernel', 'pull', 'lib-link']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /modules directory .* leads outside/);
  assert.equal(readFileSync(join(hostLib, 'modules', VERSION, 'host-file.ko'), 'utf8'), 'host data', 'the host directory is still there');
  assertStagingEmpty();
});

test('hole 5: modules that link to a host file are never read into the initramfs', async () => {
  const r = await home.banger(['kernel', 'pull', 'module-link']);
  // The links are ignored (the kernel then counts as having them built in); what matters is the host.
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual(filesWithSecret(home.dir), [], 'no file banger wrote (initramfs included) carries the host secret');
  assert.equal(readFileSync(secretFile, 'utf8'), `${SECRET}\n`);
  assertStagingEmpty();
});

test('a symlink placed in the import source does not get the secret copied either', async () => {
  const dir = join(fixtures, 'import-link');
  await mkdir(dir);
  await symlink(secretFile, join(dir, 'vmlinux'));
  const r = await home.banger(['kernel', 'import', 'imp2', '--from', dir]);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /leads outside/);
  assert.deepEqual(filesWithSecret(home.dir), []);
});
