import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { Image, Vm } from '../../src/api/schemas.js';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { buildLayer, buildLayerFromTar, type FileLayer, pushImage } from '../helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../helpers/oci-registry.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

/**
 * Images pulled from a real registry boot. The pull runs in one home (on loopback, where the
 * registry is); the VMs boot in a second home inside a private network namespace, from the very
 * ext4 files the pull produced (registered in place).
 */
describe('pulled OCI images boot', { skip: requires(assets?.rootfsTar, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let registry: LocalRegistry;
  let puller: TestHome;
  let booter: TestHome;
  let base: FileLayer | undefined;

  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    registry = await startRegistry();
    puller = await TestHome.create('accel = "tcg"\n');
    booter = await TestHome.create('accel = "tcg"\n', { netns: true });
    await puller.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
    await booter.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);

    // Debian (systemd, sshd) as one big gzip layer, plus a zstd layer with a setuid binary and a user's home.
    base = await buildLayerFromTar(a.rootfsTar as string, 'gzip');
    const extra = await buildLayer(
      [
        { type: 'file', path: 'usr/local/bin/suid-probe', content: '#!/bin/sh\necho probe\n', mode: 0o4755 },
        { type: 'dir', path: 'home/dev', mode: 0o750, uid: 1000, gid: 1000 },
        { type: 'file', path: 'home/dev/notes', content: 'mine\n', mode: 0o600, uid: 1000, gid: 1000 },
        { type: 'whiteout', path: 'etc/issue' },
      ],
      'zstd',
    );
    await pushImage(registry.url, 'e2e/debian', 'bookworm', { layers: [base, extra] });

    // No systemd, no sshd: a static busybox and nothing else.
    const busybox = readFileSync('/bin/busybox');
    await pushImage(registry.url, 'e2e/tiny', 'latest', {
      layers: [
        await buildLayer(
          [
            { type: 'file', path: 'bin/busybox', content: busybox, mode: 0o755 },
            { type: 'symlink', path: 'bin/sh', target: 'busybox' },
            { type: 'dir', path: 'etc', mode: 0o755 },
            { type: 'file', path: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\n' },
            { type: 'dir', path: 'root', mode: 0o700 },
            { type: 'dir', path: 'tmp', mode: 0o1777 },
            ...['mkdir', 'chmod', 'cat'].map((a) => ({ type: 'symlink' as const, path: `bin/${a}`, target: 'busybox' })),
          ],
          'gzip',
        ),
        // A FAKE package manager (tests have no mirror): "installing openssh-server" puts an sshd in
        // place that is really busybox httpd on port 22, so the agent can show it listening.
        await buildLayer(
          [
            {
              type: 'file',
              path: 'usr/bin/apt-get',
              mode: 0o755,
              content:
                '#!/bin/sh\necho "fake apt-get $*"\ncase "$*" in *openssh-server*) mkdir -p /usr/sbin; printf \'#!/bin/sh\\nexec /bin/busybox httpd -p 22 -h /tmp\\n\' > /usr/sbin/sshd; chmod 755 /usr/sbin/sshd;; esac\n',
            },
          ],
          'zstd',
        ),
      ],
    });
  });
  after(async () => {
    await booter?.destroy();
    await puller?.destroy();
    await registry?.stop();
    await base?.cleanup();
  });

  test('a pulled Debian image boots, and ownership and modes are intact inside the guest', async () => {
    const img = await puller.json<Image>(['image', 'pull', `${registry.host}/e2e/debian:bookworm`, '--kernel-ref', 'k', '--name', 'debian']);
    assert.equal(img.hasSystemd, true);
    assert.equal(img.hasSshd, true);
    await booter.ok(['image', 'register', '--name', 'debian', '--rootfs', img.rootfsPath, '--kernel-ref', 'k']);
    const vm = await booter.json<Vm>(['vm', 'create', '--name', 'pulled', '--image', 'debian']);
    assert.equal(vm.state, 'running');
    const r = await booter.banger([
      'vm',
      'ssh',
      'pulled',
      '--',
      'stat',
      '-c',
      '%a %u %g %n',
      '/usr/local/bin/suid-probe',
      '/home/dev',
      '/home/dev/notes',
      '/etc/shadow',
      '/usr/bin/su',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), [
      '4755 0 0 /usr/local/bin/suid-probe',
      '750 1000 1000 /home/dev',
      '600 1000 1000 /home/dev/notes',
      '640 0 42 /etc/shadow',
      '4755 0 0 /usr/bin/su',
    ]);
    const gone = await booter.banger(['vm', 'ssh', 'pulled', '--', 'test', '!', '-e', '/etc/issue']);
    assert.equal(gone.code, 0, 'the whiteout removed /etc/issue');
    await booter.ok(['vm', 'delete', 'pulled']);
  });

  test('an image with neither systemd nor sshd boots to a healthy agent; vm ssh says why it cannot log in', async () => {
    const img = await puller.json<Image>(['image', 'pull', `${registry.host}/e2e/tiny`, '--kernel-ref', 'k']);
    assert.equal(img.name, 'tiny');
    assert.deepEqual([img.hasSystemd, img.hasSshd], [false, false]);
    await booter.ok(['image', 'register', '--name', 'tiny', '--rootfs', img.rootfsPath, '--kernel-ref', 'k']);
    const vm = await booter.json<Vm>(['vm', 'create', '--name', 'tiny', '--image', 'tiny', '--disk-size', '256M']);
    assert.equal(vm.state, 'running');
    const health = await booter.json<{ ready: boolean; hostname: string }>(['vm', 'health', 'tiny']);
    assert.equal(health.ready, true);
    assert.equal(health.hostname, 'tiny');
    const r = await booter.banger(['vm', 'ssh', 'tiny', '--', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /image tiny has no sshd, and tiny has no NAT to install one at first boot/);
    assert.match(r.stderr, /recreate the VM with --nat/);
    await booter.ok(['vm', 'delete', 'tiny']);
  });

  test('with NAT, the first boot installs an sshd through the image’s package manager and starts it', async () => {
    const vm = await booter.json<Vm>(['vm', 'create', '--name', 'tiny-nat', '--image', 'tiny', '--disk-size', '256M', '--nat']);
    assert.equal(vm.state, 'running');
    let ports: Array<{ port: number; command: string }> = [];
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && !ports.some((p) => p.port === 22)) {
      ports = (await booter.json<{ ports: typeof ports }>(['vm', 'ports', 'tiny-nat'])).ports;
      if (!ports.some((p) => p.port === 22)) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.ok(
      ports.some((p) => p.port === 22 && /httpd/.test(p.command)),
      `port 22 from the installed (fake) sshd: ${JSON.stringify(ports)}\n${(await booter.banger(['vm', 'logs', 'tiny-nat'])).stdout.slice(-2000)}`,
    );
    const logs = (await booter.banger(['vm', 'logs', 'tiny-nat'])).stdout;
    assert.match(logs, /banger-first-boot: no sshd in the image: installing one/);
    assert.match(logs, /fake apt-get install -y -q --no-install-recommends openssh-server/);
    await booter.ok(['vm', 'delete', 'tiny-nat']);
  });
});
