import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '../../src/guest/agent-client.js';
import type { AgentHealth } from '../../src/guest/agent-protocol.js';
import { guestBinary } from '../../src/guest/binaries.js';
import { buildCmdline } from '../../src/guest/cmdline.js';
import { buildBaseInitramfs, buildPayloadCpio, writeVmInitrd } from '../../src/guest/initramfs.js';
import { readHostTscKhz } from '../../src/host/cpu.js';
import type { VmLaunchSpec, VmmHandle } from '../../src/vmm/driver.js';
import { isHandleAlive } from '../../src/vmm/process.js';
import { QemuDriver } from '../../src/vmm/qemu/driver.js';
import { copyOpenToNew, openGuestMemory } from '../../src/vmm/qemu/migration.js';
import { QmpClient } from '../../src/vmm/qemu/qmp.js';
import { guestAssets } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * QEMU memory snapshots on a real guest, through the driver alone (no daemon): a guest booted with
 * its RAM in a shared memfd is paused and resumed, its root disk switched to a new qcow2 layer,
 * its device state and RAM saved; a second QEMU with its own run dir, disk overlay and agent socket
 * is restored from those files and its agent answers with the source's boot id. Run under
 * `flock /tmp/banger-vm.lock` like every boot.
 */
const assets = guestAssets();
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
const skip =
  requires(assets, 'guest assets missing: run scripts/guest-assets.sh') ||
  requires(existsSync(guestBinary('banger-init')) && existsSync(guestBinary('banger-agent')), 'agent/build missing: run npm run build') ||
  requires(has('qemu-system-x86_64') && has('qemu-img'), 'qemu-system-x86_64 / qemu-img not installed');

const MEMORY_MIB = 512;
const driver = new QemuDriver('qemu-system-x86_64', { isRoot: () => false });
const say = (s: string) => process.stderr.write(`qemu-snapshot: ${s}\n`);

let dir: string;
let initrd: string;
let cmdline: string;
const handles: VmmHandle[] = [];
const agents: AgentClient[] = [];

function qemuImg(args: string[]) {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `qemu-img ${args.join(' ')}: ${r.stderr}`);
}

async function sha(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

async function runstate(h: VmmHandle): Promise<string> {
  const q = await QmpClient.connect(h.controlSocket);
  try {
    return (await q.execute<{ status: string }>('query-status')).status;
  } finally {
    q.close();
  }
}

function vmSpec(name: string, root: string, sharedMemory: boolean, extra: Partial<VmLaunchSpec> = {}): VmLaunchSpec {
  const vmDir = join(dir, name);
  return {
    vmId: name,
    name,
    vcpus: 1,
    memoryMib: MEMORY_MIB,
    kernelPath: (assets as NonNullable<typeof assets>).kernel,
    initrdPath: initrd,
    cmdline,
    disks: [{ id: 'root', path: root, format: 'qcow2' }],
    nets: [],
    runDir: join(vmDir, 'run'),
    serialLogPath: join(vmDir, 'serial.log'),
    vmmLogPath: join(vmDir, 'vmm.log'),
    agentSocketPath: join(vmDir, 'run', 'agent.sock'),
    accel: 'tcg',
    sharedMemory,
    ...extra,
  };
}

/** QEMU's guest-RAM memfd, read through /proc as the driver does. */
function memfdOf(h: VmmHandle) {
  return openGuestMemory(h.pid, MEMORY_MIB * 1024 * 1024, constants.O_RDONLY, () => isHandleAlive(h));
}

async function agentOf(h: VmmHandle, readyMs: number): Promise<AgentClient> {
  const a = new AgentClient({ socketPath: h.agentSocket, transport: 'virtio-serial' });
  agents.push(a);
  await a.waitReady(readyMs);
  return a;
}

/** Runs a shell command in the guest through the agent and waits for its exit code. */
async function guestShell(a: AgentClient, id: string, shell: string): Promise<number | null> {
  await a.call('proc.start', { id, shell }, { timeoutMs: 10_000 });
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; await sleep(200)) {
    const p = await a.call('proc.show', { id }, { timeoutMs: 10_000 });
    if (p.state !== 'running') return p.exit_code;
  }
  throw new Error(`guest command ${id} did not finish`);
}

