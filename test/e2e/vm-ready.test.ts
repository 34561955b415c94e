import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GuestPorts, Vm } from '../../src/api/schemas.js';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * `--wait-for port:N` and `--wait-for CMD` on real VMs (QEMU, TCG) through the real CLI, daemon
 * and agent. Two boots: one whose server starts LATE (started by the test, through the agent,
 * while the create is still waiting), one whose check never holds (the VM is kept running).
 */
const assets = guestAssets();

describe('vm create --wait-for on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;

  before(async () => {
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
  });
  after(async () => {
    await home?.destroy();
  });

  test('--wait-for port:8080: the create returns only once a server started late in the guest listens on it', async () => {
    const creating = home.start(['vm', 'create', '--name', 'late', '--image', 'img', '--wait-for', 'port:8080']);
    try {
      // As soon as the agent answers (the VM is `running`), start the server late, in the background.
      for (;;) {
        const show = await home.banger(['vm', 'show', 'late', '--json'], 30_000);
        if (show.code === 0 && (JSON.parse(show.stdout) as Vm).state === 'running') break;
        assert.ok(creating.running, `the create ended before the VM was running: ${creating.stderr}`);
        await sleep(500);
      }
      const server = await home.banger([
        'vm',
        'exec',
        '-d',
        '--name',
        'late-server',
        'late',
        '--',
        'sh',
        '-c',
        'sleep 15; touch /root/server-started; exec /usr/sbin/sshd -D -e -p 8080 -o PidFile=none',
      ]);
      assert.equal(server.code, 0, server.stderr);
      assert.ok(creating.running, 'the create was still waiting when the server was started (late)');
      const end = await creating.exit(600_000);
      assert.equal(end.code, 0, creating.stderr);
      assert.match(creating.stderr, /wait for port 8080/);
      // Right after the create returned: the port listens, and the server had started by then.
      const { ports } = await home.json<GuestPorts>(['vm', 'ports', 'late']);
      assert.ok(
        ports.some((p) => p.port === 8080 && p.proto.startsWith('tcp')),
        `port 8080 listens: ${JSON.stringify(ports.map((p) => `${p.proto}:${p.port}`))}`,
      );
      const started = await home.banger(['vm', 'exec', 'late', '--', 'test', '-e', '/root/server-started']);
      assert.equal(started.code, 0, 'the late server had started when the create returned');
    } finally {
      await creating.stop();
      await home.banger(['vm', 'delete', 'late']);
    }
  });

  test('a command check that never holds: timeout naming it and its last output, the VM kept running for a post-mortem', async () => {
    const r = await home.banger([
      'vm',
      'create',
      '--name',
      'never',
      '--image',
      'img',
      '--wait-for',
      'agent',
      '--wait-for',
      'echo "not yet: $(hostname)"; test -e /root/never',
      '--wait-timeout',
      '10s',
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /wait for command/);
    assert.match(
      r.stderr,
      /never did not become ready: command `echo .*` did not hold within 10s \(\d+ attempts?; last: exit 1, last output: not yet: never\)\. never is kept running/,
    );
    assert.match(r.stderr, /--wait-timeout/);
    assert.equal((await home.json<Vm>(['vm', 'show', 'never'])).state, 'running');
    const alive = await home.banger(['vm', 'exec', 'never', '--', 'true']);
    assert.equal(alive.code, 0, 'the kept VM still answers');
    await home.ok(['vm', 'delete', 'never']);
  });
});
