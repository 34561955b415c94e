import assert from 'node:assert/strict';
import { chmod, chown, lstat, mkdir, readdir, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { CP_MAX_ENTRIES, type CpOptions, copyGuestToHost, copyHostToGuest, parseEndpoint, runCp } from '../../src/cli/cp-host.js';
import type { GuestStat } from '../../src/guest/guest-channel.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { type FilesDaemon, startFilesDaemon } from '../helpers/files-daemon.js';
import { type TarEntry, tarOf } from '../helpers/tar.js';

/**
 * A FAKE guest that answers every tar-out with the archive the test sets (a buffer, or a stream
 * made on demand), and says any source is a directory; it records the paths it was asked for.
 */
class HostileGuest extends HostFakeGuest {
  archive: Buffer = Buffer.alloc(0);
  archiveStream: (() => Readable) | undefined;
  readonly asked: string[] = [];
  override async stat(path: string): Promise<GuestStat> {
    this.asked.push(path);
    return { type: 'dir', mode: 0o755, size: 0, mtimeMs: 0, uid: 0, gid: 0, linkTarget: null };
  }
  override async tarOut(path: string) {
    this.asked.push(path);
    return { stream: this.archiveStream?.() ?? Readable.from([this.archive]), done: Promise.resolve() };
  }
}

/** Guest → host as the CLI does it without -a, under a fixed umask (the tests do not depend on the runner's). */
const MINE: CpOptions = { archive: false, umask: 0o022 };

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
  // `..` is never resolved; a trailing `/.` (a directory's contents) is kept for the copy to see.
  for (const bad of ['dev:/root/x/..', 'dev:..', 'dev:x/../y', 'dev:/..', 'dev:/root/../etc/'])
    assert.throws(
      () => parseEndpoint(bad),
      (e: unknown) => e instanceof BangerError && e.code === 'bad_request' && /"\.\."/.test(e.message),
      bad,
    );
  assert.deepEqual(parseEndpoint('dev:/root/x/.'), { kind: 'guest', vm: 'dev', path: '/root/x/.' });
  assert.deepEqual(parseEndpoint('dev:x..y'), { kind: 'guest', vm: 'dev', path: '/root/x..y' });
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

    assert.equal(await codeOf(copyGuestToHost(d.client, 'evil', '/root/x', dest, MINE)), 'rejected_content');

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

  await copyGuestToHost(d.client, 'dev', src, dest, MINE);
  assert.equal(await readFile(join(dest, 'proj/run.sh'), 'utf8'), '#!/bin/sh\n');
  assert.equal(await modeOf(join(dest, 'proj/run.sh')), 0o750);
  assert.equal(await modeOf(join(dest, 'proj/sub/secret')), 0o600);
  assert.equal(await modeOf(join(dest, 'proj/sub')), 0o710);
  assert.equal(await readlink(join(dest, 'proj/sub/link')), '../run.sh');

  await copyGuestToHost(d.client, 'dev', src, join(dest, 'renamed'), MINE);
  assert.equal(await modeOf(join(dest, 'renamed/run.sh')), 0o750);

  const merged = join(base, 'merged');
  await mkdir(merged);
  await writeFile(join(merged, 'keep'), 'mine');
  await copyGuestToHost(d.client, 'dev', `${src}/.`, merged, MINE);
  assert.deepEqual((await readdir(merged)).sort(), ['keep', 'run.sh', 'sub']);
  assert.equal(await readFile(join(merged, 'keep'), 'utf8'), 'mine');
  // Copying again merges into what is there (files replaced, nothing duplicated).
  await copyGuestToHost(d.client, 'dev', src, dest, MINE);
  assert.deepEqual((await readdir(dest)).sort(), ['proj', 'renamed']);
});

