import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstat, mkdtemp, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { buildCpioGz, type CpioEntry, completeTree, writeCpio } from '../../src/guest/cpio.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { requires } from '../helpers/prereq.js';

/** The archives are checked with GNU cpio itself: it is what "the format is right" means. */
const hasCpio = spawnSync('cpio', ['--version']).status === 0;
const skip = requires(hasCpio, 'host cpio is not installed (apt-get install cpio)');
const runner = new ProcessRunner();
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const sample: CpioEntry[] = [
  { type: 'file', path: '/init', mode: 0o755, data: '#!/bin/sh\necho hi\n' },
  { type: 'file', path: 'etc/ssh/ssh_host_ed25519_key', mode: 0o600, data: Buffer.from([0, 1, 2, 3, 255]) },
  { type: 'file', path: 'usr/bin/suid', mode: 0o4755, data: 'x' },
  { type: 'file', path: 'empty', mode: 0o644, data: '' },
  { type: 'dir', path: 'root', mode: 0o700 },
  { type: 'symlink', path: 'etc/systemd/system/multi-user.target.wants/a.service', target: '/etc/systemd/system/a.service' },
  { type: 'symlink', path: 'lib', target: 'usr/lib' },
  // Names of every length mod 4 exercise the header/name padding.
  { type: 'file', path: 'p/a', mode: 0o644, data: '1' },
  { type: 'file', path: 'p/ab', mode: 0o644, data: '12' },
  { type: 'file', path: 'p/abc', mode: 0o644, data: '123' },
  { type: 'file', path: 'p/abcd', mode: 0o644, data: '1234' },
];

describe('cpio newc writer', { skip }, () => {
  test('GNU cpio lists every entry with its type, mode and owner', async () => {
    const archive = writeCpio(completeTree([...sample, { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 }]));
    assert.equal(archive.length % 4, 0);
    // Listed in UTC: mtime 0 must read as 1 Jan 1970 whatever the host's zone.
    const r = await runner.run('cpio', ['-itv', '--quiet'], { input: archive, env: { ...process.env, TZ: 'UTC' } });
    const lines = r.stdout.trim().split('\n');
    const entry = (name: string) => {
      const line = lines.find((l) => l.endsWith(` ${name}`) || l.includes(` ${name} -> `));
      assert.ok(line, `${name} listed in:\n${r.stdout}`);
      return line;
    };
    assert.match(entry('init'), /^-rwxr-xr-x\s+1 root\s+root\s+18 /);
    assert.match(entry('etc/ssh/ssh_host_ed25519_key'), /^-rw-------/);
    assert.match(entry('usr/bin/suid'), /^-rwsr-xr-x/);
    assert.match(entry('root'), /^drwx------/);
    assert.match(entry('etc/ssh'), /^drwxr-xr-x/, 'missing parents are added as 0755 directories');
    assert.match(entry('lib'), /^lrwxrwxrwx.* lib -> usr\/lib$/);
    assert.match(entry('dev/console'), /^crw-------\s+1 root\s+root\s+5,\s+1 /);
    assert.match(entry('init'), / Jan {1,2}1 {2}1970 /, 'mtime 0');
    // Parents precede children (the kernel does not create missing directories).
    const names = lines.map((l) =>
      l
        .replace(/ -> .*$/, '')
        .split(' ')
        .pop(),
    );
    for (const [i, n] of names.entries()) {
      const parent = n?.split('/').slice(0, -1).join('/');
      if (parent) assert.ok(names.indexOf(parent) < i, `${parent} before ${n}`);
    }
  });

  test('GNU cpio extracts the same bytes, modes and symlink targets', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cpio-test-'));
    dirs.push(dir);
    const gz = buildCpioGz(sample);
    await runner.run('cpio', ['-idm', '--quiet', '--no-absolute-filenames', '-D', dir], { input: gunzipSync(gz) });
    assert.equal(await readFile(join(dir, 'init'), 'utf8'), '#!/bin/sh\necho hi\n');
    assert.deepEqual([...(await readFile(join(dir, 'etc/ssh/ssh_host_ed25519_key')))], [0, 1, 2, 3, 255]);
    assert.equal(await readFile(join(dir, 'empty'), 'utf8'), '');
    for (const [n, body] of [
      ['a', '1'],
      ['ab', '12'],
      ['abc', '123'],
      ['abcd', '1234'],
    ]) {
      assert.equal(await readFile(join(dir, 'p', n as string), 'utf8'), body);
    }
    const mode = async (p: string) => (await lstat(join(dir, p))).mode & 0o7777;
    assert.equal(await mode('init'), 0o755);
    assert.equal(await mode('etc/ssh/ssh_host_ed25519_key'), 0o600);
    assert.equal(await mode('root'), 0o700);
    assert.equal(await readlink(join(dir, 'lib')), 'usr/lib');
    assert.equal(await readlink(join(dir, 'etc/systemd/system/multi-user.target.wants/a.service')), '/etc/systemd/system/a.service');
    assert.equal((await lstat(join(dir, 'init'))).mtimeMs, 0);
  });
});

test('the same tree always gives the same bytes, whatever the input order', () => {
  const a = buildCpioGz(sample);
  const b = buildCpioGz([...sample].reverse());
  assert.ok(a.equals(b));
});

test('the archive ends with the TRAILER!!! member', () => {
  const archive = writeCpio([{ type: 'file', path: 'x', mode: 0o644, data: 'y' }]);
  const text = archive.toString('latin1');
  assert.ok(text.startsWith('070701'));
  assert.match(text, /070701[0-9a-f]{104}TRAILER!!!\0+$/);
});

test('a later entry for a path replaces an earlier one', () => {
  const tree = completeTree([
    { type: 'file', path: 'etc/hostname', mode: 0o644, data: 'a' },
    { type: 'file', path: '/etc/hostname', mode: 0o600, data: 'b' },
  ]);
  assert.deepEqual(
    tree.map((e) => e.path),
    ['etc', 'etc/hostname'],
  );
  assert.deepEqual(tree[1], { type: 'file', path: 'etc/hostname', mode: 0o600, data: 'b' });
});

test('bad paths and modes are refused', () => {
  assert.throws(() => writeCpio([{ type: 'file', path: '../etc/passwd', mode: 0o644, data: '' }]), /contains "\.\."/);
  assert.throws(() => writeCpio([{ type: 'dir', path: '/', mode: 0o755 }]), /empty path/);
  assert.throws(() => writeCpio([{ type: 'file', path: 'x', mode: 0o10000, data: '' }]), /bad mode/);
  assert.throws(
    () =>
      completeTree([
        { type: 'file', path: 'a', mode: 0o644, data: '' },
        { type: 'file', path: 'a/b', mode: 0o644, data: '' },
      ]),
    /both a file and a parent directory/,
  );
});
