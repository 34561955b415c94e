/**
 * The browser terminal on a real VM (QEMU, TCG), one boot: the web UI of a real daemon, a login
 * shell with a PTY started through the bridge as the UI does, attached over the WebSocket; a
 * resize reaches the guest's terminal, typed input runs, the exit comes back as JSON and close
 * 1000. The scripted client (test/helpers/web-terminal-client.ts) runs in the home's network
 * namespace, where the UI listens on loopback.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { guestAssets, ROOT, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

const assets = guestAssets();

describe('the web terminal on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;

  before(async () => {
    home = await TestHome.create(
      ['accel = "tcg"', 'web_listen_addr = "127.0.0.1:0"', '[vm_defaults]', 'vcpu = 1', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'),
      { netns: true },
    );
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    await home.ok(['vm', 'run', '-d', '--name', 'dev', '--image', 'img']);
  });
  after(async () => {
    await home?.destroy();
  });

  test('PTY shell over the WebSocket: resize, input, output, exit JSON then close 1000', async () => {
    const url = (await home.ok(['ui', '--url'])).trim();
    // The guest polls its own terminal size until the resize landed (the resize is a separate request).
    const script = 'for i in $(seq 1 200); do s=$(stty size); [ "$s" = "50 120" ] && break; sleep 0.05; done; echo "SIZE=$s"; echo "SUM=$((6*7))"; exit 3\n';
    const r = await home.exec(process.execPath, [join(ROOT, 'dist', 'test', 'helpers', 'web-terminal-client.js'), url, 'dev', script], 60_000);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { code: number; output: string; messages: Array<{ type: string; proc?: { exitCode: number; pty: boolean } }> };
    assert.match(out.output, /SIZE=50 120\r?\n/);
    assert.match(out.output, /SUM=42\r?\n/);
    assert.equal(out.messages.length, 1, JSON.stringify(out.messages));
    assert.equal(out.messages[0]?.type, 'exit');
    assert.equal(out.messages[0]?.proc?.exitCode, 3);
    assert.equal(out.messages[0]?.proc?.pty, true);
    assert.equal(out.code, 1000);
  });
});
