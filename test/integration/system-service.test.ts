import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { runProcess, treeReadableBy } from '../helpers/banger.js';
import { isAlive, ROOT, waitFor } from './harness.js';

/**
 * `banger system …` through the real CLI: install/uninstall below a scratch --root, and the
 * supervisor with a real test user (created here with useradd, deleted after) on the service's
 * real paths (/run/banger, /run/banger-root).
 *
 * The root helper: bin/bangerd-root.js when this tree has it, else a FAKE HELPER (a tiny node
 * script that only listens on the helper socket and leaves a child behind in the supervisor's
 * process group, to show the supervisor's stop never signals the group).
 */

const isRoot = process.getuid?.() === 0;
const USER = `bgsvc${randomBytes(3).toString('hex')}`;
const scratch: string[] = [];
let owner: { uid: number; gid: number; home: string } | undefined;
let setupProblem: string | undefined;

/** The built tree the tests run: the project, or a copy the owner can read (set in before()). */
let tree = ROOT;
const bangerJs = () => join(tree, 'bin', 'banger.js');
const banger = (args: string[], env: NodeJS.ProcessEnv = process.env) => runProcess(process.execPath, [bangerJs(), ...args], { env }, 120_000);

/** The CLI as the owner: its uid, gid and groups, a clean environment (no XDG_RUNTIME_DIR, no BANGER_HOME). */
function asOwner(args: string[]) {
  if (!owner) throw new Error('no owner');
  return runProcess(
    'setpriv',
    [
      `--reuid=${owner.uid}`,
      `--regid=${owner.gid}`,
      '--init-groups',
      'env',
      '-i',
      `HOME=${owner.home}`,
      'PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
      process.execPath,
      bangerJs(),
      ...args,
    ],
    { cwd: '/' },
    60_000,
  );
}

before(async () => {
  if (!isRoot) return;
  const r = await runProcess('useradd', ['--create-home', '--shell', '/bin/sh', USER], {}, 30_000);
  if (r.code !== 0) {
    setupProblem = `useradd failed: ${r.stderr}`;
    return;
  }
  const line = (await runProcess('getent', ['passwd', USER], {}, 10_000)).stdout.split(':');
  owner = { uid: Number(line[2]), gid: Number(line[3]), home: line[5] as string };
  // The owner runs this tree: it must be able to read it (a tree under a 0700 home is copied).
  const dir = mkdtempSync(join(tmpdir(), 'bgsvc-tree-'));
  chmodSync(dir, 0o755);
  scratch.push(dir);
  tree = await treeReadableBy(owner.uid, owner.gid, dir);
});

after(async () => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
  if (owner) await runProcess('userdel', ['--remove', USER], {}, 30_000);
});

function tmpRoot(): string {
  const d = mkdtempSync('/tmp/bg-sysroot-');
  scratch.push(d);
  return d;
}

const read = (p: string) => readFileSync(p, 'utf8');