test('guest → host: a file into a directory, onto a new name, over an existing file; a directory onto a file is refused', async () => {
  const src = await guestTree('files');
  const dest = join(base, 'fdest');
  await mkdir(dest);
  await copyGuestToHost(d.client, 'dev', join(src, 'run.sh'), dest, MINE);
  assert.equal(await modeOf(join(dest, 'run.sh')), 0o750);
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'key'), MINE);
  assert.equal(await readFile(join(dest, 'key'), 'utf8'), 'k');
  await writeFile(join(dest, 'old'), 'old');
  // A symlink at the destination is replaced, never written through.
  await symlink(join(base, 'link-target'), join(dest, 'via-link'));
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'old'), MINE);
  await copyGuestToHost(d.client, 'dev', join(src, 'sub/secret'), join(dest, 'via-link'), MINE);
  assert.equal(await readFile(join(dest, 'old'), 'utf8'), 'k');
  assert.ok((await lstat(join(dest, 'via-link'))).isFile());
  await assert.rejects(stat(join(base, 'link-target')));
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', src, join(dest, 'old'), MINE)), 'conflict');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'run.sh'), join(base, 'no/such/dir/x'), MINE)), 'not_found');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'missing'), dest, MINE)), 'not_found');
  assert.equal(await codeOf(copyGuestToHost(d.client, 'dev', join(src, 'sub/link'), dest, MINE)), 'bad_request');
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

  await copyHostToGuest(d.client, src, 'dev', gdest, MINE);
  assert.equal(await modeOf(join(gdest, 'hsrc/bin/tool')), 0o755);
  assert.equal(await modeOf(join(gdest, 'hsrc/conf')), 0o640);
  assert.equal(await modeOf(join(gdest, 'hsrc/bin')), 0o750);
  assert.equal(await readlink(join(gdest, 'hsrc/tool-link')), 'bin/tool');

  await copyHostToGuest(d.client, src, 'dev', join(gdest, 'app'), MINE);
  assert.equal(await readFile(join(gdest, 'app/conf'), 'utf8'), 'x=1');

  const contents = join(guest, 'contents');
  await mkdir(contents);
  await copyHostToGuest(d.client, `${src}/.`, 'dev', contents, MINE);
  assert.deepEqual((await readdir(contents)).sort(), ['bin', 'conf', 'tool-link']);

  await copyHostToGuest(d.client, join(src, 'conf'), 'dev', join(gdest, 'renamed.conf'), MINE);
  assert.equal(await modeOf(join(gdest, 'renamed.conf')), 0o640);
  assert.equal(await readFile(join(gdest, 'renamed.conf'), 'utf8'), 'x=1');

  assert.equal(await codeOf(copyHostToGuest(d.client, src, 'dev', join(gdest, 'renamed.conf'), MINE)), 'conflict');
  assert.equal(await codeOf(copyHostToGuest(d.client, join(src, 'conf'), 'dev', join(guest, 'absent/x'), MINE)), 'not_found');
  assert.equal(await codeOf(copyHostToGuest(d.client, join(base, 'nope'), 'dev', gdest, MINE)), 'not_found');
});

// ---- owners and modes: only -a keeps what the guest says ---------------------------------

test("guest → host without -a: a root CLI does NOT keep the guest's owners; with -a it does", async (t) => {
  if (process.getuid?.() !== 0) return t.skip('the owners a root CLI could set are only observable as root');
  hostile.archive = await tarOf([
    { name: 'x', type: 'directory', uid: 1234, gid: 2345 },
    { name: 'x/f', body: 'y', uid: 1234, gid: 2345 },
    { name: 'x/l', type: 'symlink', linkname: 'f', uid: 1234, gid: 2345 },
  ]);
  const hdest = join(base, 'owned-host');
  await mkdir(hdest);
  const me = [process.getuid?.(), process.getgid?.()];
  // Through the CLI's entry point, as `banger vm cp evil:/root/x DEST` run by root.
  await runCp(d.client, 'evil:/root/x', join(hdest, 'mine'), {});
  for (const p of ['mine', 'mine/f', 'mine/l']) {
    const st = await lstat(join(hdest, p));
    assert.deepEqual([st.uid, st.gid], me, `${p} belongs to the calling user`);
  }
  await runCp(d.client, 'evil:/root/x', join(hdest, 'kept'), { archive: true });
  for (const p of ['kept', 'kept/f', 'kept/l']) {
    const st = await lstat(join(hdest, p));
    assert.deepEqual([st.uid, st.gid], [1234, 2345], `${p} keeps the guest's owner under -a`);
  }
});

