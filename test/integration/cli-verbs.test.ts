import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Vm } from '../../src/api/schemas.js';
import { BANGER, guestAssets, runProcess, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * CLI verbs that need no booted VM, through the real CLI and daemon: `ssh-config --install/--uninstall`
 * against a temporary HOME, refusing to delete an image or kernel a VM uses, `daemon ops` with real
 * operations, and `vm prune`'s confirmation (no TTY, then a real pseudo-terminal answering n and y).
 * VMs are created with --no-start: nothing boots, no network is touched.
 */
const assets = guestAssets();
const hasScript = existsSync('/usr/bin/script');

interface Op {
  id: string;
  kind: string;
  target: string | null;
  state: string;
}
interface Image {
  name: string;
  rootfsPath: string;
}
interface Kernel {
  name: string;
  kernelPath: string;
}

describe('CLI verbs without a boot', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let userHome: string;

  before(async () => {
    home = await TestHome.create('[vm_defaults]\nvcpu = 1\nmemory_mib = 256\ndisk_size = "256M"\n');
    userHome = await mkdtemp(join(tmpdir(), 'bg-user-home-'));
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'k']);
  });
  after(async () => {
    await home?.destroy();
    if (userHome) await rm(userHome, { recursive: true, force: true });
  });

  test("ssh-config --install/--uninstall edit only $HOME/.ssh/config: the block once, the user's lines kept, uninstall restores the file", async () => {
    const realConfig = join(homedir(), '.ssh', 'config');
    const realBefore = existsSync(realConfig) ? readFileSync(realConfig) : undefined;
    await mkdir(join(userHome, '.ssh'), { mode: 0o700 });
    const config = join(userHome, '.ssh', 'config');
    const original = 'Host build\n  HostName 192.0.2.10\n  User dev\n';
    await writeFile(config, original, { mode: 0o644 });
    const env = { HOME: userHome };

    const first = await home.banger(['ssh-config', '--install'], 60_000, env);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /added Include/);
    const installed = readFileSync(config, 'utf8');
    const bangerConfig = join(home.dir, 'state', 'ssh', 'config');
    assert.ok(installed.includes(`Include "${bangerConfig}"`) || installed.includes(`Include ${bangerConfig}`), installed);
    assert.ok(installed.includes(original), "the user's own lines are kept");
    assert.equal(statSync(config).mode & 0o777, 0o600);
    assert.ok(existsSync(bangerConfig), 'the daemon wrote the file the Include names');

    const again = await home.banger(['ssh-config', '--install'], 60_000, env);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already included/);
    assert.equal(readFileSync(config, 'utf8'), installed, 'a second --install changes nothing');

    const both = await home.banger(['ssh-config', '--install', '--uninstall'], 60_000, env);
    assert.equal(both.code, 2, 'both flags: a usage error');
    assert.equal(readFileSync(config, 'utf8'), installed);

    const removed = await home.banger(['ssh-config', '--uninstall'], 60_000, env);
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal(readFileSync(config, 'utf8'), original, 'uninstall leaves the file as it was');

    const realAfter = existsSync(realConfig) ? readFileSync(realConfig) : undefined;
    assert.deepEqual(realAfter, realBefore, "the real user's ~/.ssh/config is untouched");
  });

  test('an image or kernel a VM uses is not deleted: the refusal says what uses it and the files stay', async () => {
    const c = await home.banger(['vm', 'create', '--name', 'holder', '--image', 'img', '--no-start']);
    assert.equal(c.code, 0, c.stderr);
    const image = await home.json<Image>(['image', 'show', 'img']);
    const kernel = await home.json<Kernel>(['kernel', 'show', 'k']);

    const delImage = await home.banger(['image', 'delete', 'img']);
    assert.equal(delImage.code, 1, delImage.stdout);
    assert.match(delImage.stderr, /image "img" is used by 1 VM\(s\): \S+/);
    assert.match(delImage.stderr, /fix: delete those VMs first: banger vm delete \S+/);
    assert.match(delImage.stderr, /fix: delete those VMs first/);
    assert.equal((await home.json<Image>(['image', 'show', 'img'])).name, 'img');
    assert.ok(existsSync(image.rootfsPath), 'the image file stays');

    const rmKernel = await home.banger(['kernel', 'rm', 'k']);
    assert.equal(rmKernel.code, 1, rmKernel.stdout);
    assert.match(rmKernel.stderr, /cannot remove kernel "k": it is used by image\(s\) img and VM\(s\) holder/);
    assert.ok(existsSync(kernel.kernelPath), 'the kernel file stays');
    assert.equal((await home.json<Vm>(['vm', 'show', 'holder'])).state, 'stopped');
  });

  test('`daemon ops` lists the operations that ran, with kind, target and outcome', async () => {
    const { operations } = await home.json<{ operations: Op[] }>(['daemon', 'ops']);
    const row = (kind: string, target: string) => operations.find((o) => o.kind === kind && o.target === target);
    assert.equal(row('kernel.import', 'k')?.state, 'succeeded', JSON.stringify(operations));
    assert.equal(row('image.register', 'img')?.state, 'succeeded');
    assert.equal(row('vm.create', 'holder')?.state, 'succeeded');
    const text = await home.ok(['daemon', 'ops']);
    assert.match(text, /^ID\s+KIND\s+TARGET\s+STATE\s+STAGE\s+STARTED$/m);
    const id = row('vm.create', 'holder')?.id as string;
    assert.match(text, new RegExp(`^${id}\\s+vm\\.create\\s+holder\\s+succeeded`, 'm'));
  });

  test('vm prune asks first: refused without a terminal, "n" keeps every VM, "y" deletes the stopped ones', {
    skip: requires(hasScript, 'script(1) (util-linux) is not installed'),
  }, async () => {
    await home.ok(['vm', 'create', '--name', 'spare', '--image', 'img', '--no-start']);
    const names = async () => (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms.map((v) => v.name).sort();
    assert.deepEqual(await names(), ['holder', 'spare']);

    const noTty = await home.banger(['vm', 'prune']);
    assert.equal(noTty.code, 2, noTty.stderr);
    assert.match(noTty.stderr, /needs confirmation/);
    assert.match(noTty.stderr, /-f/);
    assert.deepEqual(await names(), ['holder', 'spare']);

    // A real pseudo-terminal (script(1)) whose input is the answer.
    const cmd = [process.execPath, BANGER, 'vm', 'prune'].map((w) => `'${w.replace(/'/g, "'\\''")}'`).join(' ');
    const ask = (answer: string) => runProcess('script', ['-qec', cmd, '/dev/null'], { env: home.env }, 120_000, answer);

    const no = await ask('n\n');
    assert.equal(no.code, 0, no.stdout + no.stderr);
    assert.match(no.stdout, /delete holder, spare\? \[y\/N\]/);
    assert.match(no.stdout, /aborted/);
    assert.deepEqual(await names(), ['holder', 'spare'], '"n" deletes nothing');

    const yes = await ask('y\n');
    assert.equal(yes.code, 0, yes.stdout + yes.stderr);
    assert.match(yes.stdout, /deleted holder/);
    assert.match(yes.stdout, /deleted spare/);
    assert.deepEqual(await names(), []);

    // Nothing uses them any more: now they go.
    await home.ok(['image', 'delete', 'img']);
    await home.ok(['kernel', 'rm', 'k']);
  });
});
