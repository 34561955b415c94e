import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseConfig } from '../../src/config/config.js';
import { type Check, type HostProbe, runChecks } from '../../src/doctor/checks.js';

const GiB = 1024 ** 3;

/** A host where everything banger needs is present; each test breaks one thing. */
function fakeHost(overrides: Partial<HostProbe> & { missing?: string[] } = {}): HostProbe {
  const { missing = [], ...rest } = overrides;
  return {
    arch: 'x64',
    nodeVersion: 'v20.19.0',
    uid: 0,
    which: async (cmd) => (missing.includes(cmd) ? undefined : cmd.startsWith('/') ? cmd : `/usr/bin/${cmd}`),
    versionOf: async (cmd) => `${cmd} version 1.0`,
    deviceAccess: async () => 'ok',
    passwordlessSudo: async () => false,
    freeBytes: async () => 100 * GiB,
    migrations: () => ({ status: 'current', current: 1, latest: 1 }),
    config: () => ({ ok: true, path: '/home/u/.config/banger/config.toml', exists: false }),
    kvmProbe: () => ({ usable: true, detail: 'booted in 120 ms' }),
    sshInclude: () => true,
    qemuBin: 'qemu-system-x86_64',
    firecrackerBin: 'firecracker',
    stateDir: '/home/u/.local/state/banger',
    runMode: async () => ({ mode: 'none' }),
    fileSync: [],
    homeDir: '/home/u',
    hostPathInfo: async () => undefined,
    ...rest,
  };
}

function byName(checks: Check[], name: string): Check {
  const c = checks.find((x) => x.name === name);
  assert.ok(c, `no check named ${name}: ${checks.map((x) => x.name).join(', ')}`);
  return c;
}

function assertFixes(checks: Check[]): void {
  for (const c of checks) {
    if (c.status === 'PASS') assert.equal(c.fix, undefined, `PASS ${c.name} should not carry a fix`);
    else assert.ok(c.fix && c.fix.length > 5, `${c.status} ${c.name} has no fix`);
  }
}

test('a fully equipped host: every check passes', async () => {
  const checks = await runChecks(fakeHost());
  assert.deepEqual(
    checks.filter((c) => c.status !== 'PASS').map((c) => `${c.status} ${c.name}: ${c.detail}`),
    [],
  );
  // The checks that matter most are all present.
  for (const name of [
    'cpu architecture',
    'node version',
    'config',
    '/dev/kvm',
    'qemu',
    'firecracker',
    'qemu-img',
    'mkfs.ext4',
    'debugfs',
    'privileges',
    'free disk',
    'store',
  ]) {
    byName(checks, name);
  }
  assert.match(byName(checks, 'qemu').detail, /^\/usr\/bin\/qemu-system-x86_64 \(\/usr\/bin\/qemu-system-x86_64 version 1\.0\)$/);
});

test('missing qemu-img: FAIL with a fix naming the apt package', async () => {
  const checks = await runChecks(fakeHost({ missing: ['qemu-img'] }));
  const c = byName(checks, 'qemu-img');
  assert.equal(c.status, 'FAIL');
  assert.match(c.fix ?? '', /apt-get install -y qemu-utils/);
  assert.equal(checks.filter((x) => x.status === 'FAIL').length, 1, 'only the missing tool fails');
});

test('missing e2fsprogs tools: each FAIL names e2fsprogs', async () => {
  const checks = await runChecks(fakeHost({ missing: ['mkfs.ext4', 'debugfs'] }));
  for (const name of ['mkfs.ext4', 'debugfs']) {
    const c = byName(checks, name);
    assert.equal(c.status, 'FAIL');
    assert.match(c.fix ?? '', /e2fsprogs/);
  }
});

test('/dev/kvm missing or inaccessible: WARN (TCG still works) with a fix', async () => {
  const missing = byName(await runChecks(fakeHost({ deviceAccess: async () => 'missing', kvmProbe: () => undefined })), '/dev/kvm');
  assert.equal(missing.status, 'WARN');
  assert.match(missing.detail, /TCG/);
  assert.match(missing.fix ?? '', /modprobe kvm_intel/);

  const noAccess = byName(await runChecks(fakeHost({ deviceAccess: async () => 'no-access' })), '/dev/kvm');
  assert.equal(noAccess.status, 'WARN');
  assert.match(noAccess.fix ?? '', /usermod -aG kvm/);

  const probeFailed = byName(await runChecks(fakeHost({ kvmProbe: () => ({ usable: false, detail: 'KVM_CREATE_VM failed' }) })), '/dev/kvm');
  assert.equal(probeFailed.status, 'WARN');
  assert.match(probeFailed.detail, /KVM_CREATE_VM failed/);
  assert.ok(probeFailed.fix);
});

