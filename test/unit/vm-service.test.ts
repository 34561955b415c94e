import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, test } from 'node:test';
import pino from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { defaultConfig } from '../../src/config/config.js';
import { ensureLayout, resolveLayout } from '../../src/config/layout.js';
import { DiskLayers } from '../../src/daemon/services/disk-layers.js';
import { FileSyncService } from '../../src/daemon/services/file-sync.js';
import { SnapshotCatalog } from '../../src/daemon/services/snapshot-catalog.js';
import { VmService, type VmServiceDeps } from '../../src/daemon/services/vms.js';
import type { AgentLink } from '../../src/guest/agent-link.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { migrate, openDb } from '../../src/store/db.js';
import { LeaseRepo } from '../../src/store/leases.js';
import { Repos } from '../../src/store/repos.js';
import { KeyedMutex } from '../../src/util/keyed-mutex.js';
import type { OpContext } from '../../src/util/op-context.js';
import { LOG_CAP_BYTES } from '../../src/vmm/console-log.js';
import type { VmLaunchSpec, VmmDriver, VmmHandle } from '../../src/vmm/driver.js';
import { currentBootId, processStartTime } from '../../src/vmm/process.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { waitFor } from '../integration/harness.js';

/**
 * VmService against FAKES: a FAKE VMM driver whose "VMM" is a real sleeping process (so liveness
 * checks by pid, start time and boot id are the real ones), a FAKE agent link, FAKE disks and a
 * FAKE network over the real lease table. The store is real SQLite. Nothing boots.
 */
const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const NOW = new Date('2026-01-01T00:00:00Z');
const ctx: OpContext = {
  id: 'op-test',
  stage: () => {},
  log: () => {},
  progress: () => {},
  setTarget: () => {},
  checkCancelled: () => {},
  signal: new AbortController().signal,
};

interface Knobs {
  launchFails?: boolean;
  agentNeverReady?: boolean;
  /** The FAKE agent reports sshd listening from this many `ports` polls on (default: at once). */
  sshdAfterPolls?: number;
  afterGuestReady?: VmServiceDeps['afterGuestReady'];
  /** Another TCP port the FAKE agent lists from this many `ports` polls on (the user's server). */
  appPort?: { port: number; afterPolls: number };
}

interface World {
  home: string;
  repos: Repos;
  leases: LeaseRepo;
  svc: VmService;
  calls: string[];
  vmms: Map<number, ChildProcess>;
  portPolls: () => number;
  /** The FAKE guest channel of every agent link opened, in order. */
  guests: HostFakeGuest[];
  layout: ReturnType<typeof resolveLayout>;
}

