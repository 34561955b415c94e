import assert from 'node:assert/strict';
import { chmod, chown, lstat, mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { copyGuestToHost, copyHostToGuest, parseEndpoint, runCp } from '../../src/cli/cp-host.js';
import type { GuestStat } from '../../src/guest/guest-channel.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { type FilesDaemon, startFilesDaemon } from '../helpers/files-daemon.js';
import { type TarEntry, tarOf } from '../helpers/tar.js';

/** A FAKE guest that answers every tar-out with the archive the test sets, and says the source is a directory. */
class HostileGuest extends HostFakeGuest {
  archive: Buffer = Buffer.alloc(0);
  override async stat(): Promise<GuestStat> {
    return { type: 'dir', mode: 0o755, size: 0, mtimeMs: 0, uid: 0, gid: 0, linkTarget: null };
  }
  override async tarOut() {
    return { stream: Readable.from([this.archive]), done: Promise.resolve() };
  }
}

let d: FilesDaemon;
const hostile = new HostileGuest();
let base: string;
let guest: string;

before(async () => {
  d = await startFilesDaemon({ dev: new HostFakeGuest(), evil: hostile });
  base = join(d.dir, 'host');
  guest = join(d.dir, 'guest');
  await mkdir(base);
  await mkdir(guest);
});
after(() => d.close());

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof BangerError, String(e));
    return e.code;
  }
  return 'ok';
}

/** Every path under dir (lstat, nothing followed). */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    out.push(join(dir, e.name));
    if (e.isDirectory()) out.push(...(await walk(join(dir, e.name))));
  }
  return out;
}

async function modeOf(p: string): Promise<number> {
  return (await lstat(p)).mode & 0o7777;
}

test('VM:PATH parsing: relative guest paths are under /root, host paths are anything with /, . or ~ first', () => {
  assert.deepEqual(parseEndpoint('dev:/etc/hosts'), { kind: 'guest', vm: 'dev', path: '/etc/hosts' });
  assert.deepEqual(parseEndpoint('dev:app'), { kind: 'guest', vm: 'dev', path: '/root/app' });
  assert.deepEqual(parseEndpoint('dev:'), { kind: 'guest', vm: 'dev', path: '/root' });
  assert.deepEqual(parseEndpoint('./dev:x'), { kind: 'host', path: './dev:x' });
  assert.deepEqual(parseEndpoint('/tmp/a:b'), { kind: 'host', path: '/tmp/a:b' });
  assert.deepEqual(parseEndpoint('plain'), { kind: 'host', path: 'plain' });
  assert.throws(() => parseEndpoint('dev:/a\0b'), /NUL/);
});

test('runCp refuses host → host and guest → guest', async () => {
  assert.equal(await codeOf(runCp(d.client, 'a', 'b', {})), 'bad_request');
  assert.equal(await codeOf(runCp(d.client, 'dev:/a', 'dev:/b', {})), 'bad_request');
});

// ---- guest → host: hostile archives ---------------------------------------------------

const CANARY = 'ORIGINAL CANARY';
const hostileCases: Array<{ what: string; entries: (canary: string) => TarEntry[] }> = [
  {
    what: 'a symlink climbing out of the destination, then a write through it',
    entries: () => [
      { name: 'x', type: 'directory' },
      { name: 'x/esc', type: 'symlink', linkname: '../../..' },
      { name: 'x/esc/canary.txt', body: 'EVIL' },
    ],
  },
  {
    what: 'a ".." entry',
    entries: () => [
      { name: 'x', type: 'directory' },
      { name: 'x/../../../canary.txt', body: 'EVIL' },
    ],
  },
  {
    what: 'an absolute entry',
    entries: (canary) => [
      { name: 'x', type: 'directory' },
      { name: canary, body: 'EVIL' },
    ],
  },
  {
    what: 'a hardlink to a file outside (relative)',
    entries: () => [
      { name: 'x', type: 'directory' },
      { name: 'x/h', type: 'link', linkname: '../../../canary.txt' },
    ],
  },
  {
    what: 'a hardlink to a file outside (absolute)',
    entries: (canary) => [
      { name: 'x', type: 'directory' },
      { name: 'x/h', type: 'link', linkname: canary },
    ],
  },
  {
    what: 'a symlink that stays in the staging tree but leaves the copied one',
    entries: () => [
      { name: 'other', type: 'directory' },
      { name: 'x', type: 'directory' },
      { name: 'x/l', type: 'symlink', linkname: '../other' },
    ],
  },
  {
    what: 'an absolute symlink',
    entries: (canary) => [
      { name: 'x', type: 'directory' },
      { name: 'x/abs', type: 'symlink', linkname: canary },
    ],
  },
  {
    what: 'a chain of links whose last hop climbs out',
    entries: () => [
      { name: 'x', type: 'directory' },
      { name: 'x/sub', type: 'directory' },
      { name: 'x/sub/up', type: 'symlink', linkname: '..' },
      { name: 'x/sub/z', type: 'symlink', linkname: 'up/..' },
    ],
  },
  {
    what: 'a device node',
    entries: () => [
      { name: 'x', type: 'directory' },
      { name: 'x/dev', type: 'character-device', devmajor: 1, devminor: 3 },
    ],
  },
];