test('qemu: FAIL when neither VMM exists, only WARN when firecracker can stand in', async () => {
  const neither = await runChecks(fakeHost({ missing: ['qemu-system-x86_64', 'firecracker'] }));
  assert.equal(byName(neither, 'qemu').status, 'FAIL');
  assert.match(byName(neither, 'qemu').fix ?? '', /qemu-system-x86/);
  assert.equal(byName(neither, 'firecracker').status, 'WARN');

  const fcOnly = await runChecks(fakeHost({ missing: ['qemu-system-x86_64'] }));
  assert.equal(byName(fcOnly, 'qemu').status, 'WARN');
  assert.equal(byName(fcOnly, 'firecracker').status, 'PASS');

  // The configured binary names are the ones looked up.
  const custom = await runChecks(fakeHost({ qemuBin: '/opt/qemu/bin/qemu', missing: ['/opt/qemu/bin/qemu'] }));
  assert.match(byName(custom, 'qemu').detail, /\/opt\/qemu\/bin\/qemu not found/);
});

test('node version, architecture, privileges, disk and store thresholds', async () => {
  const cases: Array<[Partial<HostProbe>, string, Check['status']]> = [
    [{ nodeVersion: 'v20.18.3' }, 'node version', 'FAIL'],
    [{ nodeVersion: 'v18.20.0' }, 'node version', 'FAIL'],
    [{ nodeVersion: 'v22.0.0' }, 'node version', 'PASS'],
    [{ nodeVersion: 'v24.1.0' }, 'node version', 'PASS'],
    [{ arch: 'arm64' }, 'cpu architecture', 'FAIL'],
    [{ uid: 1000, passwordlessSudo: async () => true }, 'privileges', 'PASS'],
    [{ uid: 1000, passwordlessSudo: async () => false }, 'privileges', 'WARN'],
    [{ freeBytes: async () => 1 * GiB }, 'free disk', 'FAIL'],
    [{ freeBytes: async () => 5 * GiB }, 'free disk', 'WARN'],
    [{ freeBytes: async () => undefined }, 'free disk', 'WARN'],
    [{ migrations: () => ({ status: 'needed', current: 0, latest: 1 }) }, 'store', 'WARN'],
    [{ migrations: () => ({ status: 'newer', current: 9, latest: 1 }) }, 'store', 'FAIL'],
    [{ migrations: () => ({ error: 'file is not a database' }) }, 'store', 'FAIL'],
    [{ config: () => ({ ok: false, error: 'config.toml: unknown key "vmn"' }) }, 'config', 'FAIL'],
  ];
  for (const [override, name, want] of cases) {
    const checks = await runChecks(fakeHost(override));
    const c = byName(checks, name);
    assert.equal(c.status, want, `${name} with ${JSON.stringify(Object.keys(override))}: ${c.detail}`);
    assertFixes(checks);
  }
});

test('every WARN and FAIL carries a fix, even on a host where everything is wrong', async () => {
  const broken = fakeHost({
    arch: 'ia32',
    nodeVersion: 'v16.0.0',
    uid: 1000,
    missing: [
      'qemu-system-x86_64',
      'firecracker',
      'qemu-img',
      'mkfs.ext4',
      'debugfs',
      'e2fsck',
      'resize2fs',
      'ip',
      'ssh',
      'nft',
      'iptables',
      'mmdebstrap',
      'npm',
    ],
    deviceAccess: async () => 'missing',
    kvmProbe: () => undefined,
    sshInclude: () => false,
    freeBytes: async () => 0,
    migrations: () => ({ status: 'newer', current: 5, latest: 1 }),
    config: () => ({ ok: false, error: 'bad' }),
    runMode: async () => ({ mode: 'none', units: { owner: 'gone', ownerExists: false, complete: false, missingPaths: ['/opt/banger/bin/bangerd.js'] } }),
    // Every agent logged in on this host, nothing synced.
    hostPathInfo: async (p) => ({ type: p.endsWith('.json') ? 'file' : 'dir', mode: 0o600 }),
  });
  const checks = await runChecks(broken);
  assert.equal(checks.filter((c) => c.status === 'PASS').length, 0, checks.map((c) => `${c.status} ${c.name}`).join('\n'));
  assertFixes(checks);
  // Networking tools only warn: VMs still run without --nat.
  assert.equal(byName(checks, 'iptables or nft').status, 'WARN');
  assert.equal(byName(checks, 'guest isolation').status, 'WARN', 'no nft and no iptables: nothing pins a TAP');
  assert.equal(byName(checks, 'ip').status, 'WARN');
  // Only the recipe images need these: a WARN naming the image, never a FAIL.
  assert.equal(byName(checks, 'npm').status, 'WARN');
  assert.match(byName(checks, 'npm').detail, /debian-bookworm-agents/);
  assert.equal(byName(checks, 'mmdebstrap').status, 'WARN');
});