async function world(knobs: Knobs = {}, shared?: World): Promise<World> {
  const home = shared?.home ?? (await mkdtemp('/tmp/bg-vmsvc-'));
  if (!shared) cleanups.push(() => rm(home, { recursive: true, force: true }));
  const layout = resolveLayout({ BANGER_HOME: home });
  ensureLayout(layout);
  const db = openDb(layout.dbPath);
  cleanups.push(() => void db.close());
  migrate(db);
  const repos = new Repos(db);
  if (!shared) {
    repos.kernels.insert({
      id: 'k1',
      name: 'k',
      version: '6.1',
      dir: home,
      kernel_path: join(home, 'vmlinux'),
      initrd_path: null,
      modules_dir: null,
      source: 'test',
      managed: 1,
      size_bytes: 0,
      created_at: NOW.toISOString(),
    });
    repos.images.insert({
      id: 'i1',
      name: 'img',
      rootfs_path: join(home, 'rootfs.ext4'),
      kernel_id: 'k1',
      managed: 1,
      has_systemd: 1,
      has_sshd: 1,
      digest: null,
      size_bytes: 0,
      source: 'test',
      created_at: NOW.toISOString(),
    });
  }
  const leases = new LeaseRepo(db);
  const calls: string[] = [];
  const vmms = shared?.vmms ?? new Map<number, ChildProcess>();
  const driver: VmmDriver = {
    kind: 'qemu',
    rootDiskFormat: 'qcow2',
    async launch(spec: VmLaunchSpec): Promise<VmmHandle> {
      calls.push(`launch ${spec.name}`);
      if (knobs.launchFails) throw new BangerError('vmm_failed', 'FAKE VMM refused to start');
      const p = spawn('sleep', ['600'], { stdio: 'ignore', detached: true });
      const pid = p.pid as number;
      vmms.set(pid, p);
      cleanups.push(() => void p.kill('SIGKILL'));
      await writeFile(spec.serialLogPath, 'FAKE console\n');
      const bootId = await currentBootId();
      return {
        kind: 'qemu',
        pid,
        pidStartTime: (await processStartTime(pid)) as string,
        ...(bootId ? { bootId } : {}),
        controlSocket: join(spec.runDir, 'qmp.sock'),
        agentSocket: spec.agentSocketPath,
        agentTransport: 'virtio-serial',
        accel: 'tcg',
      };
    },
    async shutdown(h) {
      calls.push(`shutdown ${h.pid}`);
      return this.kill(h).then(() => true);
    },
    async kill(h) {
      calls.push(`kill ${h.pid}`);
      const p = vmms.get(h.pid);
      if (!p || p.exitCode !== null || p.signalCode) return;
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await gone;
    },
    snapshotSupport: { memory: false, diskLayers: 'copy' },
    async pause() {
      throw new Error('FAKE VMM: no pause');
    },
    async resume() {
      throw new Error('FAKE VMM: no resume');
    },
    async saveState() {
      throw new Error('FAKE VMM: no saveState');
    },
  };
  let portPolls = 0;
  const guests: HostFakeGuest[] = [];
  const agent = (): AgentLink => ({
    waitReady: async () => {
      if (knobs.agentNeverReady) throw new Error('FAKE agent never answers');
    },
    health: async () => ({ ready: true }) as never,
    ports: async () => {
      const poll = portPolls++;
      return [
        ...(poll >= (knobs.sshdAfterPolls ?? 0) ? [{ proto: 'tcp' as const, address: '0.0.0.0', port: 22, pid: 7, command: 'sshd' }] : []),
        ...(knobs.appPort && poll >= knobs.appPort.afterPolls
          ? [{ proto: 'tcp6' as const, address: '::', port: knobs.appPort.port, pid: 8, command: 'app' }]
          : []),
        // A UDP socket on the same port is not what a TCP readiness check waits for.
        ...(knobs.appPort ? [{ proto: 'udp' as const, address: '0.0.0.0', port: knobs.appPort.port, pid: 9, command: 'dns' }] : []),
      ];
    },
    stats: async () => ({}) as never,
    poweroff: async () => {},
    identitySet: async () => {},
    freezeFilesystems: async () => {},
    thawFilesystems: async () => {},
    guest: (() => {
      const g = new HostFakeGuest();
      guests.push(g);
      return g;
    })(),
    close: () => {},
  });
  const network: VmServiceDeps['network'] = {
    lease: (id) => leases.lease(id, '172.30.0.0/24', '172.30.0.1', NOW.toISOString()),
    ipOf: (id) => leases.byVm(id)?.ip ?? null,
    attach: async (vm) => {
      calls.push(`attach ${vm.name}`);
      const l = leases.byVm(vm.id);
      return { ip: l?.ip as string, mac: l?.mac as string, tap: 'bg0.0', prefix: 24, gateway: '172.30.0.1', nameservers: ['172.30.0.1'] };
    },
    detach: async (vm) => void calls.push(`detach ${vm.name}`),
    published: async () => {},
    applyNat: async () => void calls.push('applyNat'),
    reconcile: async () => {},
  };
  const touch = async (p: string) => void (await writeFile(p, ''));
  const fakeDiskTools = {
    createOverlay: async (_b: string, out: string) => touch(out),
    cloneRaw: async (_b: string, out: string) => touch(out),
    mkfsFromDir: async (out: string) => touch(out),
  };
  const disks: VmServiceDeps['disks'] = {
    growFile: async () => {},
    growQcow2: async () => {},
  };
  const layers = new DiskLayers({ repos, layersDir: layout.layersDir, clock: { now: () => NOW }, log: pino({ level: 'silent' }), disks: fakeDiskTools });
  const snapshots = new SnapshotCatalog({ repos, vmmVersion: async () => 'FAKE VMM 1.0' });
  const svc = new VmService({
    repos,
    layout,
    config: { ...defaultConfig(), accel: 'tcg' },
    clock: { now: () => NOW },
    log: pino({ level: 'silent' }),
    locks: new KeyedMutex(),
    disks,
    layers,
    snapshots,
    kernels: undefined as never,
    images: { row: () => repos.images.byId('i1') as never, ensure: async () => undefined },
    driver: () => driver,
    vmmKind: 'qemu',
    accel: async () => 'tcg',
    host: { cpus: 8, memoryBytes: 64 * 1024 ** 3 },
    runner: new ProcessRunner(),
    network,
    sshPublicKey: async () => 'ssh-ed25519 AAAAFAKE test',
    agentLink: agent,
    agentReadyTimeoutMs: 1000,
    readiness: { portPollMs: 5, commandRetryMs: 5 },
    ...(knobs.afterGuestReady ? { afterGuestReady: knobs.afterGuestReady } : {}),
  });
  cleanups.push(() => svc.close());
  return { home, repos, leases, svc, calls, vmms, layout, portPolls: () => portPolls, guests };
}

