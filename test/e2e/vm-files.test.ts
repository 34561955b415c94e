/**
 * `vm cp` and `[[file_sync]]` on a real VM (QEMU, TCG) through the real CLI and daemon: modes kept
 * both ways, a tree round-tripped, synced files at create and again at every start, a missing host
 * path reported as a warning.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function manifest(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name);
      const st = await lstat(p);
      const rel = relative(root, p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out[rel] = `dir ${mode}`;
        await walk(p);
      } else if (st.isSymbolicLink()) out[rel] = `link -> ${await readlink(p)}`;
      else out[rel] = `file ${mode} ${sha(await readFile(p))}`;
    }
  };
  await walk(root);
  return out;
}

describe('vm cp and file sync on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let src: string;

  before(async () => {
    src = await mkdtemp('/tmp/bg-fsrc-');
    await writeFile(join(src, 'token'), 'v1');
    await chmod(join(src, 'token'), 0o644);
    await mkdir(join(src, 'agent/sub'), { recursive: true });
    await writeFile(join(src, 'agent/auth.json'), '{"token":"x"}');
    await writeFile(join(src, 'agent/sub/run'), '#!/bin/sh\n');
    await chmod(join(src, 'agent/sub/run'), 0o755);
    await chmod(join(src, 'agent/sub'), 0o750);
    const config = [
      'accel = "tcg"',
      '[vm_defaults]',
      'vcpu = 2',
      'memory_mib = 512',
      'disk_size = "1G"',
      '[[file_sync]]',
      `host = "${join(src, 'not-there')}"`,
      'guest = "/root/never"',
      '[[file_sync]]',
      `host = "${join(src, 'token')}"`,
      'guest = "/root/.secrets/token"',
      'mode = "0600"',
      '[[file_sync]]',
      `host = "${join(src, 'agent')}"`,
      'guest = "/root/.config/agent"',
      '',
    ].join('\n');
    home = await TestHome.create(config, { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k']);
  });
  after(async () => {
    await home?.destroy();
    if (src) await rm(src, { recursive: true, force: true });
  });

  test('file_sync at create: files with the entry mode, a directory with its modes; a missing host path is a warning', async () => {
    const c = await home.banger(['vm', 'create', '--name', 'files']);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stderr, /file_sync: .*not-there does not exist on the host; skipped/);
    const out = join(home.dir, 'out1');
    await mkdir(out);
    await home.ok(['vm', 'cp', 'files:/root/.secrets/token', join(out, 'token')]);
    assert.equal(await readFile(join(out, 'token'), 'utf8'), 'v1');
    assert.equal((await lstat(join(out, 'token'))).mode & 0o777, 0o600);
    await home.ok(['vm', 'cp', 'files:/root/.config/agent', out]);
    assert.deepEqual(await manifest(join(out, 'agent')), await manifest(join(src, 'agent')));
    assert.notEqual((await home.banger(['vm', 'cp', 'files:/root/never', join(out, 'never')])).code, 0);
  });

  test('vm cp round-trips a tree with modes, links and a large file', async () => {
    const tree = join(home.dir, 'tree');
    await mkdir(join(tree, 'a/b'), { recursive: true });
    await writeFile(join(tree, 'a/b/big.bin'), randomBytes(8 * 1024 * 1024));
    await writeFile(join(tree, 'run.sh'), '#!/bin/sh\necho hi\n');
    await chmod(join(tree, 'run.sh'), 0o755);
    await writeFile(join(tree, 'a/secret'), 's');
    await chmod(join(tree, 'a/secret'), 0o600);
    await chmod(join(tree, 'a/b'), 0o750);
    await symlink('../run.sh', join(tree, 'a/link'));
    await home.ok(['vm', 'cp', tree, 'files:/root/']);
    const back = join(home.dir, 'back');
    await home.ok(['vm', 'cp', 'files:/root/tree', back]);
    assert.deepEqual(await manifest(back), await manifest(tree));
    // A single file onto a new name, and "dir/." into an existing directory.
    await home.ok(['vm', 'cp', join(tree, 'run.sh'), 'files:/root/renamed.sh']);
    const into = join(home.dir, 'into');
    await mkdir(into);
    await home.ok(['vm', 'cp', 'files:/root/tree/.', into]);
    assert.deepEqual((await readdir(into)).sort(), ['a', 'run.sh']);
    await home.ok(['vm', 'cp', 'files:/root/renamed.sh', join(into, 'r.sh')]);
    assert.equal((await lstat(join(into, 'r.sh'))).mode & 0o777, 0o755);
  });

  test('every start copies again: a changed host file reaches the guest after a restart', async () => {
    await writeFile(join(src, 'token'), 'v2');
    await home.ok(['vm', 'restart', 'files']);
    const out = join(home.dir, 'out2');
    await mkdir(out);
    await home.ok(['vm', 'cp', 'files:/root/.secrets/token', out]);
    assert.equal(await readFile(join(out, 'token'), 'utf8'), 'v2');
  });
});