test('system install --root writes both units, prepares subordinate ids once, and systemd-analyze verifies them', async (t) => {
  if (!isRoot) return t.skip('needs root (useradd for the owner)');
  if (setupProblem) return t.skip(setupProblem);
  const root = tmpRoot();
  // Another user's range already there: ours must start above it.
  const etc = join(root, 'etc');
  mkdirSync(etc);
  writeFileSync(join(etc, 'subuid'), 'someone:100000:65536\n');

  const r = await banger(['system', 'install', '--owner', USER, '--root', root]);
  assert.equal(r.code, 0, r.stderr);
  const unitDir = join(root, 'etc', 'systemd', 'system');
  const daemonUnit = read(join(unitDir, 'bangerd.service'));
  const helperUnit = read(join(unitDir, 'bangerd-root.service'));
  assert.match(daemonUnit, new RegExp(`^User=${USER}$`, 'm'));
  assert.match(daemonUnit, /^KillMode=process$/m);
  assert.ok(
    daemonUnit.includes(`\nExecStart=${realpathSync(process.execPath)} --max-semi-space-size=2 ${realpathSync(tree)}/bin/bangerd.js --foreground\n`),
    daemonUnit,
  );
  assert.match(helperUnit, /^CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER$/m);
  assert.match(helperUnit, new RegExp(`--owner ${USER} --socket /run/banger-root/helper\\.sock$`, 'm'));
  assert.equal(read(join(etc, 'subuid')), `someone:100000:65536\n${USER}:165536:65536\n`);
  assert.equal(read(join(etc, 'subgid')), `${USER}:100000:65536\n`);
  const manifest = JSON.parse(read(join(etc, 'banger', 'system-install.json')));
  assert.equal(manifest.owner, USER);
  assert.equal(manifest.subuid, `${USER}:165536:65536`);

  // Idempotent: a second install changes nothing about the owner's ranges.
  const again = await banger(['system', 'install', '--owner', USER, '--root', root]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /already has subordinate uids/);
  assert.equal(read(join(etc, 'subuid')), `someone:100000:65536\n${USER}:165536:65536\n`);
  assert.equal(read(join(etc, 'subgid')), `${USER}:100000:65536\n`);
  assert.equal(JSON.parse(read(join(etc, 'banger', 'system-install.json'))).subuid, `${USER}:165536:65536`, 'the manifest keeps what the first install added');

  // A second owner on the same root is refused.
  const other = await banger(['system', 'install', '--owner', 'nobody', '--root', root]);
  assert.equal(other.code, 1);
  assert.match(other.stderr, /installed as a service for/);

  const analyze = existsSync('/usr/bin/systemd-analyze') ? '/usr/bin/systemd-analyze' : undefined;
  if (!analyze) t.diagnostic('systemd-analyze is not installed: unit verification skipped');
  else {
    // verify loads unit files by path and needs no running systemd; it exits 0 on warnings, so
    // its output must be empty too (an unknown key or a bad value is a warning).
    const v = await runProcess(analyze, ['verify', '--man=no', join(unitDir, 'bangerd-root.service'), join(unitDir, 'bangerd.service')], {}, 60_000);
    assert.equal(v.code, 0, v.stderr);
    assert.equal(`${v.stdout}${v.stderr}`.trim(), '', 'systemd-analyze verify has nothing to say');
    // And it does catch a broken unit (so the empty output above means something).
    const broken = join(root, 'broken.service');
    writeFileSync(broken, daemonUnit.replace('KillMode=process', 'KillMode=proces'));
    const b = await runProcess(analyze, ['verify', '--man=no', broken], {}, 60_000);
    assert.match(`${b.stdout}${b.stderr}`, /kill mode/i);
  }

  // Uninstall removes the units and keeps the ranges; --purge removes only what install added.
  const un = await banger(['system', 'uninstall', '--root', root]);
  assert.equal(un.code, 0, un.stderr);
  assert.equal(existsSync(join(unitDir, 'bangerd.service')), false);
  assert.equal(existsSync(join(unitDir, 'bangerd-root.service')), false);
  assert.match(read(join(etc, 'subuid')), new RegExp(USER));
  const purge = await banger(['system', 'uninstall', '--purge', '--root', root]);
  assert.equal(purge.code, 0, purge.stderr);
  assert.equal(read(join(etc, 'subuid')), 'someone:100000:65536\n');
  assert.equal(read(join(etc, 'subgid')), '');
  assert.equal(existsSync(join(etc, 'banger', 'system-install.json')), false);
});