test('create → running; a running VM refuses a whole vm set that includes sizes, and nothing of it is applied', async () => {
  const w = await world();
  const vm = await w.svc.create({ name: 'dev', start: true }, ctx);
  assert.equal(vm.state, 'running');
  await assert.rejects(w.svc.set('dev', { nat: true, vcpus: 1 }), (e: BangerError) => e.code === 'precondition_failed' && /stop it first/.test(e.fix ?? ''));
  assert.equal(w.repos.vms.byName('dev')?.nat, 0, 'NAT was not switched on by a refused request');
  assert.ok(!w.calls.includes('applyNat'));
  // NAT alone changes live.
  assert.equal((await w.svc.set('dev', { nat: true })).nat, true);
  // start of a running VM is a no-op: no second VMM.
  await w.svc.bulk('start', ['dev']);
  assert.equal(w.calls.filter((c) => c.startsWith('launch')).length, 1);
});

test('ready waits for the guest sshd by default (so `ssh <name>.vm` works at once), and only for the agent with waitFor=agent', async () => {
  const w = await world({ sshdAfterPolls: 3 });
  const stages: string[] = [];
  await w.svc.create({ name: 'sshy', start: true }, { ...ctx, stage: (s) => stages.push(s) });
  assert.equal(w.portPolls(), 4, 'polled until port 22 listened');
  assert.ok(stages.includes('wait for sshd'));
  const before = w.portPolls();
  stages.length = 0;
  await w.svc.create({ name: 'agenty', start: true, waitFor: 'agent' }, { ...ctx, stage: (s) => stages.push(s) });
  assert.equal(w.portPolls(), before, 'no sshd wait');
  assert.ok(!stages.includes('wait for sshd'));
  assert.equal(w.repos.vms.byName('agenty')?.state, 'running');
});

test('a VMM that fails to launch leaves no row, lease, files or TAP', async () => {
  const w = await world({ launchFails: true });
  await assert.rejects(w.svc.create({ name: 'broken', start: true }, ctx), /FAKE VMM refused/);
  assert.equal(w.repos.vms.byName('broken'), undefined);
  assert.deepEqual(w.leases.all(), []);
  assert.ok(w.calls.includes('detach broken'), 'the TAP went back');
  assert.ok(!existsSync(join(w.layout.vmsStateDir, 'broken')));
});

test('a guest that never becomes ready: the VMM is stopped, the VM kept in error for a post-mortem', async () => {
  const w = await world({ agentNeverReady: true });
  await assert.rejects(w.svc.create({ name: 'mute', start: true }, ctx), (e: BangerError) => e.code === 'timeout');
  const row = w.repos.vms.byName('mute');
  assert.equal(row?.state, 'error');
  assert.equal(row?.handle, null);
  assert.equal([...w.vmms.values()].filter((p) => p.exitCode === null && !p.signalCode).length, 0, 'no VMM left running');
  assert.ok(w.leases.byVm(row?.id as string), 'the kept VM keeps its lease');
});

