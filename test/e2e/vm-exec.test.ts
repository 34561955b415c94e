import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Vm } from '../../src/api/schemas.js';
import { BANGER, guestAssets, runProcess, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The process CLI on a real VM (QEMU, TCG) through the real CLI, daemon and agent: exit statuses
 * as a shell reports them, stdout and stderr apart, -i and -t, a timeout that leaves nothing
 * behind, detached processes and sessions, and `vm run ./repo -- CMD` (a workspace, the command
 * through the agent, its status). Two boots: one VM shared by the exec tests, one `vm run --rm`.
 */
const assets = guestAssets();
const hasGit = spawnSync('git', ['--version']).status === 0;

describe('vm exec and vm proc on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let repo: string;

  before(async () => {
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    await home.ok(['vm', 'run', '-d', '--name', 'dev', '--image', 'img']);
    repo = await mkdtemp('/tmp/bg-exec-repo-');
  });
  after(async () => {
    await home?.destroy();
    if (repo) await rm(repo, { recursive: true, force: true });
  });

  test('exit statuses pass through: 0, 1, 127 with a message, 128+9 for SIGKILL', async () => {
    const t = await home.banger(['vm', 'exec', 'dev', '--', 'true']);
    assert.equal(t.code, 0, t.stderr);
    const f = await home.banger(['vm', 'exec', 'dev', '--', 'false']);
    assert.equal(f.code, 1, f.stderr);
    const missing = await home.banger(['vm', 'exec', 'dev', '--', 'no-such-command-here']);
    assert.equal(missing.code, 127, missing.stderr);
    assert.match(missing.stderr, /no-such-command-here: command not found in the guest \(exit 127\)/);
    const killed = await home.banger(['vm', 'exec', 'dev', '--', 'sh', '-c', 'kill -9 $$']);
    assert.equal(killed.code, 137, killed.stderr);
    assert.match(killed.stderr, /killed by SIGKILL/);
  });

  test('stdout and stderr never mix; cwd and env reach the process', async () => {
    const r = await home.banger(['vm', 'exec', 'dev', '--cwd', '/tmp', '-e', 'GREETING=hi there', '--', 'sh', '-c', 'echo "$GREETING"; pwd; echo oops >&2']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi there\n/tmp\n');
    assert.equal(r.stderr, 'oops\n');
  });

  test('-i feeds stdin and closes it at its end; -t gives a terminal', async () => {
    const cat = await runProcess(
      'ip',
      ['netns', 'exec', home.netns as string, process.execPath, BANGER, 'vm', 'exec', '-i', 'dev', '--', 'sh', '-c', 'cat; echo done'],
      { env: home.env },
      120_000,
      'line one\nline two\n',
    );
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'line one\nline two\ndone\n');
    const tty = await home.banger(['vm', 'exec', '-t', 'dev', '--', 'tty']);
    assert.equal(tty.code, 0, tty.stderr);
    assert.match(tty.stdout, /^\/dev\/pts\/\d+\r?\n$/);
    const noTty = await home.banger(['vm', 'exec', 'dev', '--', 'sh', '-c', 'tty; true']);
    assert.match(noTty.stdout, /not a tty/);
  });

  test('--timeout kills the whole group: exit 124 and no process of it left in the guest', async () => {
    const r = await home.banger(['vm', 'exec', '--timeout', '2s', 'dev', '--', 'sh', '-c', 'sleep 300 & sleep 301; wait']);
    assert.equal(r.code, 124, r.stderr);
    assert.match(r.stderr, /killed after its timeout of 2s/);
    const left = await home.banger(['vm', 'exec', 'dev', '--', 'sh', '-c', 'ps -eo args | grep -c "^sleep 30[01]"; true']);
    assert.equal(left.stdout.trim(), '0', 'no sleep of the group survived');
  });

  test('detached processes and sessions: list, logs, send, wait, kill, rm', async () => {
    const d = await home.banger(['vm', 'exec', 'dev', '-d', '--name', 'job', '--', 'sh', '-c', 'echo started; echo warn >&2; exit 4']);
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.stdout, 'job\n');
    const w = await home.banger(['vm', 'proc', 'wait', 'dev', 'job']);
    assert.equal(w.code, 4, w.stderr);
    const logs = await home.banger(['vm', 'proc', 'logs', 'dev', 'job']);
    assert.equal(logs.stdout, 'started\n');
    assert.equal(logs.stderr, 'warn\n');
    const ps = await home.banger(['vm', 'ps', 'dev']);
    assert.match(ps.stdout, /^\S+\s+job\s+exited \(4\)/m);

    const s = await home.banger(['vm', 'session', 'start', 'dev', '--name', 'upper', '--', 'tr', 'a-z', 'A-Z']);
    assert.equal(s.code, 0, s.stderr);
    const sent = await home.banger(['vm', 'session', 'send', 'dev', 'upper', 'hello', '-l', '--eof']);
    assert.equal(sent.code, 0, sent.stderr);
    const sw = await home.banger(['vm', 'proc', 'wait', 'dev', 'upper']);
    assert.equal(sw.code, 0, sw.stderr);
    assert.equal((await home.banger(['vm', 'session', 'logs', 'dev', 'upper'])).stdout, 'HELLO\n');

    await home.ok(['vm', 'session', 'start', 'dev', '--name', 'sleeper', '--', 'sleep', '300']);
    const busy = await home.banger(['vm', 'proc', 'rm', 'dev', 'sleeper']);
    assert.equal(busy.code, 1, 'a running process is not forgotten without --force');
    const stop = await home.banger(['vm', 'session', 'stop', 'dev', 'sleeper']);
    assert.equal(stop.code, 0, stop.stderr);
    const sl = await home.banger(['vm', 'proc', 'wait', 'dev', 'sleeper']);
    assert.equal(sl.code, 143, sl.stderr);
    const removed = await home.banger(['vm', 'proc', 'rm', 'dev', 'job', 'upper', 'sleeper']);
    assert.equal(removed.code, 0, removed.stderr);
    const json = await home.json<{ procs: Array<{ name: string | null }> }>(['vm', 'proc', 'list', 'dev']);
    assert.deepEqual(
      json.procs.filter((p) => p.name !== null).map((p) => p.name),
      [],
    );
  });

  test("vm run ./repo -- sh -c '…; exit 3': the workspace is prepared, the command runs in it, exit 3, the VM is deleted", {
    skip: requires(hasGit, 'git is not installed'),
  }, async () => {
    const git = (...args: string[]) => spawnSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@e', ...args], { encoding: 'utf8' });
    git('init', '-q');
    await writeFile(join(repo, 'hello.txt'), 'from the host\n');
    git('add', 'hello.txt');
    git('commit', '-qm', 'one');
    await writeFile(join(repo, 'untracked.txt'), 'not shipped\n');
    const r = await home.banger(['vm', 'run', '--rm', '--name', 'runner', '--image', 'img', repo, '--', 'sh', '-c', 'pwd; cat hello.txt; ls; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, '/root/repo\nfrom the host\nhello.txt\n');
    assert.match(r.stderr, /1 untracked file\(s\) were not copied/);
    assert.match(r.stderr, /deleted runner/);
    const { vms } = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    assert.deepEqual(
      vms.map((v) => v.name),
      ['dev'],
    );
  });
});