for (const c of hostileCases) {
  test(`guest → host with a HOSTILE tar (${c.what}): refused, nothing outside the destination changes, nothing is left`, async () => {
    const root = join(base, `hostile-${hostileCases.indexOf(c)}`);
    const dest = join(root, 'dest');
    const canary = join(root, 'canary.txt');
    await mkdir(dest, { recursive: true });
    await writeFile(canary, CANARY);
    hostile.archive = await tarOf(c.entries(canary));
    const before = await walk(root);

    assert.equal(await codeOf(copyGuestToHost(d.client, 'evil', '/root/x', dest, { owners: false })), 'rejected_content');

    assert.equal(await readFile(canary, 'utf8'), CANARY);
    assert.ok((await lstat(canary)).isFile());
    assert.equal((await lstat(canary)).nlink, 1, 'no hardlink to the canary was made');
    assert.deepEqual(await walk(root), before, 'no entry appeared anywhere (no copy, no staging left)');
  });
}

// ---- guest → host: docker semantics, modes kept -----------------------------------------

async function guestTree(name: string): Promise<string> {
  const src = join(guest, name);
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'run.sh'), '#!/bin/sh\n');
  await chmod(join(src, 'run.sh'), 0o750);
  await writeFile(join(src, 'sub/secret'), 'k');
  await chmod(join(src, 'sub/secret'), 0o600);
  await chmod(join(src, 'sub'), 0o710);
  await symlink('../run.sh', join(src, 'sub/link'));
  return src;
}

test('guest → host: a directory into an existing directory, under a new name, and its contents ("dir/."), modes and inner links kept', async () => {
  const src = await guestTree('proj');
  const dest = join(base, 'out');
  await mkdir(dest);

  await copyGuestToHost(d.client, 'dev', src, dest, { owners: false });
  assert.equal(await readFile(join(dest, 'proj/run.sh'), 'utf8'), '#!/bin/sh\n');
  assert.equal(await modeOf(join(dest, 'proj/run.sh')), 0o750);
  assert.equal(await modeOf(join(dest, 'proj/sub/secret')), 0o600);
  assert.equal(await modeOf(join(dest, 'proj/sub')), 0o710);
  assert.equal(await readlink(join(dest, 'proj/sub/link')), '../run.sh');

  await copyGuestToHost(d.client, 'dev', src, join(dest, 'renamed'), { owners: false });
  assert.equal(await modeOf(join(dest, 'renamed/run.sh')), 0o750);

  const merged = join(base, 'merged');
  await mkdir(merged);
  await writeFile(join(merged, 'keep'), 'mine');
  await copyGuestToHost(d.client, 'dev', `${src}/.`, merged, { owners: false });
  assert.deepEqual((await readdir(merged)).sort(), ['keep', 'run.sh', 'sub']);
  assert.equal(await readFile(join(merged, 'keep'), 'utf8'), 'mine');
  // Copying again merges into what is there (files replaced, nothing duplicated).
  await copyGuestToHost(d.client, 'dev', src, dest, { owners: false });
  assert.deepEqual((await readdir(dest)).sort(), ['proj', 'renamed']);
});

test('guest → host: a file into a directory, onto a new name, over an existing file; a directory onto a file is refused', async () => {
  const src = await guestTree('files');
  const dest = join(base, 'fdest');
  await mkdir(dest);
  await copyGuestToHost(d.client, 'dev', join(src, 'run.sh'), dest, { owners: false });
  assert.equal(await modeOf(join(dest, 'run.sh')), 0o750);
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'key'), { owners: false });
  assert.equal(await readFile(join(dest, 'key'), 'utf8'), 'k');
  await writeFile(join(dest, 'old'), 'old');
  // A symlink at the destination is replaced, never written through.
  await symlink(join(base, 'link-target'), join(dest, 'via-link'));
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'old'), { owners: false });
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'via-link'), { owners: false });
  assert.equal(await readFile(join(dest, 'old'), 'utf8'), 'k');
  assert.ok((await lstat(join(dest, 'via-link'))).isFile());
  await assert.rejects(stat(join(base, 'link-target')));
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', src, join(dest, 'old'), { owners: false })), 'conflict');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'run.sh'), join(base, 'no/such/dir/x'), { owners: false })), 'not_found');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'missing'), dest, { owners: false })), 'not_found');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'sub/link'), dest, { owners: false })), 'bad_request');
  assert.ok(!(await readdir(dest)).some((n) => n.startsWith('.banger-cp-')));
});