test('the step after agent-ready (file sync) runs at every start of a running VM; its failure stops the VM, leaves it in error, and fails the start', async () => {
  const seen: string[] = [];
  let fail = false;
  const w = await world({
    afterGuestReady: async (vm) => {
      seen.push(`${vm.name}:${w.repos.vms.byId(vm.id)?.state}`);
      if (fail) throw new BangerError('precondition_failed', 'file_sync /nope → dev:/root/x failed: FAKE', { fix: 'fix the entry' });
    },
  });
  await w.svc.create({ name: 'dev', start: true }, ctx);
  await w.svc.bulk('restart', ['dev']);
  assert.deepEqual(seen, ['dev:running', 'dev:running']);

  fail = true;
  const r = await w.svc.bulk('restart', ['dev']);
  assert.equal(r.results[0]?.ok, false);
  assert.match(r.results[0]?.error?.message ?? '', /file_sync .* failed: FAKE \(dev was stopped\)/);
  assert.equal(r.results[0]?.error?.fix, 'fix the entry');
  const row = w.repos.vms.byName('dev');
  assert.equal(row?.state, 'error');
  assert.equal(row?.handle, null);
  assert.match(row?.last_error ?? '', /FAKE/);
  assert.equal([...w.vmms.values()].filter((p) => p.exitCode === null && !p.signalCode).length, 0, 'no VMM left running');

  // A create whose step fails leaves nothing, like every failed create.
  await assert.rejects(w.svc.create({ name: 'dev2', start: true }, ctx), /FAKE/);
  assert.equal(w.repos.vms.byName('dev2'), undefined);

  // An image build's VM (transient) never gets synced files: its /root is saved into the image.
  await w.svc.create({ name: 'builder', start: true, transient: true }, ctx);
  assert.equal(w.repos.vms.byName('builder')?.state, 'running');
  assert.ok(!seen.some((s) => s.startsWith('builder')));
});

/** FAKE guest whose data sessions stall like a hostile guest's: a write is never finished; only its signal ends it. */
class StallingGuest extends HostFakeGuest {
  override async writeFile(_path: string, _data: Readable, opts: { mode: number; mkdirs: boolean; signal?: AbortSignal }): Promise<{ size: number }> {
    const signal = opts.signal;
    if (!signal) return new Promise(() => {}); // what the daemon did before: wait forever
    await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
    throw new BangerError('cancelled', 'cancelled');
  }
}

test('a guest that stalls the sync files step fails the start (VM in error, stopped) and frees the VM lock for stop/delete', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp('/tmp/bg-vmsync-');
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'secret'), 'x');
  const sync = new FileSyncService({
    entries: [{ host: join(dir, 'secret'), guest: '/root/secret' }],
    guest: async () => new StallingGuest(),
    runner: new ProcessRunner(),
    log: pino({ level: 'silent' }),
    gitIdentity: async () => ({}),
    entryTimeoutMs: 200,
  });
  let stall = false;
  const w = await world({ afterGuestReady: async (vm, c) => (stall ? sync.run(vm, c) : undefined) });
  await w.svc.create({ name: 'stall', start: true }, ctx);
  stall = true;
  const r = await w.svc.bulk('restart', ['stall']);
  assert.equal(r.results[0]?.ok, false);
  assert.match(r.results[0]?.error?.message ?? '', /did not finish within 200 ms \(the guest stalled\) \(stall was stopped\)/);
  const row = w.repos.vms.byName('stall');
  assert.equal(row?.state, 'error');
  assert.equal(row?.handle, null);
  assert.equal([...w.vmms.values()].filter((p) => p.exitCode === null && !p.signalCode).length, 0, 'no VMM left running');
  const del = await w.svc.bulk('delete', ['stall']);
  assert.equal(del.results[0]?.ok, true, 'the VM lock was released');
  assert.equal(w.repos.vms.byName('stall'), undefined);
});

