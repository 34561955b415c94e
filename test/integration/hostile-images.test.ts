import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Vm } from '../../src/api/schemas.js';
import { TestHome } from '../helpers/banger.js';
import { duplicateNameExt4, rdumpTheOldWay } from '../helpers/hostile-ext4.js';

/** Every path under `dir` (no links followed). */
function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) out.push(...walk(p));
  }
  return out;
}

function ls(image: string, dir: string): string {
  return execFileSync('debugfs', ['-R', `ls -l ${dir}`, image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
}

/**
 * Images are hostile (actor I): a registered or bundled rootfs is a filesystem someone else wrote.
 * The host must never copy a tree out of it; VMs seed their work disk from the image's /root inside
 * the guest. Each test builds the hostile filesystem, shows that the old extraction (debugfs rdump,
 * then mkfs.ext4 -d) does reach the host, then feeds it to banger and checks the host.
 */
describe('hostile image filesystems never reach the host', () => {
  let home: TestHome;
  let scratch: string;

  before(async () => {
    home = await TestHome.create('accel = "tcg"\n');
    scratch = await mkdtemp('/tmp/banger-hostile-images-');
    const kdir = join(scratch, 'kernel');
    await mkdir(kdir);
    await writeFile(join(kdir, 'vmlinux'), 'not really a kernel: nothing here boots');
    await home.ok(['kernel', 'import', 'k', '--from', kdir]);
  });
  after(async () => {
    await home?.destroy();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  test('a rootfs whose /root is a symlink to a host directory: nothing of that directory reaches a VM', async () => {
    const secrets = join(scratch, 'host-secrets');
    await mkdir(secrets);
    await writeFile(join(secrets, 'id_rsa'), 'HOST PRIVATE KEY\n');
    const rootfs = join(scratch, 'root-link.ext4');
    execFileSync('truncate', ['-s', '16M', rootfs]);
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs], { stdio: 'ignore' });
    await writeFile(join(scratch, 'cmds'), `symlink root ${secrets}\n`);
    execFileSync('debugfs', ['-w', '-f', join(scratch, 'cmds'), rootfs], { stdio: 'ignore' });

    // Positive control: the old way (rdump /root, then mkfs.ext4 -d of it) puts the host's files in the work disk.
    const old = join(scratch, 'old-way');
    await mkdir(old);
    rdumpTheOldWay(rootfs, '/root', old);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', join(old, 'root'), join(scratch, 'old-work.ext4'), '16M'], { stdio: 'ignore' });
    assert.match(ls(join(scratch, 'old-work.ext4'), '/'), /id_rsa/, 'control: the input is hostile to the old extraction');

    await home.ok(['image', 'register', '--name', 'root-link', '--rootfs', rootfs, '--kernel-ref', 'k']);
    const vm = await home.json<Vm>(['vm', 'create', '--name', 'rl', '--image', 'root-link', '--no-start', '--disk-size', '256M', '--json']);
    // The work disk's bottom layer: the raw ext4 the host made (docs/snapshots.md); the only .ext4 layer of this one VM.
    const layers = join(home.dir, 'state', 'layers');
    const bases = readdirSync(layers).filter((f) => f.endsWith('.ext4'));
    assert.equal(bases.length, 1, `one raw work base for ${vm.name}: ${bases.join(', ')}`);
    const work = join(layers, bases[0] as string);
    assert.ok(existsSync(work));
    assert.doesNotMatch(ls(work, '/'), /id_rsa/, 'the work disk is created empty by the host');
    for (const p of walk(join(home.dir, 'state'))) assert.ok(!p.endsWith('id_rsa'), `host secret copied into the state dir: ${p}`);
    assert.deepEqual(readdirSync(secrets), ['id_rsa']);
    await home.ok(['vm', 'delete', 'rl']);
  });

  test('a rootfs whose /root holds a symlink and a file of the same name: nothing is written through the link', async () => {
    const canaryDir = join(scratch, 'canary');
    await mkdir(canaryDir);
    const rootfs = join(scratch, 'dup-names.ext4');
    await duplicateNameExt4(rootfs, { dir: '/root', hostTarget: join(canaryDir, 'written-by-the-image'), payload: 'pwned\n', sizeMiB: 16 });

    // Positive control, against another target path: the old extraction writes through the link.
    const controlDir = join(scratch, 'control');
    await mkdir(controlDir);
    const control = join(scratch, 'control.ext4');
    await duplicateNameExt4(control, { dir: '/root', hostTarget: join(controlDir, 'written-by-the-image'), payload: 'pwned\n', sizeMiB: 16 });
    const old = join(scratch, 'old-dup');
    await mkdir(old);
    rdumpTheOldWay(control, '/root', old);
    assert.equal(await readFile(join(controlDir, 'written-by-the-image'), 'utf8'), 'pwned\n', 'control: the input is hostile to the old extraction');

    await home.ok(['image', 'register', '--name', 'dup-names', '--rootfs', rootfs, '--kernel-ref', 'k']);
    await home.ok(['vm', 'create', '--name', 'dn', '--image', 'dup-names', '--no-start', '--disk-size', '256M']);
    assert.deepEqual(readdirSync(canaryDir), [], 'nothing was written through the image’s symlink');
    await home.ok(['vm', 'delete', 'dn']);
    await home.ok(['image', 'delete', 'dup-names']);
    assert.ok(existsSync(rootfs), 'a registered rootfs stays where it is');
  });

  test('a bundle whose manifest.json is a symlink to a host file is refused; nothing is published', async () => {
    const b = join(scratch, 'bundle-link');
    await mkdir(b);
    // The link points at a file that would pass as a manifest, so only the link itself can be refused.
    const hostManifest = join(scratch, 'host-manifest.json');
    await writeFile(hostManifest, JSON.stringify({ format: 1, rootfs: 'rootfs.ext4', kernel: 'k' }));
    execFileSync('truncate', ['-s', '16M', join(b, 'rootfs.ext4')]);
    execFileSync('mkfs.ext4', ['-q', '-F', join(b, 'rootfs.ext4')], { stdio: 'ignore' });
    execFileSync('ln', ['-s', hostManifest, join(b, 'manifest.json')]);
    execFileSync('sh', ['-c', 'cd "$1" && tar -cf - manifest.json rootfs.ext4 | zstd -q -1 -o ../bundle-link.tar.zst', 'sh', b]);
    const sha = execFileSync('sha256sum', [join(scratch, 'bundle-link.tar.zst')])
      .toString()
      .split(' ')[0];
    await writeFile(
      join(scratch, 'catalog.json'),
      JSON.stringify({
        images: [
          { name: 'linked', kernel: 'k', description: 'hostile bundle', source: { kind: 'bundle', url: `file://${scratch}/bundle-link.tar.zst`, sha256: sha } },
        ],
      }),
    );
    await writeFile(home.configFile, `accel = "tcg"\nimage_catalogs = ["${scratch}/catalog.json"]\n`);
    await home.banger(['daemon', 'restart']);
    const r = await home.banger(['image', 'pull', 'linked']);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /link/i);
    const { images } = await home.json<{ images: Array<{ name: string }> }>(['image', 'list']);
    assert.ok(!images.some((i) => i.name === 'linked'));
    assert.deepEqual(
      readdirSync(join(home.dir, 'state', 'staging')).filter((n) => n !== 'scratch'),
      [],
    );
  });
});
