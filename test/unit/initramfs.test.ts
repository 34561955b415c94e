import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { AGENT_UNIT, buildBaseInitramfs, buildPayloadCpio, payloadEntries, renderPayloadConfig, writeVmInitrd } from '../../src/guest/initramfs.js';
import { requires } from '../helpers/prereq.js';

const hasCpio = spawnSync('cpio', ['--version']).status === 0;
const cpioSkip = requires(hasCpio, 'no host cpio');
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
const tmp = async () => {
  const d = await mkdtemp(join(tmpdir(), 'initramfs-test-'));
  dirs.push(d);
  return d;
};
/** `cpio -itv` of a gzipped archive, as "mode name[ -> target]" lines. */
const listing = (gz: Buffer): string[] =>
  spawnSync('cpio', ['-itv', '--quiet'], { input: gunzipSync(gz), env: { ...process.env, TZ: 'UTC' } })
    .stdout.toString()
    .trim()
    .split('\n')
    .map((l) => `${l.split(' ')[0]} ${l.replace(/^.*? 1970 /, '')}`);

test('base initramfs: /init, mount points, /dev/console and the FAKE modules in load order', { skip: cpioSkip }, async () => {
  const d = await tmp();
  const ver = '6.1.0-99-fake';
  const mods = join(d, 'lib/modules', ver, 'kernel');
  await mkdir(mods, { recursive: true });
  await writeFile(join(mods, 'b.ko'), 'junk\0depends=a\0');
  await writeFile(join(mods, 'a.ko'), 'junk\0depends=\0');
  await writeFile(join(d, 'init'), 'fake init');
  const out = join(d, 'base.cpio.gz');
  const r = await buildBaseInitramfs({ kernelTree: d, version: ver, initBinary: join(d, 'init'), outPath: out, required: ['b'], optional: ['vsock'] });
  assert.deepEqual(r.modules, ['a', 'b']);
  assert.deepEqual(r.resolution?.missingOptional, ['vsock']);
  const gz = await readFile(out);
  const l = listing(gz);
  for (const want of [
    '-rwxr-xr-x init',
    'crw------- dev/console',
    'dr-xr-xr-x proc',
    'dr-xr-xr-x sys',
    'drwxr-xr-x newroot',
    '-rw-r--r-- lib/modules/load-order',
    `-rw-r--r-- lib/modules/${ver}/kernel/a.ko`,
  ]) {
    assert.ok(l.includes(want), `${want} in\n${l.join('\n')}`);
  }
  const dir = await tmp();
  spawnSync('cpio', ['-id', '--quiet', '-D', dir, 'lib/modules/load-order'], { input: gunzipSync(gz) });
  assert.equal(await readFile(join(dir, 'lib/modules/load-order'), 'utf8'), `${ver}/kernel/a.ko\n${ver}/kernel/b.ko\n`);
});

test('a kernel without a modules directory gets banger-init alone', async () => {
  const d = await tmp();
  await writeFile(join(d, 'init'), 'fake init');
  const r = await buildBaseInitramfs({ kernelTree: d, version: '6.6.1', initBinary: join(d, 'init'), outPath: join(d, 'i.gz') });
  assert.deepEqual(r.modules, []);
  assert.equal(r.resolution, undefined);
});

test('payload: agent, enabled unit (a symlink), udev rule, hostname, config and extra files under /banger', { skip: cpioSkip }, async () => {
  const gz = await buildPayloadCpio({
    agentBinary: Buffer.from('AGENT'),
    hostname: 'dev',
    config: { work_disk: '/dev/vdb' },
    extraFiles: [
      { path: '/etc/ssh/ssh_host_ed25519_key', mode: 0o600, content: 'KEY' },
      { path: '/root/.ssh', mode: 0o700, dir: true },
      { path: '/etc/motd', target: '/dev/null' },
    ],
  });
  const l = listing(gz);
  for (const want of [
    'drwx------ banger',
    '-rw------- banger/config',
    '-rwxr-xr-x banger/root/usr/local/bin/banger-agent',
    '-rw-r--r-- banger/root/etc/systemd/system/banger-agent.service',
    'lrwxrwxrwx banger/root/etc/systemd/system/multi-user.target.wants/banger-agent.service -> /etc/systemd/system/banger-agent.service',
    '-rw-r--r-- banger/root/etc/udev/rules.d/90-banger-agent.rules',
    '-rw-r--r-- banger/root/etc/hostname',
    '-rw------- banger/root/etc/ssh/ssh_host_ed25519_key',
    'drwx------ banger/root/root/.ssh',
    'lrwxrwxrwx banger/root/etc/motd -> /dev/null',
  ]) {
    assert.ok(l.includes(want), `${want} in\n${l.join('\n')}`);
  }
  const dir = await tmp();
  spawnSync('cpio', ['-id', '--quiet', '-D', dir], { input: gunzipSync(gz) });
  assert.equal(await readFile(join(dir, 'banger/config'), 'utf8'), 'agent=/usr/local/bin/banger-agent\nwork_disk=/dev/vdb\n');
  assert.equal(await readFile(join(dir, 'banger/root/etc/hostname'), 'utf8'), 'dev\n');
  assert.equal(await readFile(join(dir, 'banger/root/etc/udev/rules.d/90-banger-agent.rules'), 'utf8'), 'SUBSYSTEM=="virtio-ports", TAG+="systemd"\n');
  assert.equal(await readFile(join(dir, 'banger/root/etc/systemd/system/banger-agent.service'), 'utf8'), AGENT_UNIT);
});

test('the agent unit restarts the agent and does not wait for its device', () => {
  assert.match(AGENT_UNIT, /^Restart=always$/m);
  assert.match(AGENT_UNIT, /^WantedBy=multi-user\.target$/m);
  assert.doesNotMatch(AGENT_UNIT, /\.device/);
});

test('payload input is validated', () => {
  const base = { agent: Buffer.from('a'), hostname: 'vm' };
  assert.throws(() => payloadEntries({ ...base, hostname: 'no way' }), /not a valid hostname/);
  assert.throws(() => payloadEntries({ ...base, extraFiles: [{ path: 'etc/x', mode: 0o644, content: '' }] }), /not absolute/);
  assert.throws(() => payloadEntries({ ...base, extraFiles: [{ path: '/../x', mode: 0o644, content: '' }] }), /"\.\."/);
  assert.throws(() => renderPayloadConfig({ 'Bad-Key': 'x' }), /bad key/);
  assert.throws(() => renderPayloadConfig({ agent: 'x\nwork_disk=/dev/sda' }), /line break/);
  assert.equal(renderPayloadConfig({ a: '1', b: undefined }), 'a=1\n');
});

test('the VM initrd is the base followed by the payload, private to its owner', async () => {
  const d = await tmp();
  await writeFile(join(d, 'base'), 'BASE', { mode: 0o644 });
  await writeVmInitrd({ baseInitramfs: join(d, 'base'), payload: Buffer.from('PAYLOAD'), outPath: join(d, 'initrd.img') });
  assert.equal(await readFile(join(d, 'initrd.img'), 'utf8'), 'BASEPAYLOAD');
  assert.equal((await stat(join(d, 'initrd.img'))).mode & 0o777, 0o600);
});