test('a restarted service re-adopts a live VMM and marks a dead one stopped or error', async () => {
  const w = await world();
  await w.svc.create({ name: 'alive', start: true }, ctx);
  await w.svc.create({ name: 'dead', start: true }, ctx);
  const dead = w.repos.vms.byName('dead');
  const h = JSON.parse(dead?.handle as string) as VmmHandle;
  const p = w.vmms.get(h.pid) as ChildProcess;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
  w.svc.close();
  const again = await world({}, w);
  await again.svc.reconcile();
  assert.equal(again.repos.vms.byName('alive')?.state, 'running');
  assert.equal(again.repos.vms.byName('dead')?.state, 'error', 'no clean power-off on the console');
  assert.equal(again.repos.vms.byName('dead')?.handle, null);
});

test('bulk actions: refs resolved once, duplicates dropped, results in first-seen order, unknown refs reported', async () => {
  const w = await world();
  await w.svc.create({ name: 'a', start: true }, ctx);
  await w.svc.create({ name: 'b', start: true }, ctx);
  const r = await w.svc.bulk('stop', ['b', 'ghost', 'a', 'b']);
  assert.deepEqual(
    r.results.map((x) => [x.ref, x.ok]),
    [
      ['b', true],
      ['ghost', false],
      ['a', true],
    ],
  );
  assert.equal(r.results[1]?.error?.code, 'not_found');
  assert.equal(w.repos.vms.byName('a')?.state, 'stopped');
  assert.deepEqual(
    (await w.svc.prune(true)).map((v) => v.name),
    ['a', 'b'],
  );
});

test('a guest flooding its console: the running VM’s serial.log is capped by the service (rotated to .1)', async () => {
  const w = await world();
  const vm = await w.svc.create({ name: 'loud', start: true }, ctx);
  const serial = join(vm.dir, 'serial.log');
  // What a guest writing without end leaves in its console log (written here, as QEMU would).
  const chunk = Buffer.alloc(1024 * 1024, 0x78);
  for (let i = 0; i < 20; i++) await appendFile(serial, chunk);
  assert.ok(statSync(serial).size >= 20 * 1024 * 1024);
  await w.svc.reconcile();
  assert.ok(statSync(serial).size <= LOG_CAP_BYTES, `serial.log is ${statSync(serial).size} bytes`);
  assert.ok(existsSync(`${serial}.1`), 'the tail was kept in serial.log.1');
  assert.ok(statSync(`${serial}.1`).size <= LOG_CAP_BYTES);
});

test('guest(): a running VM answers its agent link’s channel; a stopped one is a conflict naming banger vm start', async () => {
  const w = await world();
  await w.svc.create({ name: 'dev', start: true }, ctx);
  const g = await w.svc.guest('dev');
  assert.equal(g.vm.name, 'dev');
  assert.ok(g.channel instanceof HostFakeGuest, 'the channel of the VM’s agent link');
  await w.svc.create({ name: 'idle', start: false }, ctx);
  await assert.rejects(w.svc.guest('idle'), (e: BangerError) => e.code === 'conflict' && /banger vm start idle/.test(e.fix ?? ''));
  await assert.rejects(w.svc.guest('nope'), (e: BangerError) => e.code === 'not_found');
});

test('auto-stop leaves a VM alone while a client uses it (a followed process), and stops it once released', async () => {
  const w = await world();
  const vm = await w.svc.create({ name: 'busy', start: true }, ctx);
  const release = w.svc.inUse(vm.id);
  // Every running VM is stale at a threshold of -1 ms: only the hold keeps it running.
  assert.deepEqual(await w.svc.stopStale(-1), []);
  assert.equal(w.repos.vms.byName('busy')?.state, 'running');
  release();
  release(); // idempotent
  assert.deepEqual(await w.svc.stopStale(-1), ['busy']);
  assert.equal(w.repos.vms.byName('busy')?.state, 'stopped');
});