test('host → guest: owners travel only with -a', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('chown needs root');
  const src = join(base, 'owned');
  await mkdir(src);
  await writeFile(join(src, 'f'), 'x');
  await chown(join(src, 'f'), 1234, 2345);
  const gdest = join(guest, 'owned-dest');
  await mkdir(gdest);
  await runCp(d.client, src, `dev:${join(gdest, 'plain')}`, {});
  assert.deepEqual([(await lstat(join(gdest, 'plain/f'))).uid, (await lstat(join(gdest, 'plain/f'))).gid], [0, 0]);
  await runCp(d.client, src, `dev:${gdest}`, { archive: true });
  assert.deepEqual([(await lstat(join(gdest, 'owned/f'))).uid, (await lstat(join(gdest, 'owned/f'))).gid], [1234, 2345]);
});

/** A guest tree whose modes ask for everything: world-writable, setuid/setgid, sticky, and a directory without owner bits. */
const GREEDY_MODES: TarEntry[] = [
  { name: 'x', type: 'directory', mode: 0o777 },
  { name: 'x/open.sh', body: '#!/bin/sh\n', mode: 0o777 },
  { name: 'x/suid', body: 'ELF', mode: 0o6777 },
  { name: 'x/tmp', type: 'directory', mode: 0o1777 },
  { name: 'x/tmp/plain', body: 'p', mode: 0o666 },
  { name: 'x/closed', type: 'directory', mode: 0o070 }, // (tar-stream writes a 0 mode as the default)
];

async function modesUnder(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const p of ['', 'open.sh', 'suid', 'tmp', 'tmp/plain', 'closed']) out[p || '.'] = await modeOf(join(dir, p));
  return out;
}

test("guest → host without -a: the guest's modes are masked by the umask; setuid/setgid/sticky never survive, even with -a", async () => {
  hostile.archive = await tarOf(GREEDY_MODES);
  const hdest = join(base, 'modes');
  await mkdir(hdest);
  const saved = process.umask(0o022);
  try {
    // The CLI's entry point takes this process's umask.
    await runCp(d.client, 'evil:/root/x', join(hdest, 'u022'), {});
  } finally {
    process.umask(saved);
  }
  assert.deepEqual(await modesUnder(join(hdest, 'u022')), {
    '.': 0o755,
    'open.sh': 0o755,
    suid: 0o755,
    tmp: 0o755,
    'tmp/plain': 0o644,
    closed: 0o750, // directories stay owner-writable, so the user can always remove the tree
  });
  await copyGuestToHost(d.client, 'evil', '/root/x', join(hdest, 'u077'), { archive: false, umask: 0o077 });
  assert.deepEqual(await modesUnder(join(hdest, 'u077')), { '.': 0o700, 'open.sh': 0o700, suid: 0o700, tmp: 0o700, 'tmp/plain': 0o600, closed: 0o700 });

  // Nothing group- or world-writable, nothing set-id, anywhere in what landed without -a.
  for (const p of await walk(hdest)) assert.equal((await lstat(p)).mode & 0o7022, 0, `${p} has mode ${(await modeOf(p)).toString(8)}`);

  if (process.getuid?.() !== 0) {
    // -a keeps owners, which only root can set on the host: refused before anything is asked.
    assert.equal(await codeOf(copyGuestToHost(d.client, 'evil', '/root/x', join(hdest, 'archive'), { archive: true })), 'bad_request');
    return;
  }
  await copyGuestToHost(d.client, 'evil', '/root/x', join(hdest, 'archive'), { archive: true });
  assert.deepEqual(await modesUnder(join(hdest, 'archive')), { '.': 0o777, 'open.sh': 0o777, suid: 0o777, tmp: 0o777, 'tmp/plain': 0o666, closed: 0o770 });
});