// What the steps hand each other.
let source: VmmHandle;
let sourceAgent: AgentClient;
let coldBootMs = 0;
let healthAtSave: AgentHealth;
const top0 = () => join(dir, 'a', 'root-0.qcow2');
const top1 = () => join(dir, 'a', 'root-1.qcow2');
const statePath = () => join(dir, 'snap', 'state');
const memoryPath = () => join(dir, 'snap', 'memory');

describe('QEMU memory snapshots (real QEMU)', { skip }, () => {
  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    dir = await mkdtemp(join(tmpdir(), 'banger-qsnap-'));
    const base = join(dir, 'base.cpio.gz');
    await buildBaseInitramfs({ kernelTree: a.kernelDir, version: a.kernelVersion, initBinary: guestBinary('banger-init'), outPath: base });
    const payload = await buildPayloadCpio({ agentBinary: guestBinary('banger-agent'), hostname: 'snapvm', config: {}, extraFiles: [] });
    initrd = join(dir, 'initrd.img');
    await writeVmInitrd({ baseInitramfs: base, payload, outPath: initrd });
    const tscKhz = await readHostTscKhz();
    cmdline = buildCmdline({ hostname: 'snapvm', ...(tscKhz ? { tscKhz } : {}) });
    for (const d of ['a', 'a/run', 'b', 'b/run', 'snap']) await mkdir(join(dir, d), { mode: 0o700 });
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', a.rootfs, '-F', 'raw', top0()]);
  });

  after(async () => {
    for (const a of agents) a.close();
    for (const h of handles) if (await isHandleAlive(h)) await driver.kill(h);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('a guest with its RAM in a shared memfd boots; pause stops it and resume runs it again', async () => {
    const started = Date.now();
    source = await driver.launch(vmSpec('a', top0(), true));
    handles.push(source);
    sourceAgent = await agentOf(source, 100_000);
    coldBootMs = Date.now() - started;
    say(`cold boot to agent health: ${coldBootMs} ms`);
    const ram = await memfdOf(source);
    const st = await ram.stat();
    await ram.close();
    assert.equal(st.size, MEMORY_MIB * 1024 * 1024);
    assert.equal(st.nlink, 0, 'a memfd: no name anywhere');
    assert.ok(st.blocks > 0, 'the guest RAM is really in the memfd (it has allocated pages)');

    await driver.pause(source);
    await driver.pause(source); // idempotent
    assert.equal(await runstate(source), 'paused');
    await assert.rejects(sourceAgent.health(1500), /did not answer/, 'a paused guest does not answer');
    await driver.resume(source);
    await driver.resume(source); // idempotent
    assert.equal(await runstate(source), 'running');
    assert.equal((await sourceAgent.health(10_000)).ready, true);
  });

  test('saveState writes a small state file and a sparse RAM copy (0600), refuses a planted link; the disks switch layers in postmigrate and the source resumes', async () => {
    healthAtSave = await sourceAgent.health(10_000);
    await driver.pause(source);

    // A link planted at the state path: refused, its target untouched, no RAM copy made.
    const canary = join(dir, 'canary');
    await writeFile(canary, 'canary');
    const planted = join(dir, 'snap', 'planted');
    await symlink(canary, planted);
    await assert.rejects(driver.saveState(source, { statePath: planted, memoryPath: join(dir, 'snap', 'planted-mem') }), /already exists/);
    assert.equal(await readFile(canary, 'utf8'), 'canary');
    assert.equal(existsSync(join(dir, 'snap', 'planted-mem')), false);

    const t0 = Date.now();
    const saved = await driver.saveState(source, { statePath: statePath(), memoryPath: memoryPath() });
    const saveMs = Date.now() - t0;
    say(`saveState: ${saveMs} ms, state ${saved.stateBytes} B, memory ${saved.memoryBytes} B allocated of ${MEMORY_MIB} MiB`);
    const st = await lstat(statePath());
    const mem = await lstat(memoryPath());
    assert.equal(st.size, saved.stateBytes);
    assert.equal(mem.size, MEMORY_MIB * 1024 * 1024);
    assert.equal(mem.blocks * 512, saved.memoryBytes);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(mem.mode & 0o777, 0o600);
    // x-ignore-shared: the RAM is not in the stream, only device state (and small ROM blocks).
    assert.ok(saved.stateBytes < 8 * 1024 * 1024, `state of ${saved.stateBytes} bytes holds more than device state`);
    const now = await memfdOf(source);
    await copyOpenToNew(now, 'memfd', join(dir, 'snap', 'ram-now'));
    await now.close();
    assert.equal(await sha(memoryPath()), await sha(join(dir, 'snap', 'ram-now')), 'the copy is the RAM as saved');
    assert.equal(await runstate(source), 'postmigrate');

    // The disk layer the snapshot keeps, frozen from the pause on: switched after the save, as the
    // snapshot service does (QEMU has inactivated its disks at the end of the migration; the switch
    // still works, and cont reactivates the new top).
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', top0(), '-F', 'qcow2', top1()]);
    await driver.switchDiskLayers(source, [{ driveId: 'root', path: top1() }]);
    await driver.resume(source);
    assert.equal(await runstate(source), 'running');
    assert.equal((await sourceAgent.health(10_000)).boot_id, healthAtSave.boot_id);
  });

  test('after switchDiskLayers the old top no longer changes while the guest writes; the new top does', async () => {
    const frozen = await sha(top0());
    const newTopBefore = await sha(top1());
    const code = await guestShell(sourceAgent, 'w1', 'dd if=/dev/urandom of=/root/after-snapshot bs=1M count=8 conv=fsync 2>/dev/null && sync');
    assert.equal(code, 0);
    assert.equal(await sha(top0()), frozen, 'the frozen layer did not change');
    assert.notEqual(await sha(top1()), newTopBefore, 'control: the write landed in the new top');
  });

  test('a second QEMU restored from the saved files continues the same guest: same boot id, uptime continuing, its own disk', async () => {
    const rootB = join(dir, 'b', 'root.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', top0(), '-F', 'qcow2', rootB]);
    const t0 = Date.now();
    const restored = await driver.launch(vmSpec('b', rootB, true, { restore: { statePath: statePath(), memoryPath: memoryPath() } }));
    handles.push(restored);
    const launchedMs = Date.now() - t0;
    assert.equal(await runstate(restored), 'paused', 'a restore is left paused');
    const ram = await memfdOf(restored);
    assert.equal((await ram.stat()).size, MEMORY_MIB * 1024 * 1024);
    await ram.close();
    await driver.resume(restored);
    const agent = await agentOf(restored, 30_000);
    const h = await agent.health(10_000);
    const healthMs = Date.now() - t0;
    say(`restore: launch+load ${launchedMs} ms, to agent health ${healthMs} ms (cold boot ${coldBootMs} ms)`);
    assert.equal(h.boot_id, healthAtSave.boot_id, 'the same boot continues');
    assert.equal(h.hostname, healthAtSave.hostname);
    assert.ok(h.uptime_s >= healthAtSave.uptime_s, `uptime continues (${h.uptime_s} s after ${healthAtSave.uptime_s} s)`);
    // The restored guest sees the disk as it was at the snapshot: not what the source wrote since.
    assert.equal(await guestShell(agent, 'c1', 'test ! -e /root/after-snapshot'), 0);
    assert.equal(await guestShell(sourceAgent, 'c2', 'test -e /root/after-snapshot'), 0, 'control: the source has it');
    // Both guests live side by side.
    assert.equal(await isHandleAlive(source), true);
    assert.equal(await runstate(restored), 'running');
    // A restored VM is snapshotted like any other (its handle names its own RAM file).
    await driver.pause(restored);
    const again = await driver.saveState(restored, { statePath: join(dir, 'snap', 'state-b'), memoryPath: join(dir, 'snap', 'memory-b') });
    assert.equal((await stat(join(dir, 'snap', 'state-b'))).size, again.stateBytes);
    await driver.resume(restored);
    assert.equal((await agent.health(10_000)).boot_id, healthAtSave.boot_id);
  });

  test('saveState on a VM with anonymous RAM fails with a clear error', async () => {
    const vm = vmSpec('c', top0(), false, { disks: [], initrdPath: undefined as unknown as string });
    delete vm.initrdPath;
    await mkdir(join(dir, 'c', 'run'), { recursive: true, mode: 0o700 });
    const h = await driver.launch(vm);
    handles.push(h);
    await driver.pause(h);
    await assert.rejects(driver.saveState(h, { statePath: join(dir, 'c', 'state'), memoryPath: join(dir, 'c', 'mem') }), /private RAM/);
    assert.equal(existsSync(join(dir, 'c', 'state')), false);
    await driver.kill(h);
  });
});