test('a resume from disk cut short by the daemon: the next start stops the half-restored VMM and suspends the VM again with its saved state', async () => {
  const w = await world();
  await w.svc.create({ name: 'sus', start: true }, ctx);
  const r = w.repos.vms.byName('sus') as NonNullable<ReturnType<typeof w.repos.vms.byName>>;
  const h = JSON.parse(r.handle as string) as VmmHandle;
  // What resumeLocked leaves when the daemon dies inside startLocked: the state renamed aside, a
  // live VMM, the row `starting`.
  const resuming = join(r.dir, 'suspend.resuming');
  await mkdir(resuming, { recursive: true });
  await writeFile(join(resuming, 'state.bin'), 'SAVED DEVICE STATE');
  await writeFile(join(resuming, 'memory.bin'), 'SAVED RAM');
  w.repos.vms.update(r.id, { state: 'starting' });
  w.svc.close();
  const again = await world({}, w);
  await again.svc.reconcile();
  const after1 = again.repos.vms.get(r.id);
  assert.equal(after1.state, 'suspended');
  assert.equal(after1.handle, null);
  assert.match(after1.last_error ?? '', /resume again/);
  assert.equal(await readFile(join(r.dir, 'suspend', 'state.bin'), 'utf8'), 'SAVED DEVICE STATE', 'the saved state is back where a resume reads it');
  assert.equal(existsSync(resuming), false);
  const vmm = w.vmms.get(h.pid);
  assert.ok(vmm, 'the fake VMM of the VM');
  assert.equal(vmm.signalCode, 'SIGKILL', 'the half-restored VMM was stopped');
});

/** An OpContext that records stages, progress and log lines, with its own cancel. */
function recordingCtx() {
  const controller = new AbortController();
  const seen = { stages: [] as string[], logs: [] as string[], progress: [] as number[] };
  const c: OpContext = {
    ...ctx,
    signal: controller.signal,
    stage: (s) => seen.stages.push(s),
    log: (l) => seen.logs.push(l),
    progress: (n) => seen.progress.push(n),
    checkCancelled: () => {
      if (controller.signal.aborted) throw new BangerError('cancelled', 'operation op-test was cancelled');
    },
  };
  return { c, seen, cancel: () => controller.abort() };
}

const runningVmms = (w: World) => [...w.vmms.values()].filter((p) => p.exitCode === null && !p.signalCode).length;

test('readyWhen port: after sshd, the agent’s listing is polled until a TCP listener is on the port (a UDP one is not it); ready comes after', async () => {
  const w = await world({ appPort: { port: 8080, afterPolls: 6 } });
  const { c, seen } = recordingCtx();
  const vm = await w.svc.create({ name: 'web', start: true, readyWhen: [{ kind: 'port', port: 8080 }] }, c);
  assert.equal(vm.state, 'running');
  // One poll for sshd, then five without a TCP listener on 8080 (only UDP), then the one with it.
  assert.equal(w.portPolls(), 7);
  assert.deepEqual(seen.stages.slice(seen.stages.indexOf('wait for sshd')), ['wait for sshd', 'wait for port 8080', 'ready']);
  assert.deepEqual(seen.progress, [1, 2, 3, 4, 5, 6], 'each poll is shown as an attempt');
});

test('readyWhen command: `sh -c CMD` in the guest is retried until it exits 0, each failure logged with its last output line; checks run in order; no process record is left', async () => {
  const dir = await mkdtemp('/tmp/bg-vmready-');
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const w = await world({ appPort: { port: 3000, afterPolls: 0 } });
  const { c, seen } = recordingCtx();
  const count = join(dir, 'count');
  const command = `n=$(cat ${count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${count}; [ $n -ge 3 ] || { echo "starting up"; echo "try $n" >&2; exit 1; }`;
  await w.svc.create(
    {
      name: 'app',
      start: true,
      readyWhen: [
        { kind: 'port', port: 3000 },
        { kind: 'command', command },
      ],
    },
    c,
  );
  assert.equal(await readFile(count, 'utf8'), '3\n', 'ran until it succeeded, then not again');
  assert.deepEqual(seen.stages.slice(-3), ['wait for port 3000', 'wait for command', 'ready']);
  const guest = w.guests.at(-1) as HostFakeGuest;
  assert.deepEqual(
    guest.started.map((s) => s.shell),
    [command, command, command],
  );
  assert.ok(
    guest.started.every((s) => s.timeoutMs !== undefined && s.timeoutMs > 0),
    'each attempt has its own bound, kept by the guest',
  );
  const attempts = seen.logs.filter((l) => l.startsWith('command `'));
  assert.equal(attempts.length, 2);
  assert.match(attempts[0] ?? '', /attempt 1: exit 1, last output: try 1$/);
  assert.match(attempts[1] ?? '', /attempt 2: exit 1, last output: try 2$/);
  await waitFor('the attempts’ records to be forgotten in the guest', () => guest.procs.size === 0);
});