test('system install refuses owners that are not valid user names, do not exist, or are root, and writes nothing', async (t) => {
  if (!isRoot) return t.skip('needs root');
  const root = tmpRoot();
  for (const [name, why] of [
    ['Bad Name', /is not a valid user name/],
    ['x;reboot', /is not a valid user name/],
    ['-oroot', /is not a valid user name/],
    [`nosuch${randomBytes(3).toString('hex')}`, /does not exist/],
    ['root', /unprivileged user, not root/],
  ] as const) {
    const r = await banger(['system', 'install', `--owner=${name}`, '--root', root]);
    assert.equal(r.code, 1, `${name}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, why, name);
  }
  assert.equal(existsSync(join(root, 'etc')), false, 'nothing written');
});

/**
 * A FAKE HELPER (stands in for bin/bangerd-root.js): listens on --socket and answers nothing
 * useful; each start leaves a `sleep` child in the supervisor's process group, its pid appended to
 * `leftover`, which must survive the supervisor's stop (no group is ever signalled).
 */
function writeFakeHelper(dir: string, leftover: string): string {
  const fake = join(dir, 'fake-bangerd-root.mjs');
  writeFileSync(
    fake,
    `#!${process.execPath}
// FAKE HELPER for system-service.test.ts: listens on --socket, answers nothing useful.
import { spawn } from 'node:child_process';
import { appendFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
const sock = process.argv[process.argv.indexOf('--socket') + 1];
rmSync(sock, { force: true });
// A child in the supervisor's process group: it must survive the supervisor's stop.
const child = spawn('sleep', ['3600'], { stdio: 'ignore' });
appendFileSync(${JSON.stringify(leftover)}, child.pid + '\\n');
const server = createServer((c) => c.end('fake helper\\n')).listen(sock);
process.on('SIGTERM', () => { server.close(); rmSync(sock, { force: true }); process.exit(0); });
`,
    { mode: 0o755 },
  );
  return fake;
}

const pgidOf = (pid: number): number =>
  Number(
    read(`/proc/${pid}/stat`)
      .replace(/^.*\) /s, '')
      .split(' ')[2],
  );

/** Live process's real/effective/saved/fs uids from /proc. */
const uidsOf = (pid: number): number[] => (/^Uid:\s+(.*)$/m.exec(read(`/proc/${pid}/status`))?.[1] ?? '').split(/\s+/).map(Number);

test('system start --owner runs bangerd-root as root and bangerd as the owner; the fixed socket answers the owner; stop leaves the rest alone', async (t) => {
  if (!isRoot) return t.skip('needs root');
  if (setupProblem || !owner) return t.skip(setupProblem ?? 'no owner');
  if (existsSync('/run/banger') || existsSync('/run/banger-root')) return t.skip('/run/banger or /run/banger-root exists: a banger service runs on this host');
  const o = owner;
  const dir = tmpRoot();
  chmodSync(dir, 0o755);
  let helper: string[] = [];
  const realHelper = join(tree, 'bin', 'bangerd-root.js');
  const leftover = join(dir, 'helper-child.pid');
  if (existsSync(realHelper)) t.diagnostic('using the real bin/bangerd-root.js');
  else {
    t.diagnostic('bin/bangerd-root.js is absent on this branch: using a FAKE HELPER that only listens on the socket');
    helper = ['--helper', writeFakeHelper(dir, leftover)];
  }
  const hadLogDir = existsSync('/var/log/banger');
  /** The fake helper's children (one per start of the helper). */
  const leftoverPids = () => (existsSync(leftover) ? read(leftover).split('\n').filter(Boolean).map(Number) : []);
  t.after(async () => {
    await banger(['system', 'stop']);
    for (const p of leftoverPids()) if (isAlive(p)) process.kill(p, 'SIGKILL');
    rmSync('/run/banger', { recursive: true, force: true });
    rmSync('/run/banger-root', { recursive: true, force: true });
    if (!hadLogDir) rmSync('/var/log/banger', { recursive: true, force: true });
  });

  // Not as root: refused with a clear error.
  const notRoot = await asOwner(['system', 'start', '--owner', USER]);
  assert.equal(notRoot.code, 1);
  assert.match(notRoot.stderr, /system start must run as root/);

  const start = await banger(['system', 'start', '--owner', USER, ...helper]);
  assert.equal(start.code, 0, `${start.stdout}${start.stderr}`);
  const state = JSON.parse(read('/run/banger-root/supervisor.json')) as { pid: number; pids: { bangerd: number; 'bangerd-root': number } };
  const daemonPid = state.pids.bangerd;
  const helperPid = state.pids['bangerd-root'];
  assert.deepEqual(uidsOf(daemonPid), [o.uid, o.uid, o.uid, o.uid], 'bangerd runs as the owner (real, effective, saved, fs)');
  assert.match(read(`/proc/${daemonPid}/cmdline`), /bin\/bangerd\.js/);
  assert.deepEqual(uidsOf(helperPid), [0, 0, 0, 0], 'the helper runs as root');
  // ...with the unit's bounding set: CAP_CHOWN (0), CAP_FOWNER (3), CAP_NET_ADMIN (12) and nothing else.
  const capBnd = /^CapBnd:\s+(\S+)$/m.exec(read(`/proc/${helperPid}/status`))?.[1];
  assert.equal(BigInt(`0x${capBnd}`), (1n << 0n) | (1n << 3n) | (1n << 12n));
  assert.match(read(`/proc/${helperPid}/status`), /^NoNewPrivs:\s+1$/m);
  const capEff = /^CapEff:\s+(\S+)$/m.exec(read(`/proc/${daemonPid}/status`))?.[1];
  assert.equal(BigInt(`0x${capEff}`), 0n, 'bangerd holds no capability');
  const env = read(`/proc/${daemonPid}/environ`).split('\0');
  assert.ok(env.includes('BANGER_RUNTIME_DIR=/run/banger'));
  assert.ok(env.includes('BANGER_ROOT_HELPER=/run/banger-root/helper.sock'));
  assert.ok(env.includes(`HOME=${o.home}`));

  // The owner's CLI finds the service's socket with no XDG_RUNTIME_DIR and no BANGER_HOME.
  const status = await asOwner(['daemon', 'status', '--json']);
  assert.equal(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout) as { pid: number; socketPath: string; stateDir: string };
  assert.equal(s.pid, daemonPid);
  assert.equal(s.socketPath, '/run/banger/bangerd.sock');
  assert.equal(s.stateDir, join(o.home, '.local', 'state', 'banger'));
  const sys = JSON.parse((await asOwner(['system', 'status', '--json'])).stdout) as { mode: string; owner: string; daemonSocket: { present: boolean } };
  assert.equal(sys.mode, 'supervisor');
  assert.equal(sys.owner, USER);
  assert.equal(sys.daemonSocket.present, true);
  const doctor = await asOwner(['doctor', '--json']);
  const runMode = (JSON.parse(doctor.stdout) as { checks: Array<{ name: string; detail: string }> }).checks.find((c) => c.name === 'run mode');
  assert.match(runMode?.detail ?? '', new RegExp(`bangerd as ${USER}, under banger's supervisor`));

  // A second start is refused; a crashed daemon is restarted.
  const twice = await banger(['system', 'start', '--owner', USER, ...helper]);
  assert.equal(twice.code, 1);
  assert.match(twice.stderr, /already runs/);
  process.kill(daemonPid, 'SIGKILL');
  let restarted = 0;
  await waitFor(
    'the supervisor to restart bangerd',
    () => {
      try {
        const p = (JSON.parse(read('/run/banger-root/supervisor.json')) as typeof state).pids.bangerd;
        // bangerd writes its pid file once it listens (the killed one's socket file is still there).
        if (p && p !== daemonPid && isAlive(p) && read('/run/banger/bangerd.pid').trim() === String(p)) restarted = p;
      } catch {
        /* being rewritten */
      }
      return restarted !== 0;
    },
    60_000,
  );
  const afterCrash = await asOwner(['daemon', 'status', '--json']);
  assert.equal(afterCrash.code, 0, afterCrash.stderr);
  assert.equal((JSON.parse(afterCrash.stdout) as { pid: number }).pid, restarted);
  assert.deepEqual(uidsOf(restarted), [o.uid, o.uid, o.uid, o.uid]);

  // restart: a new supervisor with the same owner (and helper); the owner's socket answers again.
  const re = await banger(['system', 'restart']);
  assert.equal(re.code, 0, `${re.stdout}${re.stderr}`);
  const state2 = JSON.parse(read('/run/banger-root/supervisor.json')) as typeof state;
  assert.notEqual(state2.pid, state.pid);
  assert.equal(isAlive(state.pid), false, 'the old supervisor is gone');
  assert.equal(isAlive(restarted), false, 'the old daemon is gone');
  assert.deepEqual(uidsOf(state2.pids.bangerd), [o.uid, o.uid, o.uid, o.uid]);
  const afterRestart = await asOwner(['daemon', 'status', '--json']);
  assert.equal(afterRestart.code, 0, afterRestart.stderr);
  assert.equal((JSON.parse(afterRestart.stdout) as { pid: number }).pid, state2.pids.bangerd);

  // `banger daemon stop` does not manage the service's daemon.
  const dstop = await asOwner(['daemon', 'stop']);
  assert.equal(dstop.code, 1);
  assert.match(dstop.stderr, /banger system stop/);

  const stop = await banger(['system', 'stop']);
  assert.equal(stop.code, 0, stop.stderr);
  for (const p of [state2.pid, state2.pids.bangerd, state2.pids['bangerd-root'], helperPid]) assert.equal(isAlive(p), false, `pid ${p} is gone`);
  assert.equal(existsSync('/run/banger-root/supervisor.pid'), false);
  for (const child of leftoverPids())
    assert.equal(isAlive(child), true, "the helper's child, in the supervisor's process group, survives: no group was signalled");
  assert.ok(existsSync('/run/banger/vms'), '/run/banger stays (VM sockets live there)');

  // The service is down: the owner's CLI says so and does not start a private daemon.
  const down = await asOwner(['daemon', 'status']);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /the banger service is not running/);
  assert.match(down.stderr, /banger system status/);
  const owned = (await runProcess('pgrep', ['-u', String(o.uid), '-f', 'bangerd'], {}, 10_000)).stdout.trim();
  assert.equal(owned, '', 'no bangerd of the owner runs');
});

test('system start refuses a /run/banger that is a link, and chowns nothing through it', async (t) => {
  if (!isRoot) return t.skip('needs root');
  if (setupProblem || !owner) return t.skip(setupProblem ?? 'no owner');
  if (existsSync('/run/banger') || existsSync('/run/banger-root')) return t.skip('/run/banger or /run/banger-root exists: a banger service runs on this host');
  const target = tmpRoot();
  const hadLogDir = existsSync('/var/log/banger');
  symlinkSync(target, '/run/banger');
  t.after(() => {
    rmSync('/run/banger', { force: true });
    rmSync('/run/banger-root', { recursive: true, force: true });
    if (!hadLogDir) rmSync('/var/log/banger', { recursive: true, force: true });
  });
  const r = await banger(['system', 'start', '--owner', USER, '--helper', '/bin/true']);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /\/run\/banger is not a directory/);
  assert.equal(lstatSync(target).uid, 0, 'the link target still belongs to root');
  assert.equal(existsSync('/run/banger-root/supervisor.pid'), false, 'no supervisor started');
});

test("system stop signals the supervisor's children only, never a process group (a FAKE HELPER leaves a child in the group)", async (t) => {
  if (!isRoot) return t.skip('needs root');
  if (setupProblem || !owner) return t.skip(setupProblem ?? 'no owner');
  if (existsSync('/run/banger') || existsSync('/run/banger-root')) return t.skip('/run/banger or /run/banger-root exists: a banger service runs on this host');
  const dir = tmpRoot();
  chmodSync(dir, 0o755);
  const leftover = join(dir, 'helper-child.pid');
  const fake = writeFakeHelper(dir, leftover);
  const hadLogDir = existsSync('/var/log/banger');
  const children = () => (existsSync(leftover) ? read(leftover).split('\n').filter(Boolean).map(Number) : []);
  t.after(async () => {
    await banger(['system', 'stop']);
    for (const p of children()) if (isAlive(p)) process.kill(p, 'SIGKILL');
    rmSync('/run/banger', { recursive: true, force: true });
    rmSync('/run/banger-root', { recursive: true, force: true });
    if (!hadLogDir) rmSync('/var/log/banger', { recursive: true, force: true });
  });
  const start = await banger(['system', 'start', '--owner', USER, '--helper', fake]);
  assert.equal(start.code, 0, `${start.stdout}${start.stderr}`);
  const supervisor = (JSON.parse(read('/run/banger-root/supervisor.json')) as { pid: number }).pid;
  const [child] = children();
  assert.ok(child, 'the fake helper started its child');
  assert.equal(pgidOf(child), pgidOf(supervisor), "the child is in the supervisor's process group");
  const stop = await banger(['system', 'stop']);
  assert.equal(stop.code, 0, stop.stderr);
  assert.equal(isAlive(supervisor), false);
  assert.equal(isAlive(child), true, 'the child survived: no group was signalled (as QEMU, in its own session, survives)');
});
