import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { resolveClientLayout, resolveLayout, SERVICE_HELPER_SOCKET } from '../../src/config/layout.js';
import { HELPER_SOCKET_DEFAULT } from '../../src/host/helper-wire.js';
import { ensureSubordinateIds, parsePasswdLine, planSubordinateIds, removeSubordinateIds } from '../../src/system/owner.js';
import { backoffMs, relayLines } from '../../src/system/supervisor.js';
import { renderDaemonUnit, renderHelperUnit, type UnitSpec, unitValue } from '../../src/system/units.js';

const spec: UnitSpec = {
  owner: { name: 'alice', uid: 1000, gid: 1000, home: '/home/alice' },
  nodePath: '/usr/bin/node',
  daemonScript: '/opt/banger/bin/bangerd.js',
  helperScript: '/opt/banger/bin/bangerd-root.js',
  kvmGroup: true,
  bridge: 'banger0',
};

/** Every `Key=value` line of a unit, in order (comments and section headers left out). */
const assignments = (text: string) =>
  text
    .split('\n')
    .filter((l) => /^[A-Za-z]+=/.test(l))
    .map((l) => l.slice(0, l.indexOf('=')));

test('the helper unit: root, CAP_NET_ADMIN (+ CHOWN, FOWNER for its socket) only, hardened, on the fixed socket', () => {
  const u = renderHelperUnit(spec);
  assert.equal(unitValue(u, 'User'), undefined, 'the helper runs as root');
  assert.equal(unitValue(u, 'CapabilityBoundingSet'), 'CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER');
  for (const [k, v] of [
    ['NoNewPrivileges', 'yes'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['RuntimeDirectory', 'banger-root'],
    ['Restart', 'on-failure'],
    ['DevicePolicy', 'closed'],
    ['DeviceAllow', '/dev/net/tun rw'],
    ['IPAddressDeny', 'any'],
  ])
    assert.equal(unitValue(u, k as string), v, k);
  // /proc/sys must stay writable for net.ipv4.ip_forward.
  assert.equal(unitValue(u, 'ProtectKernelTunables'), undefined);
  assert.equal(unitValue(u, 'ExecStart'), '/usr/bin/node /opt/banger/bin/bangerd-root.js --bridge banger0 --owner alice --socket /run/banger-root/helper.sock');
  // The helper may act on the owner's bridge only; a name banger does not own never reaches the unit.
  assert.throws(() => renderHelperUnit({ ...spec, bridge: 'docker0' }), /banger only manages bridges/);
  assert.match(u, /^\[Unit\]$/m);
  assert.match(u, /^\[Install\]\nWantedBy=multi-user.target$/m);
  const keys = assignments(u);
  assert.equal(new Set(keys).size, keys.length, `a key set twice: ${keys.join(' ')}`);
});

test('the daemon unit: User=owner, KillMode=process, preserved 0700 runtime dir, the service env, ordered after the helper', () => {
  const u = renderDaemonUnit(spec);
  assert.equal(unitValue(u, 'User'), 'alice');
  assert.equal(unitValue(u, 'KillMode'), 'process');
  assert.equal(unitValue(u, 'RuntimeDirectory'), 'banger');
  assert.equal(unitValue(u, 'RuntimeDirectoryMode'), '0700');
  assert.equal(unitValue(u, 'RuntimeDirectoryPreserve'), 'yes');
  assert.equal(unitValue(u, 'SupplementaryGroups'), 'kvm');
  assert.equal(unitValue(u, 'Environment'), 'HOME=/home/alice BANGER_RUNTIME_DIR=/run/banger BANGER_ROOT_HELPER=/run/banger-root/helper.sock');
  assert.equal(unitValue(u, 'After'), 'network.target bangerd-root.service');
  assert.equal(unitValue(u, 'Wants'), 'bangerd-root.service');
  assert.equal(unitValue(u, 'ExecStart'), '/usr/bin/node --max-semi-space-size=2 /opt/banger/bin/bangerd.js --foreground');
  // mmdebstrap's unshare mode runs the setuid newuidmap: no NoNewPrivileges, no bounding set.
  assert.equal(unitValue(u, 'NoNewPrivileges'), undefined);
  assert.equal(unitValue(u, 'CapabilityBoundingSet'), undefined);
  for (const k of ['ProtectSystem', 'PrivateTmp', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectControlGroups', 'RestrictAddressFamilies']) {
    assert.ok(unitValue(u, k), `${k} is set`);
  }
  // Every path in ExecStart is absolute.
  for (const a of (unitValue(u, 'ExecStart') ?? '').split(' ').filter((x) => !x.startsWith('--'))) assert.ok(a.startsWith('/'), a);
  assert.equal(unitValue(renderDaemonUnit({ ...spec, kvmGroup: false }), 'SupplementaryGroups'), undefined, 'no kvm group on the host: none asked for');
});

test('owner names that are not user names, root, and paths that would need quoting are refused', () => {
  for (const name of ['Alice', 'al ice', '-alice', 'a'.repeat(33), 'alice\nUser=root', 'root;x', '', '../x', 'al%ice']) {
    assert.throws(() => renderDaemonUnit({ ...spec, owner: { ...spec.owner, name } }), /is not a valid user name/, JSON.stringify(name));
  }
  assert.throws(() => renderDaemonUnit({ ...spec, owner: { ...spec.owner, name: 'root', uid: 0 } }), /unprivileged user, not uid 0/);
  for (const bad of ['relative/node', '/opt/my banger/bin/bangerd.js', '/opt/%n/bangerd.js', '/opt/../etc/x', '/opt/"x"', '/opt/x\nExecStartPre=/bin/sh']) {
    assert.throws(() => renderDaemonUnit({ ...spec, daemonScript: bad }), /cannot go into a systemd unit/, JSON.stringify(bad));
    assert.throws(() => renderHelperUnit({ ...spec, helperScript: bad }), /cannot go into a systemd unit/, JSON.stringify(bad));
  }
  assert.throws(() => renderDaemonUnit({ ...spec, owner: { ...spec.owner, home: '/home/a b' } }), /owner home/);
});

test('subordinate ids: a free 65536-range above every existing one, none when the owner has one', () => {
  assert.equal(planSubordinateIds('', { name: 'alice', uid: 1000 }), 'alice:100000:65536');
  assert.equal(planSubordinateIds('bob:100000:65536\ncarol:231072:65536\n', { name: 'alice', uid: 1000 }), 'alice:296608:65536');
  assert.equal(planSubordinateIds('bob:100000:65536\nalice:500000:1000\n', { name: 'alice', uid: 1000 }), undefined);
  assert.equal(planSubordinateIds('1000:300000:65536\n', { name: 'alice', uid: 1000 }), undefined, 'an entry by uid counts');
  assert.equal(planSubordinateIds('# comment\nbroken line\nbob:x:y\n', { name: 'alice', uid: 1000 }), 'alice:100000:65536');
  assert.equal(planSubordinateIds('low:1000:500\n', { name: 'alice', uid: 1000 }), 'alice:100000:65536', 'never below 100000');

  const dir = mkdtempSync(join(tmpdir(), 'banger-subid-'));
  try {
    const file = join(dir, 'subuid');
    writeFileSync(file, 'bob:100000:65536'); // no trailing newline
    assert.equal(ensureSubordinateIds(file, { name: 'alice', uid: 1000 }), 'alice:165536:65536');
    assert.equal(ensureSubordinateIds(file, { name: 'alice', uid: 1000 }), undefined, 'idempotent');
    assert.equal(readFileSync(file, 'utf8'), 'bob:100000:65536\nalice:165536:65536\n');
    assert.equal(removeSubordinateIds(file, 'alice:165536:65536'), true);
    assert.equal(readFileSync(file, 'utf8'), 'bob:100000:65536\n');
    assert.equal(removeSubordinateIds(file, 'alice:165536:65536'), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('getent passwd lines parse strictly', () => {
  assert.deepEqual(parsePasswdLine('alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash\n'), { name: 'alice', uid: 1000, gid: 1001, home: '/home/alice' });
  assert.equal(parsePasswdLine('alice:x:1000:1001:/home/alice:/bin/bash'), undefined, 'six fields');
  assert.equal(parsePasswdLine('alice:x:-1:1001::/home/alice:/bin/bash'), undefined);
  assert.equal(parsePasswdLine('alice:x:1000:1001::relative:/bin/bash'), undefined);
});

test("the service's helper socket is the one the daemon and bangerd-root default to", () => {
  assert.equal(SERVICE_HELPER_SOCKET, HELPER_SOCKET_DEFAULT);
});

test('supervisor backoff doubles from 1 s to at most 30 s', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 20].map(backoffMs), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
});

test('BANGER_RUNTIME_DIR moves the runtime dir (absolute only); BANGER_HOME still wins', () => {
  const base = { HOME: '/home/alice' };
  const l = resolveLayout({ ...base, BANGER_RUNTIME_DIR: '/run/banger', XDG_RUNTIME_DIR: '/run/user/1000' });
  assert.equal(l.runtimeDir, '/run/banger');
  assert.equal(l.socketPath, '/run/banger/bangerd.sock');
  assert.equal(l.vmsRunDir, '/run/banger/vms');
  assert.equal(l.stateDir, '/home/alice/.local/state/banger', 'state stays in the XDG dirs');
  assert.equal(resolveLayout({ ...base, BANGER_RUNTIME_DIR: '/run/banger/' }).runtimeDir, '/run/banger');
  assert.equal(resolveLayout({ ...base, BANGER_HOME: '/tmp/h', BANGER_RUNTIME_DIR: '/run/banger' }).runtimeDir, '/tmp/h/run');
  for (const bad of ['run/banger', '/run/../tmp/x', './x']) {
    assert.throws(() => resolveLayout({ ...base, BANGER_RUNTIME_DIR: bad }), /BANGER_RUNTIME_DIR must be an absolute path/);
  }
  // Empty means unset: the XDG runtime dir.
  assert.equal(resolveLayout({ ...base, BANGER_RUNTIME_DIR: '', XDG_RUNTIME_DIR: '/run/user/1000' }).runtimeDir, '/run/user/1000/banger');
});

test("the client finds the service's socket only in a directory the caller owns, and never over an explicit env", () => {
  const dir = mkdtempSync(join(tmpdir(), 'banger-svc-'));
  try {
    const mine = join(dir, 'mine');
    const theirs = join(dir, 'theirs');
    const link = join(dir, 'link');
    mkdirSync(mine, { mode: 0o700 });
    mkdirSync(theirs, { mode: 0o700 });
    symlinkSync(mine, link);
    const env = { HOME: '/home/alice', XDG_RUNTIME_DIR: '/run/user/1000' };
    const svc = resolveClientLayout(env, mine);
    assert.equal(svc.socketPath, join(mine, 'bangerd.sock'));
    assert.equal(svc.service, true);
    assert.equal(svc.stateDir, '/home/alice/.local/state/banger');
    // Explicit env wins: tests (BANGER_HOME) and users who chose a runtime dir.
    assert.equal(resolveClientLayout({ ...env, BANGER_HOME: '/tmp/h' }, mine).socketPath, '/tmp/h/run/bangerd.sock');
    assert.equal(resolveClientLayout({ ...env, BANGER_RUNTIME_DIR: '/tmp/r' }, mine).service, undefined);
    // Absent, a link, or someone else's: the per-user layout, where autostart applies.
    const perUser = '/run/user/1000/banger/bangerd.sock';
    assert.equal(resolveClientLayout(env, join(dir, 'absent')).socketPath, perUser);
    assert.equal(resolveClientLayout(env, link).socketPath, perUser);
    if (process.getuid?.() === 0) {
      chownSync(theirs, 65534, 65534);
      assert.equal(resolveClientLayout(env, theirs).socketPath, perUser);
      assert.equal(resolveClientLayout(env, theirs).service, undefined);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the supervisor relays bangerd's output cleaned, cut and capped, never through root's log descriptor", async () => {
  const relay = async (script: string, cap: number) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    relayLines(child, 'bangerd', (l) => lines.push(l), cap);
    await new Promise((r) => child.once('close', r));
    return lines;
  };
  let lines = await relay(
    `process.stdout.write('fine\\n'); process.stderr.write('bangerd-root: forged \\u001b[2Jline\\n'); process.stdout.write('x'.repeat(5000) + '\\n');`,
    1_000_000,
  );
  assert.ok(lines.includes('bangerd: fine'), lines.join('\n').slice(0, 300));
  assert.ok(lines.includes('bangerd: bangerd-root: forged ?[2Jline'), 'control characters replaced, and every line says who wrote it');
  assert.ok(
    lines.every((l) => l.startsWith('bangerd: ') && l.length <= 'bangerd: '.length + 2000),
    'lines cut at 2000',
  );
  lines = await relay(`for (let i = 0; i < 100; i++) process.stdout.write('y'.repeat(999) + '\\n');`, 10_000);
  assert.ok(
    lines.some((l) => /more than 10000 bytes/.test(l)),
    'the cap is said once reached',
  );
  assert.ok(lines.filter((l) => l.includes('yyy')).length < 30, `output stops at the cap (${lines.length} lines)`);
});