test('readyWhen timeout: code timeout naming the check and its last (sanitised) result; the VM is kept RUNNING for inspection', async () => {
  const w = await world();
  const { c } = recordingCtx();
  await assert.rejects(
    w.svc.create(
      { name: 'slow', start: true, readyWhen: [{ kind: 'command', command: "printf 'booting \\033[31mred\\033[0m\\n'; exit 2" }], readyTimeoutMs: 300 },
      c,
    ),
    (e: BangerError) => {
      assert.equal(e.code, 'timeout');
      assert.match(
        e.message,
        /^slow did not become ready: command `printf .*` did not hold within 300 ms \(\d+ attempts?; last: exit 2, last output: booting \?\[31mred\?\[0m\)\. slow is kept running for inspection$/,
      );
      assert.match(e.fix ?? '', /banger vm logs slow/);
      assert.match(e.fix ?? '', /--wait-timeout/);
      return true;
    },
  );
  const row = w.repos.vms.byName('slow');
  assert.equal(row?.state, 'running');
  assert.ok(row?.handle, 'its VMM is still recorded');
  assert.equal(runningVmms(w), 1, 'its VMM still runs');
  assert.ok(w.leases.byVm(row?.id as string));
  // Kept, not stuck: it can be deleted at once.
  assert.equal((await w.svc.bulk('delete', ['slow'])).results[0]?.ok, true);
});

test('readyWhen cancel: the wait ends, the attempt’s process is killed, and the VM is deleted like every cancelled create', async () => {
  const w = await world();
  const { c, seen, cancel } = recordingCtx();
  const creating = w.svc.create({ name: 'gone', start: true, readyWhen: [{ kind: 'command', command: 'sleep 600' }] }, c);
  await waitFor('the command attempt to start', () => (w.guests.at(-1)?.procs.size ?? 0) > 0);
  const info = [...(w.guests.at(-1) as HostFakeGuest).procs.values()][0]?.info;
  const attempt = info?.pid as number;
  assert.ok(attempt > 0);
  cancel();
  await assert.rejects(creating, (e: BangerError) => e.code === 'cancelled');
  assert.ok(seen.stages.includes('wait for command'));
  assert.ok(!seen.stages.includes('ready'));
  assert.equal(w.repos.vms.byName('gone'), undefined, 'no row');
  assert.deepEqual(w.leases.all(), []);
  assert.equal(runningVmms(w), 0, 'its VMM was stopped');
  await waitFor('the attempt’s process to be killed', () => {
    try {
      process.kill(attempt, 0);
      return false;
    } catch {
      return true;
    }
  });
  await waitFor('the attempt’s end to be recorded', () => info?.state === 'exited');
  assert.equal(info?.signal, 9, 'killed by the cancel (SIGKILL to its group)');
  assert.equal(info?.timedOut, false, 'not by its own bound per attempt');
});

test('readyWhen: the wait holds no VM lock (a stop goes through) and ends with conflict when the VM stops', async () => {
  const w = await world();
  const { c } = recordingCtx();
  const creating = w.svc.create({ name: 'stopme', start: true, readyWhen: [{ kind: 'port', port: 9 }] }, c);
  // It may end while the stop is awaited: its rejection is handled from the start.
  const ended = creating.then(
    () => assert.fail('the create should not succeed'),
    (e: unknown) => e,
  );
  await waitFor('the VM to be running', () => w.repos.vms.byName('stopme')?.state === 'running');
  assert.equal((await w.svc.bulk('stop', ['stopme'])).results[0]?.ok, true);
  await assert.rejects(
    ended.then((e) => Promise.reject(e)),
    (e: BangerError) => e.code === 'conflict' && /stopme stopped while waiting for port 9/.test(e.message),
  );
  assert.equal(w.repos.vms.byName('stopme')?.state, 'stopped', 'a stopped VM is left as its stop left it');
});
