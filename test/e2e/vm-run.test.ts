import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readdirSync, readFileSync } from 'node:fs';
import { link, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { Image, Vm } from '../../src/api/schemas.js';
import { BANGER, guestAssets, runProcess, TestHome } from '../helpers/banger.js';
import { duplicateNameExt4, rdumpTheOldWay } from '../helpers/hostile-ext4.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/**
 * `vm run` on a host that has never seen the default image: the image catalog points
 * debian-bookworm at a bundle (the test rootfs as .tar.zst, served from a file), so the first run
 * pulls it as a stage of the create.
 */
describe('vm run', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let work: string;

  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    work = await mkdtemp(join(tmpdir(), 'bg-bundle-'));
    await link(a.rootfs, join(work, 'rootfs.ext4')).catch(() => execFileSync('cp', ['--reflink=auto', a.rootfs, join(work, 'rootfs.ext4')]));
    await writeFile(join(work, 'manifest.json'), JSON.stringify({ format: 1, rootfs: 'rootfs.ext4', kernel: 'debian-cloud' }));
    execFileSync('sh', ['-c', 'tar -C "$1" -cf - manifest.json rootfs.ext4 | zstd -q -1 -T0 -o "$1/bundle.tar.zst"', 'sh', work]);
    const catalog = {
      images: [
        {
          name: 'debian-bookworm',
          kernel: 'debian-cloud',
          description: 'test bundle',
          source: { kind: 'bundle', url: `file://${work}/bundle.tar.zst`, sha256: await sha256Of(join(work, 'bundle.tar.zst')) },
        },
      ],
    };
    await writeFile(join(work, 'catalog.json'), JSON.stringify(catalog));
    home = await TestHome.create(`accel = "tcg"\nimage_catalogs = ["${work}/catalog.json"]\n`, { netns: true });
    // The catalog's kernel, installed as a user who already pulled it would have it.
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
  });
  after(async () => {
    await home?.destroy();
    await rm(work, { recursive: true, force: true });
  });

  test('first run pulls the default image, runs the command, prints the guest kernel and deletes the VM', async () => {
    const a = assets as NonNullable<typeof assets>;
    const r = await home.banger(['vm', 'run', '--rm', '--', 'uname', '-r']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), a.kernelVersion);
    assert.match(r.stderr, /pull image/);
    assert.match(r.stderr, /deleted /);
    const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    assert.deepEqual(vms, []);
    const img = await home.json<Image>(['image', 'show', 'debian-bookworm']);
    assert.equal(img.managed, true);
    assert.equal(img.source, 'catalog:debian-bookworm bundle');
    const catalog = await home.json<{ images: Array<{ name: string; pulled: boolean }> }>(['image', 'list', '--available']);
    assert.equal(catalog.images.find((e) => e.name === 'debian-bookworm')?.pulled, true);
  });

  test('the command’s exit status is the exit status of vm run; the image is not pulled again; --memory sizes the guest', async () => {
    const r = await home.banger([
      'vm',
      'run',
      '--rm',
      '--name',
      'seven',
      '--memory',
      '384M',
      '--',
      'sh',
      '-c',
      "awk '/^MemTotal:/ { print $2 }' /proc/meminfo; exit 7",
    ]);
    assert.equal(r.code, 7, r.stderr);
    // The default is at least 512 MiB (RAM/8, [vm_defaults] unset): MemTotal, a little under what
    // the guest was given, is nearer the 384 MiB asked for than any default.
    const memTotalMib = Number(r.stdout.trim()) / 1024;
    assert.ok(Math.abs(memTotalMib - 384) < Math.abs(memTotalMib - 512), `MemTotal ${memTotalMib} MiB after --memory 384M`);
    assert.doesNotMatch(r.stderr, /pull image/);
    assert.match(r.stderr, /deleted seven/);
  });

  test('bare vm run opens a shell (fed from stdin here, no TTY) and exits with its status', async () => {
    const a = assets as NonNullable<typeof assets>;
    const r = await runProcess(
      'ip',
      ['netns', 'exec', home.netns as string, process.execPath, BANGER, 'vm', 'run', '--rm', '--name', 'shell'],
      { env: home.env },
      600_000,
      'uname -r\nexit 3\n',
    );
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout.trim(), a.kernelVersion);
    assert.match(r.stderr, /deleted shell/);
  });

  test('--detach leaves the VM running and says how to reach it', async () => {
    const r = await home.banger(['vm', 'run', '-d', '--name', 'keep']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /banger vm ssh keep/);
    assert.equal((await home.json<Vm>(['vm', 'show', 'keep'])).state, 'running');
    const bad = await home.banger(['vm', 'run', '-d', '--rm']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--rm and --detach/);
    await home.ok(['vm', 'delete', 'keep']);
  });

  test('image build runs a script in a VM and saves root disk and /root as a new image; a failing script saves nothing', async () => {
    await writeFile(
      join(work, 'ok.sh'),
      'set -e\necho building\nprintf "#!/bin/sh\\necho hello from the build\\n" > /usr/local/bin/hello\nchmod 755 /usr/local/bin/hello\necho seed > /root/marker\n',
    );
    const b = await home.banger(['image', 'build', '--from', 'debian-bookworm', '--script', join(work, 'ok.sh'), '--name', 'built', '--no-nat']);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stderr, /\| building/, 'the script output is streamed');
    const img = await home.json<Image>(['image', 'show', 'built']);
    assert.equal(img.managed, true);
    assert.equal(img.source, 'build:from debian-bookworm');
    const r = await home.banger(['vm', 'run', '--rm', '--image', 'built', '--', 'sh', '-c', 'hello && cat /root/marker']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'hello from the build\nseed');

    await writeFile(join(work, 'bad.sh'), 'echo about to fail\nexit 3\n');
    const f = await home.banger(['image', 'build', '--from', 'debian-bookworm', '--script', join(work, 'bad.sh'), '--name', 'broken', '--no-nat']);
    assert.equal(f.code, 1);
    assert.match(f.stderr, /exited with status 3; no image was saved/);
    const logPath = /read the log: (\S+)/.exec(f.stderr)?.[1] as string;
    assert.match(readFileSync(logPath, 'utf8'), /about to fail/);
    const { images } = await home.json<{ images: Image[] }>(['image', 'list']);
    assert.deepEqual(images.map((i) => i.name).sort(), ['built', 'debian-bookworm']);
    assert.deepEqual((await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms, [], 'build VMs are deleted');
  });

  test('a hostile build guest (crafted work disk, a 20 MB line) changes nothing outside the state dir; the daemon keeps answering', async () => {
    const canaryDir = await mkdtemp(join(tmpdir(), 'bg-canary-'));
    const evil = join(work, 'evil-work.ext4');
    await duplicateNameExt4(evil, { hostTarget: join(canaryDir, 'written-by-the-guest'), payload: 'pwned\n' });
    // Positive control, at another target: the old save path (debugfs rdump of the work disk) writes through the link.
    const controlDir = await mkdtemp(join(tmpdir(), 'bg-control-'));
    const control = join(work, 'control-work.ext4');
    await duplicateNameExt4(control, { hostTarget: join(controlDir, 'written-by-the-guest'), payload: 'pwned\n' });
    const out = await mkdtemp(join(tmpdir(), 'bg-rdump-'));
    rdumpTheOldWay(control, '/', out);
    assert.deepEqual(readdirSync(controlDir), ['written-by-the-guest'], 'control: the crafted disk is hostile to the old save path');

    const image = gzipSync(readFileSync(evil)).toString('base64');
    await writeFile(
      join(work, 'evil.sh'),
      `set -e\nhead -c 20000000 /dev/zero | tr '\\0' a\necho\nbase64 -d <<'EOF' | gunzip -c | dd of=/dev/vdb bs=1M conv=fsync status=none\n${image}\nEOF\necho wrote the crafted work disk\n`,
    );
    const b = await home.banger(['image', 'build', '--from', 'debian-bookworm', '--script', join(work, 'evil.sh'), '--name', 'evil-build', '--no-nat']);
    // Saving the image or failing cleanly are both fine; the host is what is checked.
    if (b.code !== 0) assert.match(b.stderr, /no image was saved/, b.stderr.slice(-2000));
    assert.deepEqual(readdirSync(canaryDir), [], 'nothing was written through the guest’s symlink');
    assert.deepEqual((await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms, [], 'the build VM is deleted');
    const logPath = /build log: (\S+)/.exec(b.stderr)?.[1] as string;
    const log = readFileSync(logPath, 'utf8');
    assert.match(log, /\[… \d+ more bytes of this line dropped\]/, 'the 20 MB line is cut');
    assert.ok(log.length < 1024 * 1024, `build log is ${log.length} bytes`);
    assert.equal((await home.banger(['daemon', 'status'])).code, 0, 'the daemon still answers');
    await rm(canaryDir, { recursive: true, force: true });
    await rm(controlDir, { recursive: true, force: true });
    await rm(out, { recursive: true, force: true });
  });
});
