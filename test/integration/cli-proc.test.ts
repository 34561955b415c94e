import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The process CLI (`vm exec`, `vm proc …`, `vm ps`, `vm session …`, `vm run ./repo`) through the
 * real CLI and daemon, without a boot: usage errors exit 2 before any request, a VM that is not
 * running gets an error naming `banger vm start`, and the VM verbs `vm logs`/`vm kill` keep their
 * meaning. The VM is created with --no-start: nothing boots, no network is touched.
 */
const assets = guestAssets();

describe('process CLI without a boot', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let scratch: string;

  before(async () => {
    home = await TestHome.create('[vm_defaults]\nvcpu = 1\nmemory_mib = 256\ndisk_size = "256M"\n');
    scratch = await mkdtemp('/tmp/bg-cliproc-');
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'k']);
    await home.ok(['vm', 'create', '--name', 'idle', '--image', 'img', '--no-start']);
  });
  after(async () => {
    await home?.destroy();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  test('usage errors exit 2 and name the problem', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['vm', 'exec'], /missing required argument 'vm'/],
      [['vm', 'exec', 'idle'], /missing required argument 'command'/],
      [['vm', 'exec', 'idle', '--env', 'NOEQUALS', '--', 'true'], /--env takes KEY=VALUE/],
      [['vm', 'exec', 'idle', '--timeout', 'soon', '--', 'true'], /--timeout takes a duration/],
      [['vm', 'exec', 'idle', '--name', '../x', '--', 'true'], /--name takes letters/],
      [['vm', 'exec', 'idle', '-it', '--detach-keys', 'ctrl-', '--', 'sh'], /--detach-keys takes keys/],
      [['vm', 'exec', 'idle', 'ls', '-la'], /unknown option '-la'/],
      [['vm', 'proc', 'kill', 'idle', 'p', '--signal', 'NOPE'], /--signal takes a name/],
      [['vm', 'proc', 'logs', 'idle', 'p', '--from', '-1'], /--from takes a byte offset/],
      [['vm', 'proc', 'send', 'idle', 'p'], /nothing to send/],
      [['vm', 'proc', 'attach', 'idle', 'p', '--detach-keys', 'ctrl-1'], /--detach-keys takes keys/],
      [['vm', 'proc', 'rm', 'idle'], /missing required argument 'proc'/],
      [['vm', 'session', 'start', 'idle', '--', 'sleep', '9'], /required option '--name <name>' not specified/],
      [['vm', 'run', '--repo', join('/nonexistent', 'repo')], /--repo \/nonexistent\/repo is not a directory/],
      [['vm', 'run', '-d', '--', 'ls'], /--detach does not run a command/],
    ];
    for (const [args, message] of cases) {
      const r = await home.banger(args);
      assert.equal(r.code, 2, `banger ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, `banger ${args.join(' ')}`);
    }
    // No usage error created a VM or an operation beyond the set-up's.
    const { vms } = await home.json<{ vms: Array<{ name: string }> }>(['vm', 'list']);
    assert.deepEqual(
      vms.map((v) => v.name),
      ['idle'],
    );
  });

  test('a VM that is not running: every process verb says so and names banger vm start', async () => {
    const verbs = [
      ['vm', 'exec', 'idle', '--', 'true'],
      ['vm', 'exec', 'idle', '-d', '--', 'true'],
      ['vm', 'exec', 'idle', '-it', '--', 'sh'],
      ['vm', 'proc', 'list', 'idle'],
      ['vm', 'ps', 'idle'],
      ['vm', 'proc', 'show', 'idle', 'p'],
      ['vm', 'proc', 'logs', 'idle', 'p', '-f'],
      ['vm', 'proc', 'attach', 'idle', 'p'],
      ['vm', 'proc', 'send', 'idle', 'p', 'data'],
      ['vm', 'proc', 'kill', 'idle', 'p'],
      ['vm', 'proc', 'wait', 'idle', 'p'],
      ['vm', 'proc', 'rm', 'idle', 'p'],
      ['vm', 'session', 'start', 'idle', '--name', 's', '--', 'sleep', '9'],
      ['vm', 'session', 'list', 'idle'],
      ['vm', 'session', 'stop', 'idle', 's'],
      ['vm', 'session', 'kill', 'idle', 's'],
    ];
    for (const args of verbs) {
      const r = await home.banger(args);
      assert.equal(r.code, 1, `banger ${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /^error: VM idle is stopped: processes run only in a running VM$/m, args.join(' '));
      assert.match(r.stderr, /^fix: start it: banger vm start idle$/m, args.join(' '));
      assert.equal(r.stdout, '', `${args.join(' ')} printed nothing on stdout`);
    }
    assert.equal((await home.json<{ state: string }>(['vm', 'show', 'idle'])).state, 'stopped', 'nothing started the VM');
  });

  test('an unknown VM is not found', async () => {
    const r = await home.banger(['vm', 'exec', 'nosuch', '--', 'true']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nosuch/);
  });

  test('vm logs stays the serial console and vm kill the VM verb; the new groups document themselves', async () => {
    const logs = await home.banger(['vm', 'logs', '--help']);
    assert.match(logs.stdout, /serial console/);
    const kill = await home.banger(['vm', 'kill', '--help']);
    assert.match(kill.stdout, /kill one or more VMs/);
    const attach = await home.banger(['vm', 'proc', 'attach', '--help']);
    assert.match(attach.stdout, /Ctrl-P Ctrl-Q/);
    const session = await home.banger(['vm', 'session', '--help']);
    for (const verb of ['start', 'list', 'show', 'logs', 'attach', 'send', 'stop', 'kill'])
      assert.match(session.stdout, new RegExp(`^  ${verb}\\b`, 'm'), verb);
    const proc = await home.banger(['vm', 'proc', '--help']);
    for (const verb of ['list', 'show', 'logs', 'attach', 'send', 'kill', 'wait', 'rm']) assert.match(proc.stdout, new RegExp(`^  ${verb}\\b`, 'm'), verb);
  });
});