// ---- guest paths with `..`: never resolved, never allowed to name the receiving directory ------

test('guest → host from a path ending in ".." (a HOSTILE guest answers it with a directory and an empty tar): refused, the user\'s files stay put', async () => {
  const root = join(base, 'dotdot');
  const dest = join(root, 'dest');
  await mkdir(join(dest, 'work'), { recursive: true });
  await writeFile(join(dest, 'mine.txt'), CANARY);
  await writeFile(join(dest, 'work/notes'), CANARY);
  hostile.archive = await tarOf([]);
  hostile.asked.length = 0;
  const before = await walk(root);

  for (const src of ['evil:/root/x/..', 'evil:x/..', 'evil:..', 'evil:/root/../root/x', 'evil:/root/x/../.'])
    assert.equal(await codeOf(runCp(d.client, src, dest, {})), 'bad_request', src);
  for (const src of ['/root/x/..', '/root/x/../', '/..', '/root/../x'])
    assert.equal(await codeOf(copyGuestToHost(d.client, 'evil', src, dest, MINE)), 'bad_request', src);

  assert.deepEqual(await walk(root), before, 'nothing moved, nothing left');
  assert.equal(await readFile(join(dest, 'mine.txt'), 'utf8'), CANARY);
  assert.equal(await readFile(join(dest, 'work/notes'), 'utf8'), CANARY);
  assert.deepEqual(hostile.asked, [], 'refused before the guest was asked anything');
});

test('host → guest onto a path with ".." is refused before the guest is asked', async () => {
  const src = join(base, 'dd-src');
  await writeFile(src, 'x');
  hostile.asked.length = 0;
  assert.equal(await codeOf(runCp(d.client, src, 'evil:/root/x/..', {})), 'bad_request');
  assert.equal(await codeOf(copyHostToGuest(d.client, src, 'evil', '/root/../etc', MINE)), 'bad_request');
  assert.deepEqual(hostile.asked, []);
});

// ---- bounds -----------------------------------------------------------------------------------

test('guest → host: a HOSTILE endless tar is refused at the entry limit, read no further, and leaves nothing', async () => {
  // The CLI's bound (a real 1,000,001-entry stream takes minutes here; the limit is lowered for the test).
  assert.equal(CP_MAX_ENTRIES, 1_000_000);
  const maxEntries = 5000;
  const root = join(base, 'flood');
  const dest = join(root, 'dest');
  await mkdir(dest, { recursive: true });
  // The same directory header again and again: the cheapest entry for the guest to send.
  const header = (await tarOf([{ name: 'x', type: 'directory' }])).subarray(0, 512);
  const perChunk = 256;
  const chunk = Buffer.concat(Array.from({ length: perChunk }, () => header));
  let sent = 0;
  hostile.archiveStream = () =>
    Readable.from(
      (function* () {
        // Endless (up to a safety stop far past the limit): the copy must end on its own count.
        while (sent < 100 * maxEntries) {
          sent += perChunk;
          yield chunk;
        }
      })(),
    );
  try {
    const e = await copyGuestToHost(d.client, 'evil', '/root/x', dest, { ...MINE, limits: { maxEntries } }).then(
      () => assert.fail('accepted'),
      (err: unknown) => err,
    );
    assert.ok(e instanceof BangerError && e.code === 'rejected_content', String(e));
    assert.match(e.message, /more than 5000 entries/);
  } finally {
    hostile.archiveStream = undefined;
  }
  assert.ok(sent < 100 * maxEntries, `the stream was not read to its end (${sent} entries produced)`);
  assert.deepEqual(await walk(root), [dest], 'no copy and no staging directory left');
});
