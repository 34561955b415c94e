import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Image, Vm } from '../../src/api/schemas.js';
import { guestAssets, Running, TestHome } from '../helpers/banger.js';
import { buildLayer, buildLayerFromTar, type FileLayer, pushImage } from '../helpers/oci-fixtures.js';
import { type LocalRegistry, startRegistry } from '../helpers/oci-registry.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

/**
 * Images pulled from a real registry boot. The pull runs in one home (on loopback, where the
 * registry is); the VMs boot in a second home inside a private network namespace, from the very
 * ext4 files the pull produced (registered in place). The first-boot install of an sshd runs here
 * too: against a fake package manager, and against Debian's real apt-get and a local repository.
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

  test('with NAT, the first boot installs Debian’s openssh-server with the real apt-get from a repository on the bridge; SSH then works with the VM’s own host key', {
    skip: requires(assets?.rootfsNoSshd && assets?.sshdRepo, 'guest assets missing (rootfsNoSshd, sshdRepo): run scripts/guest-assets.sh'),
  }, async (t) => {
    const a = assets as NonNullable<typeof assets>;
    // The booter home's bridge address (config default) and a port of this test's choosing: the
    // namespace has only loopback and the bridge, so nothing else can answer there.
    const bridgeIp = '172.30.0.1';
    const port = 8080;
    // The image: the rootfs without sshd (a sparse copy), whose only apt source is that repository.
    const rootfs = join(booter.dir, 'nosshd.ext4');
    execFileSync('cp', ['--sparse=always', a.rootfsNoSshd as string, rootfs]);
    const sources = `deb [trusted=yes] http://${bridgeIp}:${port}/ ./\n`;
    writeFileSync(join(booter.dir, 'sources.list'), sources, { mode: 0o644 });
    writeFileSync(join(booter.dir, 'debugfs.cmd'), `cd /etc/apt\nwrite ${join(booter.dir, 'sources.list')} sources.list\n`);
    execFileSync('debugfs', ['-w', '-f', join(booter.dir, 'debugfs.cmd'), rootfs], { stdio: 'ignore' });
    assert.equal(execFileSync('debugfs', ['-R', 'cat /etc/apt/sources.list', rootfs], { stdio: ['ignore', 'pipe', 'ignore'] }).toString(), sources);
    await booter.ok(['image', 'register', '--name', 'nosshd', '--rootfs', rootfs, '--kernel-ref', 'k']);
    assert.equal((await booter.json<Image>(['image', 'show', 'nosshd'])).hasSshd, false);

    // The repository, served in the booter's namespace on the bridge address. The bridge appears
    // with the first VM of the daemon: bind before it (a per-namespace sysctl), so the server is
    // up before any guest asks. Each request is printed.
    const serve = `
      const http = require('node:http'), fs = require('node:fs'), path = require('node:path');
      const root = process.env.REPO, files = new Set(fs.readdirSync(root));
      http.createServer((req, res) => {
        const raw = new URL(req.url, 'http://x').pathname.replace(/^\\/(\\.\\/)?/, '');
        const name = files.has(raw) ? raw : decodeURIComponent(raw);
        console.log(req.method + ' ' + name);
        if (!files.has(name)) { res.writeHead(404); res.end(); return; }
        res.writeHead(200, { 'content-length': fs.statSync(path.join(root, name)).size });
        if (req.method === 'HEAD') res.end(); else fs.createReadStream(path.join(root, name)).pipe(res);
      }).listen(${port}, '${bridgeIp}', () => console.log('listening'));`;
    assert.equal((await booter.exec('sysctl', ['-q', '-w', 'net.ipv4.ip_nonlocal_bind=1'])).code, 0);
    const repo = new Running(
      spawn('ip', ['netns', 'exec', booter.netns as string, process.execPath, '-e', serve], {
        env: { ...process.env, REPO: a.sshdRepo },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    let console_: Running | undefined;
    try {
      assert.ok(await repo.waitFor(/^listening$/m), repo.stderr);
      const t0 = Date.now();
      const vm = await booter.json<Vm>(['vm', 'create', '--name', 'apt-sshd', '--image', 'nosshd', '--disk-size', '512M', '--nat']);
      assert.equal(vm.state, 'running');
      const created = Date.now();
      // The first boot's outcome, as it reaches the console.
      console_ = booter.start(['vm', 'logs', '-f', 'apt-sshd', '-n', '100000']);
      // The whole line: the console arrives in chunks, and a half-read line must not count as the outcome.
      const outcome = /banger-first-boot: (sshd running \([^)\n]*\)|the package manager ran but no sshd appeared|no known package manager[^\n]*)\r?\n/;
      assert.ok(await console_.waitFor(outcome, 900_000), `the first boot ended: ${console_.stdout.slice(-3000)}`);
      assert.match(console_.stdout, /banger-first-boot: sshd running \(ssh\.service\)/, console_.stdout.slice(-3000));
      t.diagnostic(`vm create ${((created - t0) / 1000).toFixed(1)} s, then the first-boot install ${((Date.now() - created) / 1000).toFixed(1)} s`);
      assert.match(repo.stdout, /^GET openssh-server_[^ ]+_amd64\.deb$/m, 'the guest fetched openssh-server from the local repository');

      // The real sshd logs in, with host-key checking on against the key banger recorded for this VM…
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a template
      const r = await booter.banger(['vm', 'ssh', 'apt-sshd', '--', 'dpkg-query', '-W', '--showformat=${db:Status-Status} ${Package}\\n', 'openssh-server']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'installed openssh-server\n');
      // …and the key it serves is that VM's own.
      const knownHosts = readFileSync(join(booter.dir, 'state', 'ssh', 'known_hosts'), 'utf8');
      const recorded = knownHosts.split('\n').find((l) => l.startsWith('apt-sshd.vm '));
      assert.ok(recorded, knownHosts);
      const [, type, key] = recorded.split(' ');
      const scan = await booter.exec('ssh-keyscan', ['-T', '60', '-t', type as string, vm.ip as string]);
      assert.equal(
        scan.stdout
          .split('\n')
          .find((l) => l.startsWith(`${vm.ip} ${type} `))
          ?.split(' ')[2],
        key,
        scan.stderr,
      );
      await booter.ok(['vm', 'delete', 'apt-sshd']);
    } finally {
      await console_?.stop();
      await repo.stop();
    }
  });
});