// ---- host → guest ---------------------------------------------------------------------------

test('host → guest: a tree into an existing directory, under a new name, its contents, and a file renamed; modes kept', async () => {
  const src = join(base, 'hsrc');
  await mkdir(join(src, 'bin'), { recursive: true });
  await writeFile(join(src, 'bin/tool'), '#!/bin/sh\n');
  await chmod(join(src, 'bin/tool'), 0o755);
  await writeFile(join(src, 'conf'), 'x=1');
  await chmod(join(src, 'conf'), 0o640);
  await chmod(join(src, 'bin'), 0o750);
  await symlink('bin/tool', join(src, 'tool-link'));
  const gdest = join(guest, 'gdest');
  await mkdir(gdest);

  await copyHostToGuest(d.client, src, 'dev', gdest, { owners: false });
  assert.equal(await modeOf(join(gdest, 'hsrc/bin/tool')), 0o755);
  assert.equal(await modeOf(join(gdest, 'hsrc/conf')), 0o640);
  assert.equal(await modeOf(join(gdest, 'hsrc/bin')), 0o750);
  assert.equal(await readlink(join(gdest, 'hsrc/tool-link')), 'bin/tool');

  await copyHostToGuest(d.client, src, 'dev', join(gdest, 'app'), { owners: false });
  assert.equal(await readFile(join(gdest, 'app/conf'), 'utf8'), 'x=1');

  const contents = join(guest, 'contents');
  await mkdir(contents);
  await copyHostToGuest(d.client, `${src}/.`, 'dev', contents, { owners: false });
  assert.deepEqual((await readdir(contents)).sort(), ['bin', 'conf', 'tool-link']);

  await copyHostToGuest(d.client, join(src, 'conf'), 'dev', join(gdest, 'renamed.conf'), { owners: false });
  assert.equal(await modeOf(join(gdest, 'renamed.conf')), 0o640);
  assert.equal(await readFile(join(gdest, 'renamed.conf'), 'utf8'), 'x=1');

  assert.equal(await codeOf(copyHostToGuest(d.client, src, 'dev', join(gdest, 'renamed.conf'), { owners: false })), 'conflict');
  assert.equal(await codeOf(copyHostToGuest(d.client, join(src, 'conf'), 'dev', join(guest, 'absent/x'), { owners: false })), 'not_found');
  assert.equal(await codeOf(copyHostToGuest(d.client, join(base, 'nope'), 'dev', gdest, { owners: false })), 'not_found');
});

test('owners are kept only when asked (the CLI asks when it runs as root), in both directions', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('chown needs root: owners are kept only by a root CLI');
  const src = join(base, 'owned');
  await mkdir(src);
  await writeFile(join(src, 'f'), 'x');
  await chown(join(src, 'f'), 1234, 2345);
  const gdest = join(guest, 'owned-dest');
  await mkdir(gdest);
  await copyHostToGuest(d.client, src, 'dev', gdest, { owners: true });
  assert.deepEqual([(await lstat(join(gdest, 'owned/f'))).uid, (await lstat(join(gdest, 'owned/f'))).gid], [1234, 2345]);
  await copyHostToGuest(d.client, src, 'dev', join(gdest, 'plain'), { owners: false });
  assert.equal((await lstat(join(gdest, 'plain/f'))).uid, 0);

  hostile.archive = await tarOf([
    { name: 'x', type: 'directory', uid: 1234, gid: 2345 },
    { name: 'x/f', body: 'y', uid: 1234, gid: 2345 },
  ]);
  const hdest = join(base, 'owned-host');
  await mkdir(hdest);
  await copyGuestToHost(d.client, 'evil', '/root/x', join(hdest, 'kept'), { owners: true });
  assert.equal((await lstat(join(hdest, 'kept/f'))).uid, 1234);
  await copyGuestToHost(d.client, 'evil', '/root/x', join(hdest, 'mine'), { owners: false });
  assert.equal((await lstat(join(hdest, 'mine/f'))).uid, 0);
});