test('a missing ssh Include is a WARN whose fix installs it', async () => {
  const c = byName(await runChecks(fakeHost({ sshInclude: () => false })), 'ssh config');
  assert.equal(c.status, 'WARN');
  assert.equal(c.fix, 'banger ssh-config --install');
  assert.equal(byName(await runChecks(fakeHost({})), 'ssh config').status, 'PASS');
});

test('doctor names the run mode: split under systemd or the supervisor, a dev daemon, or none', async () => {
  const mode = async (m: Parameters<typeof fakeHost>[0]) => byName(await runChecks(fakeHost(m)), 'run mode');
  assert.match((await mode({ runMode: async () => ({ mode: 'systemd', owner: 'alice' }) })).detail, /^split: .*bangerd as alice, under systemd$/);
  assert.match((await mode({ runMode: async () => ({ mode: 'supervisor', owner: 'alice', pid: 42 }) })).detail, /under banger's supervisor \(pid 42\)/);
  assert.match((await mode({ runMode: async () => ({ mode: 'dev', pid: 7, uid: 0 }) })).detail, /^all-root development daemon \(pid 7/);
  assert.match((await mode({ runMode: async () => ({ mode: 'dev', pid: 7, uid: 1000 }) })).detail, /^development daemon as uid 1000/);
  assert.match((await mode({})).detail, /^no daemon running/);
  // No units: no unit check at all.
  assert.equal(
    (await runChecks(fakeHost({}))).find((c) => c.name === 'service units'),
    undefined,
  );
});

test('installed units are checked: owner exists, both present, the programs they run exist', async () => {
  const good = { owner: 'alice', ownerExists: true, complete: true, missingPaths: [] as string[] };
  const run = async (units: typeof good, mode: 'systemd' | 'none' = 'systemd') =>
    runChecks(fakeHost({ runMode: async () => ({ mode, owner: 'alice', units }) }));
  assert.equal(byName(await run(good), 'service units').status, 'PASS');
  assert.equal(byName(await run(good), 'run mode').status, 'PASS');
  const notRunning = byName(await run(good, 'none'), 'run mode');
  assert.equal(notRunning.status, 'WARN');
  assert.match(notRunning.fix ?? '', /banger system start --owner alice/);
  const gone = byName(await run({ ...good, ownerExists: false }), 'service units');
  assert.equal(gone.status, 'FAIL');
  assert.match(gone.detail, /owner alice does not exist/);
  const missing = byName(await run({ ...good, missingPaths: ['/opt/banger/bin/bangerd.js'] }), 'service units');
  assert.equal(missing.status, 'FAIL');
  assert.match(missing.detail, /missing: \/opt\/banger\/bin\/bangerd\.js/);
  assert.match(byName(await run({ ...good, complete: false }), 'service units').detail, /is missing/);
});

test('under the split service a non-root caller without sudo is fine: the helper does host networking', async () => {
  const c = byName(await runChecks(fakeHost({ uid: 1000, runMode: async () => ({ mode: 'supervisor', owner: 'alice', pid: 9 }) })), 'privileges');
  assert.equal(c.status, 'PASS');
  assert.match(c.detail, /bangerd-root/);
  assert.equal(byName(await runChecks(fakeHost({ uid: 1000 })), 'privileges').status, 'WARN', 'no service, no root, no sudo: still a WARN');
});

test('/dev/net/tun: checked for an unprivileged caller (its QEMU opens it), FAIL with the fix when it cannot; not for root', async () => {
  const access = (tun: 'missing' | 'no-access' | 'ok') => async (path: string) => (path === '/dev/net/tun' ? tun : 'ok');
  const asUser = async (tun: 'missing' | 'no-access' | 'ok') => byName(await runChecks(fakeHost({ uid: 1000, deviceAccess: access(tun) })), '/dev/net/tun');
  assert.equal((await asUser('ok')).status, 'PASS');
  const denied = await asUser('no-access');
  assert.equal(denied.status, 'FAIL');
  assert.match(denied.fix ?? '', /chmod 0666 \/dev\/net\/tun/);
  assert.match((await asUser('missing')).fix ?? '', /modprobe tun/);
  const asRoot = await runChecks(fakeHost({ uid: 0, deviceAccess: access('no-access') }));
  assert.equal(
    asRoot.some((c) => c.name === '/dev/net/tun'),
    false,
    'root opens it whatever its mode',
  );
});

/** A host whose home holds these paths (file: mode; dir: 'dir'). */
const withFiles =
  (files: Record<string, number | 'dir'>): HostProbe['hostPathInfo'] =>
  async (path) => {
    const f = files[path];
    return f === undefined ? undefined : f === 'dir' ? { type: 'dir', mode: 0o755 } : { type: 'file', mode: f };
  };

test('agents: no login on this host passes; a login without [[file_sync]] warns with the exact TOML to add, never fails', async () => {
  const quiet = await runChecks(fakeHost());
  for (const a of ['claude', 'opencode', 'pi', 'codex']) assert.equal(byName(quiet, `agent ${a}`).status, 'PASS');
  assert.match(byName(quiet, 'agent claude').detail, /no login on this host \(none of ~\/\.claude\.json, ~\/\.claude\/, ~\/\.claude\/\.credentials\.json\)/);

  const checks = await runChecks(
    fakeHost({
      hostPathInfo: withFiles({ '/home/u/.codex': 'dir', '/home/u/.codex/auth.json': 0o600, '/home/u/.claude.json': 0o600 }),
    }),
  );
  assertFixes(checks);
  assert.ok(!checks.some((c) => c.status === 'FAIL'));
  const codex = byName(checks, 'agent codex');
  assert.equal(codex.status, 'WARN');
  assert.match(codex.detail, /on this host: ~\/\.codex\/, ~\/\.codex\/auth\.json; not synced: ~\/\.codex\/, ~\/\.codex\/auth\.json/);
  assert.equal(
    codex.fix,
    [
      "to use codex in VMs with this host's login (docs/agents.md), add to /home/u/.config/banger/config.toml:",
      '[[file_sync]]',
      'host = "~/.codex"',
      'guest = "/root/.codex"',
      '[[file_sync]]',
      'host = "~/.codex/auth.json"',
      'guest = "/root/.codex/auth.json"',
      'mode = "0600"',
    ].join('\n'),
  );
  // The TOML of the fix is a valid config as it stands.
  assert.equal(parseConfig((codex.fix as string).split('\n').slice(1).join('\n'), 'fix.toml').file_sync.length, 2);
  const claude = byName(checks, 'agent claude');
  assert.equal(claude.status, 'WARN');
  assert.match(claude.fix ?? '', /host = "~\/\.claude\.json"/);
  assert.doesNotMatch(claude.fix ?? '', /\.credentials/, 'only paths that exist are proposed');
});

test('agents: entries cover a path by itself or by a directory above it with the matching guest path; loose credentials warn', async () => {
  const files = withFiles({ '/home/u/.pi': 'dir', '/home/u/.pi/agent/auth.json': 0o644, '/home/u/.claude.json': 0o600 });
  const covered = await runChecks(
    fakeHost({
      hostPathInfo: files,
      fileSync: [
        { host: '~/.pi/', guest: '/root/.pi' },
        { host: '/home/u/.pi/agent/auth.json', guest: '/root/.pi/agent/auth.json', mode: 0o600 },
        { host: '~/.claude.json', guest: '/root/.claude.json' },
      ],
    }),
  );
  assert.equal(byName(covered, 'agent pi').status, 'PASS');
  assert.match(byName(covered, 'agent pi').detail, /synced into VMs by \[\[file_sync\]\]: ~\/\.pi\/, ~\/\.pi\/agent\/auth\.json/);
  assert.equal(byName(covered, 'agent claude').status, 'PASS', 'a 0600 host file keeps its mode');

  // The directory alone brings auth.json with its host mode (0644 here): readable by every guest user.
  const loose = await runChecks(fakeHost({ hostPathInfo: files, fileSync: [{ host: '~/.pi', guest: '/root/.pi' }] }));
  const pi = byName(loose, 'agent pi');
  assert.equal(pi.status, 'WARN');
  assert.match(pi.detail, /would be readable by every guest user: ~\/\.pi\/agent\/auth\.json/);
  assert.match(pi.fix ?? '', /mode = "0600"/);

  // A directory synced somewhere else in the guest is not where the agent looks.
  const elsewhere = await runChecks(fakeHost({ hostPathInfo: files, fileSync: [{ host: '~/.pi', guest: '/root/other' }] }));
  assert.match(byName(elsewhere, 'agent pi').detail, /not synced: ~\/\.pi\/, ~\/\.pi\/agent\/auth\.json/);
});
