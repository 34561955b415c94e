import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ProcEvent } from '../../src/api/proc-schemas.js';
import { BangerClient } from '../../src/client/client.js';
import { resolveLayout } from '../../src/config/layout.js';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * Guest processes on a real VM through the SDK (the daemon's API): byte-exact streams, stdin,
 * PTY, and output that survives a daemon killed with SIGKILL mid-process. One VM for the file.
 */
const assets = guestAssets();
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Collects a process's output events per stream, checking that offsets are contiguous. */
function collector() {
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], next: { stdout: 0, stderr: 0 } };
  const onEvent = (e: ProcEvent) => {
    if (e.type !== 'stdout' && e.type !== 'stderr') return;
    assert.equal(e.offset, out.next[e.type], `${e.type} offsets are contiguous`);
    const data = Buffer.from(e.data, 'base64');
    out[e.type].push(data);
    out.next[e.type] += data.length;
  };
  return { out, onEvent, stdout: () => Buffer.concat(out.stdout), stderr: () => Buffer.concat(out.stderr) };
}

describe('guest processes on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let client: BangerClient;

  before(async () => {
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    await home.ok(['vm', 'create', '--name', 'dev', '--image', 'img']);
    // The daemon runs in the test's network namespace; its Unix socket is reachable from here.
    client = new BangerClient({ layout: resolveLayout(home.env), autostart: false });
  });
  after(async () => {
    await home?.destroy();
  });

  test('a VM reported ready accepts plain ssh at once (one connection attempt)', async () => {
    const cfg = join(resolveLayout(home.env).stateDir, 'ssh', 'config');
    const r = await home.exec('ssh', ['-F', cfg, '-o', 'ConnectionAttempts=1', '-o', 'ConnectTimeout=20', '--', 'dev.vm', 'echo', 'ok'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ok\n');
  });

  test('8 MiB of random stdout arrives byte-exact; stdout and stderr never mix; cat with default stdin returns at once', async () => {
    const c = collector();
    const proc = await client.streamProcess(
      'dev',
      { shell: 'head -c 8388608 /dev/urandom > /tmp/r && sha256sum /tmp/r | cut -d" " -f1 >&2 && cat /tmp/r' },
      c.onEvent,
    );
    assert.equal(proc?.exitCode, 0);
    const stdout = c.stdout();
    assert.equal(stdout.length, 8 * 1024 * 1024);
    assert.equal(sha256(stdout), c.stderr().toString().trim(), 'the guest hashed what the host received');
    const cat = await client.execProcess('dev', { argv: ['cat'] });
    assert.equal(cat.result.exitCode, 0);
    assert.equal(cat.result.stdout, '');
  });

  test('1 MiB of stdin round-trips through cat; a repeated offset is not written twice', async () => {
    const input = randomBytes(1024 * 1024);
    const p = await client.startProcess('dev', { argv: ['cat'], stdin: 'pipe' });
    let offset = 0;
    for (let at = 0; at < input.length; at += 256 * 1024) {
      offset = (await client.writeProcessStdin('dev', p.id, at, input.subarray(at, at + 256 * 1024))).offset;
    }
    // A retry of the last chunk (as after a lost answer) is skipped by offset.
    const again = await client.writeProcessStdin('dev', p.id, input.length - 256 * 1024, input.subarray(input.length - 256 * 1024), true);
    assert.equal(again.offset, input.length);
    assert.equal(offset, input.length);
    const c = collector();
    const done = await client.processOutput('dev', p.id, { follow: true }, c.onEvent);
    assert.equal(done?.exitCode, 0);
    assert.equal(sha256(c.stdout()), sha256(input));
  });

  test('a shell under a PTY answers tty, and a resize is seen by stty size', async () => {
    const p = await client.startProcess('dev', { argv: ['sh'], pty: { rows: 24, cols: 80 }, stdin: 'pipe' });
    let at = (await client.writeProcessStdin('dev', p.id, 0, Buffer.from('tty; stty size\n'))).offset;
    // The resize must come after the shell answered the first stty: follow until it did.
    const seen = new AbortController();
    let early = '';
    await client.processOutput('dev', p.id, { follow: true, signal: seen.signal }, (e) => {
      if (e.type !== 'stdout') return;
      early += Buffer.from(e.data, 'base64').toString();
      if (/^24 80\r?$/m.test(early)) seen.abort();
    });
    await client.resizeProcess('dev', p.id, 40, 100);
    at = (await client.writeProcessStdin('dev', p.id, at, Buffer.from('stty size; exit 0\n'))).offset;
    const c = collector();
    const done = await client.processOutput('dev', p.id, { follow: true }, c.onEvent);
    assert.equal(done?.exitCode, 0);
    const text = c.stdout().toString();
    assert.match(text, /\/dev\/pts\/\d+/);
    assert.match(text, /^24 80\r?$/m);
    assert.match(text, /^40 100\r?$/m);
  });

  test('seq 1 2000000: detach and re-attach from offsets, SIGKILL the daemon mid-run; the joined output is exact and the exit seen while it was down is reported', async () => {
    const p = await client.startProcess('dev', { name: 'counter', shell: 'seq 1 1000000; sleep 2; seq 1000001 2000000' });
    const chunks: Buffer[] = [];
    let offset = 0;
    // Follow a while, detach, re-attach from where we were: three times.
    for (let round = 0; round < 3; round++) {
      const stop = new AbortController();
      const target = offset + 1_000_000;
      await client.processOutput('dev', 'counter', { stdoutFrom: offset, follow: true, signal: stop.signal }, (e) => {
        if (e.type !== 'stdout' || stop.signal.aborted) return;
        assert.equal(e.offset, offset);
        const data = Buffer.from(e.data, 'base64');
        chunks.push(data);
        offset += data.length;
        if (offset >= target) stop.abort();
      });
    }
    assert.ok(offset >= 3_000_000, `followed ${offset} bytes`);
    // The daemon dies with the process still running (the second seq is seconds away).
    const [pid] = home.daemonPids();
    assert.ok(pid, 'the daemon runs');
    process.kill(pid as number, 'SIGKILL');
    const killedAt = Date.now();
    // The process ends while no daemon runs: its sleep and second seq take seconds; wait well past them.
    await new Promise((r) => setTimeout(r, 20_000));
    const restartAt = Date.now();
    await home.ok(['daemon', 'start']);
    const shown = await client.process('dev', 'counter');
    assert.equal(shown.id, p.id);
    assert.equal(shown.state, 'exited');
    assert.equal(shown.exitCode, 0);
    assert.ok(shown.endedMs !== null && shown.endedMs < restartAt, 'the exit happened before the daemon came back');
    assert.ok(killedAt < restartAt);
    const rest = collector();
    rest.out.next.stdout = offset;
    const done = await client.processOutput('dev', 'counter', { stdoutFrom: offset, follow: true }, rest.onEvent);
    assert.equal(done?.exitCode, 0);
    const joined = Buffer.concat([...chunks, rest.stdout()]).toString();
    const expected = `${Array.from({ length: 2_000_000 }, (_, i) => i + 1).join('\n')}\n`;
    assert.equal(joined.length, expected.length);
    assert.ok(joined === expected, 'the joined output is exactly 1..2000000');
  });
});
