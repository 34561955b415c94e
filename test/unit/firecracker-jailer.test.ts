import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { VmLaunchSpec } from '../../src/vmm/driver.js';
import {
  buildJailerArgs,
  JAIL_PATHS,
  type JailerOptions,
  jailedSpec,
  jailerOptionsFor,
  jailIdFor,
  jailLayout,
  removeJail,
} from '../../src/vmm/firecracker/jailer.js';
import { FirecrackerConfigError } from '../../src/vmm/firecracker/requests.js';
import { chrootDirOf, JAILER_ARGUMENTS, parseJailerArgv } from '../helpers/fake-jailer-spec.js';

const opts: JailerOptions = { jailerBin: '/usr/bin/jailer', execFile: '/usr/bin/firecracker', chrootBaseDir: '/var/lib/banger/jail', uid: 998, gid: 997 };
const ID = '0123456789abcdef0123456789abcdef';

test('the jailer argv is valid against the documented arguments, with and without a netns', () => {
  for (const o of [opts, { ...opts, netns: '/var/run/netns/banger' }]) {
    const argv = buildJailerArgs(o, ID, ['--api-sock', '/fc.sock']);
    const { parsed, errors } = parseJailerArgv(argv);
    assert.deepEqual(errors, []);
    assert.deepEqual(parsed.values.get('--netns'), o.netns ? [o.netns] : undefined);
    assert.deepEqual(parsed.values.get('--cgroup-version'), ['2']);
    // Where the jailer builds the chroot is where the driver places the files.
    assert.equal(chrootDirOf(parsed), jailLayout(o, ID).chrootDir);
  }
});

test('the reference parser refuses what the jailer refuses (so the contract test can fail)', () => {
  const flags = new Set(JAILER_ARGUMENTS.map((a) => a.flag));
  assert.ok(['--id', '--exec-file', '--uid', '--gid', '--chroot-base-dir', '--cgroup-version', '--netns'].every((f) => flags.has(f)));
  const ok = buildJailerArgs(opts, ID, []);
  assert.match(parseJailerArgv(ok.filter((a) => a !== '--uid' && a !== '998')).errors.join(), /--uid is required/);
  assert.match(parseJailerArgv([...ok.slice(0, -1), '--api-sock', 'x']).errors.join(), /unexpected argument/);
  assert.match(parseJailerArgv(ok.map((a) => (a === '2' ? '3' : a))).errors.join(), /--cgroup-version/);
  assert.match(parseJailerArgv(ok.map((a) => (a === opts.execFile ? '/usr/bin/fc' : a))).errors.join(), /must contain "firecracker"/);
  assert.match(parseJailerArgv([...ok, '--id', 'x']).errors.join(), /already passes --id/);
});

test('hostile or unusable inputs never reach the jailer argv', () => {
  const bad: Array<[Partial<JailerOptions>, string]> = [
    [{}, '../../etc'],
    [{}, 'a/b'],
    [{}, ''],
    [{}, 'x'.repeat(65)],
    [{ execFile: 'firecracker' }, ID],
    [{ execFile: '/usr/bin/qemu' }, ID],
    [{ chrootBaseDir: 'jail' }, ID],
    [{ uid: -1 }, ID],
    [{ gid: 1.5 }, ID],
    [{ netns: 'netns' }, ID],
  ];
  for (const [o, id] of bad) assert.throws(() => buildJailerArgs({ ...opts, ...o }, id, []), FirecrackerConfigError, JSON.stringify([o, id]));
  assert.equal(jailIdFor('vm-1'), 'vm-1');
});

test('removeJail only removes a directory under the jail base', async (t) => {
  const base = await mkdtemp(join(tmpdir(), 'jail-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  await assert.rejects(removeJail({ chrootBaseDir: base }, { jailDir: join(base, '..') }), /not under/);
  await assert.rejects(removeJail({ chrootBaseDir: base }, { jailDir: base }), /not under/);
  await writeFile(join(base, 'file'), 'x');
  await assert.rejects(removeJail({ chrootBaseDir: base }, { jailDir: join(base, 'file') }), /not a directory/);
  await removeJail({ chrootBaseDir: base }, { jailDir: join(base, 'absent') });
});

test('the jailer is used only by a root daemon with the jailer and Firecracker found; a missing vmm_user is an error', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'jailer-bin-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const f of ['jailer', 'firecracker']) await writeFile(join(dir, f), '#!/bin/sh\n', { mode: 0o755 });
  const s = { jailerBin: join(dir, 'jailer'), firecrackerBin: join(dir, 'firecracker'), vmmUser: '', chrootBaseDir: join(dir, 'jail'), isRoot: true };
  assert.deepEqual(await jailerOptionsFor(s), {
    jailerBin: s.jailerBin,
    execFile: s.firecrackerBin,
    chrootBaseDir: s.chrootBaseDir,
    uid: process.getuid?.(),
    gid: process.getgid?.(),
  });
  assert.deepEqual(await jailerOptionsFor({ ...s, vmmUser: '123:456' }).then((o) => [o?.uid, o?.gid]), [123, 456]);
  assert.equal(await jailerOptionsFor({ ...s, isRoot: false }), undefined);
  assert.equal(await jailerOptionsFor({ ...s, jailerBin: '' }), undefined);
  assert.equal(await jailerOptionsFor({ ...s, jailerBin: join(dir, 'no-jailer') }), undefined);
  await assert.rejects(jailerOptionsFor({ ...s, vmmUser: 'no-such-user-xyz' }), /does not exist/);
});

test('a restore in the jail: the saved state and memory under fixed in-jail names, the rest as for a boot', () => {
  const spec: VmLaunchSpec = {
    vmId: ID,
    name: 'dev',
    vcpus: 1,
    memoryMib: 128,
    kernelPath: '/v/vmlinux',
    cmdline: '',
    disks: [{ id: 'root', path: '/v/root.ext4', format: 'raw' }],
    nets: [],
    runDir: '/r',
    serialLogPath: '/v/serial.log',
    vmmLogPath: '/v/vmm.log',
    agentSocketPath: '/r/agent.sock',
    accel: 'kvm',
  };
  assert.equal(jailedSpec(spec).restore, undefined);
  const jailed = jailedSpec({ ...spec, restore: { statePath: '/s/a.state', memoryPath: '/s/a.mem' } });
  assert.deepEqual(jailed.restore, { statePath: JAIL_PATHS.restoreState, memoryPath: JAIL_PATHS.restoreMemory });
  assert.deepEqual([jailed.disks[0]?.path, jailed.agentSocketPath], [JAIL_PATHS.disk('root'), JAIL_PATHS.agentSocket]);
});
