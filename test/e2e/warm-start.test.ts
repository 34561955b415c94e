import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Snapshot, Vm, VmForkResult } from '../../src/api/schemas.js';
import { guestAssets, isAlive, pidsMentioning, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * Warm start on real QEMU/TCG guests (docs/snapshots.md), through the real CLI, daemon, driver and
 * agent: one source VM with 1,000 checksummed files and a running process; a memory snapshot and a
 * VM from it; three forks with their own identities (hostname, machine-id, address, MAC, SSH host
 * key, RNG, clock); pause resident and to disk; a manifest that no longer matches; the warm pool;
 * and kill -9 of the daemon during a snapshot and during a fork.
 */
const assets = guestAssets();

interface Identity {
  hostname: string;
  machineId: string;
  mac: string;
  ip: string;
  random: string;
  clock: number;
  generation: string;
}

describe('warm start on real VMs', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let scratch: string;
  const secret = 'FAKE-AUTH-TOKEN-for-file-sync\n';

  const exec = async (vm: string, script: string) => {
    const r = await home.banger(['vm', 'exec', vm, '--', 'sh', '-c', script], 120_000);
    assert.equal(r.code, 0, `${vm}: ${script}\n${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const filesIntact = async (vm: string) => {
    assert.equal((await exec(vm, 'cd /root/data && sha256sum -c --quiet /root/sums && ls | wc -l')).trim(), '1000', `${vm}: the 1,000 files are intact`);
  };
  const tick = async (vm: string) => Number((await exec(vm, 'cat /tmp/tick')).trim());
  const tickerRuns = async (vm: string) => {
    const a = await tick(vm);
    await new Promise((r) => setTimeout(r, 1500));
    const b = await tick(vm);
    assert.ok(b > a, `${vm}: the process started before the snapshot still runs (${a} → ${b})`);
  };
  const identity = async (vm: string): Promise<Identity> => {
    const before = Date.now() / 1000;
    const out = await exec(
      vm,
      'cat /etc/hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk \'{print $4}\'; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s.%N; cat /run/banger/generation 2>/dev/null || echo none',
    );
    const afterT = Date.now() / 1000;
    const [hostname, machineId, mac, ip, random, clock, generation] = out.trim().split('\n');
    const id = { hostname, machineId, mac, ip, random, clock: Number(clock), generation } as Identity;
    assert.ok(id.clock >= before - 1 && id.clock <= afterT + 1, `${vm}: the guest clock (${id.clock}) is within 1 s of the host's (${before}..${afterT})`);
    return id;
  };
  const snapshotRowsOnDisk = () => readdirSync(join(home.dir, 'state', 'snapshots'));
  const tamper = (name: string, field: string, value: string) => {
    const db = new Database(home.dbPath);
    try {
      const row = db.prepare('SELECT manifest FROM snapshots WHERE name = ?').get(name) as { manifest: string };
      const m = JSON.parse(row.manifest) as Record<string, unknown>;
      m[field] = value;
      db.prepare('UPDATE snapshots SET manifest = ? WHERE name = ?').run(JSON.stringify(m), name);
    } finally {
      db.close();
    }
  };

  before(async () => {
    scratch = await mkdtemp('/tmp/bg-warm-');
    await writeFile(join(scratch, 'auth.json'), secret, { mode: 0o600 });
    home = await TestHome.create(
      [
        'accel = "tcg"',
        '[vm_defaults]',
        'vcpu = 2',
        'memory_mib = 512',
        'disk_size = "1G"',
        '[[file_sync]]',
        `host = "${join(scratch, 'auth.json')}"`,
        'guest = "/root/.agent/auth.json"',
        'mode = "0600"',
        '',
      ].join('\n'),
      { netns: true },
    );
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    await home.ok(['vm', 'create', '--name', 'src', '--image', 'img']);
    await exec(
      'src',
      'mkdir -p /root/data && cd /root/data && for i in $(seq 1 1000); do head -c 700 /dev/urandom > f$i; done && sha256sum f* > /root/sums && sync',
    );
    await home.ok(['vm', 'exec', '-d', '--name', 'ticker', 'src', '--', 'sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.2; done']);
  });
  after(async () => {
    await home?.destroy();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  test('a memory snapshot; a VM from it has the files and the running process, and its own writes', async () => {
    const s = await home.json<Snapshot>(['vm', 'snapshot', 'src', '--name', 's1']);
    assert.equal(s.hasMemory, true);
    assert.equal(s.manifest.vmm, 'qemu');
    assert.match(s.manifest.vmmVersion, /QEMU emulator version/);
    await tickerRuns('src');
    const r1 = await home.json<Vm>(['vm', 'create', '--name', 'r1', '--from-snapshot', 's1']);
    assert.equal(r1.state, 'running');
    await filesIntact('r1');
    await tickerRuns('r1');
    assert.equal((await exec('r1', 'hostname')).trim(), 'r1');
    assert.equal(
      (await exec('r1', 'cat /root/.agent/auth.json; stat -c %a /root/.agent/auth.json')).trim(),
      `${secret.trim()}\n600`,
      'file sync ran after the restore',
    );
    await exec('r1', 'echo r1 > /root/only-r1 && sync');
    assert.equal((await exec('src', 'test -e /root/only-r1 && echo there || echo absent')).trim(), 'absent');
    const refused = await home.banger(['snapshot', 'delete', 's1']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /r1/, 'the delete names the VM layered on it');
    await home.ok(['vm', 'delete', 'r1']);
  });

  test('a disk-only snapshot (filesystems frozen for the switch): a VM from it boots cold with the files, its processes reported lost', async () => {
    const d = await home.json<Snapshot>(['vm', 'snapshot', 'src', '--name', 'd1', '--no-memory']);
    assert.equal(d.hasMemory, false);
    assert.equal(d.manifest.memoryBytes, 0);
    await tickerRuns('src');
    assert.equal((await exec('src', 'touch /root/after-d1 && echo ok')).trim(), 'ok', 'the source was thawed');
    const r = await home.banger(['vm', 'create', '--name', 'd1vm', '--from-snapshot', 'd1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /has no memory: a cold boot from its disks \(processes it ran are not running\)/);
    await filesIntact('d1vm');
    const state = await exec(
      'd1vm',
      'a=$(cat /tmp/tick 2>/dev/null); sleep 1.5; b=$(cat /tmp/tick 2>/dev/null); [ "$a" = "$b" ] && echo stopped || echo running; test -e /root/after-d1 && echo there || echo absent',
    );
    assert.equal(state.trim(), 'stopped\nabsent', 'a cold boot: the ticker is not running; a file written after the snapshot is absent');
    await home.ok(['vm', 'delete', 'd1vm']);
    await home.ok(['snapshot', 'delete', 'd1']);
  });

  test('fork --count 3: distinct identities, strict SSH by name, urandom apart, clocks right, writes apart', async () => {
    const srcId = await identity('src');
    const r = await home.json<VmForkResult>(['vm', 'fork', 'src', '--count', '3']);
    assert.equal(r.results.length, 3);
    for (const x of r.results) assert.ok(x.ok, `${x.name}: ${JSON.stringify(x.error)}`);
    const names = r.results.map((x) => x.name);
    const ids = [srcId];
    for (const n of names) {
      const id = await identity(n);
      assert.equal(id.hostname, n);
      ids.push(id);
      await filesIntact(n);
      await tickerRuns(n);
    }
    for (const field of ['hostname', 'machineId', 'mac', 'ip', 'random'] as const) {
      assert.equal(
        new Set(ids.map((i) => i[field])).size,
        ids.length,
        `${field} differs between the source and every clone: ${ids.map((i) => i[field]).join(' ')}`,
      );
    }
    for (const id of ids.slice(1)) assert.match(id.generation, /^[1-9]\d*$/, 'the generation counter was written');
    const vms = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    for (const n of names) {
      const vm = vms.vms.find((v) => v.name === n) as Vm;
      assert.equal(ids[names.indexOf(n) + 1]?.ip, `${vm.ip}/24`, `${n}: the guest has the address banger leased it`);
      // banger's ssh_config: `<name>.vm`, StrictHostKeyChecking yes against the known_hosts it wrote.
      const ssh = await home.banger(['vm', 'ssh', n, '--', 'hostname'], 120_000);
      assert.equal(ssh.code, 0, ssh.stderr);
      assert.equal(ssh.stdout.trim(), n);
    }
    await exec(names[0] as string, 'echo mine > /root/clone-1-only && sync');
    for (const other of [names[1], names[2], 'src'] as string[]) {
      assert.equal((await exec(other, 'test -e /root/clone-1-only && echo there || echo absent')).trim(), 'absent', `${other} does not see clone 1's file`);
    }
    assert.deepEqual(
      (await home.json<{ snapshots: Snapshot[] }>(['snapshot', 'list'])).snapshots.map((s) => s.name),
      ['s1'],
      'the fork snapshot lived only inside the fork',
    );
    await home.ok(['vm', 'delete', ...names]);
  });

  test('pause resident, then to disk: the VMM exits and frees its memory; resume brings the VM back with its state', async () => {
    const before = await home.json<Vm>(['vm', 'show', 'src']);
    const paused = await home.json<Vm>(['vm', 'pause', 'src']);
    assert.equal(paused.state, 'paused');
    const refused = await home.banger(['vm', 'exec', 'src', '--', 'true']);
    // Two memory snapshots of a VM that stays paused (QEMU refuses a second migration unless it ran).
    const p1 = await home.banger(['vm', 'snapshot', 'src', '--name', 'p1']);
    const p2 = await home.banger(['vm', 'snapshot', 'src', '--name', 'p2']);
    const stillPaused = await home.json<Vm>(['vm', 'show', 'src']);
    // Resumed before asserting: the tests after this one need src running.
    const resumedResident = await home.json<Vm>(['vm', 'resume', 'src']);
    assert.equal(p1.code, 0, p1.stderr);
    assert.equal(p2.code, 0, p2.stderr);
    assert.equal(stillPaused.state, 'paused', 'a snapshot leaves a paused VM paused');
    await home.ok(['snapshot', 'delete', 'p1', 'p2']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /banger vm resume src/);
    assert.equal(resumedResident.state, 'running');
    await tickerRuns('src');

    const suspended = await home.json<Vm>(['vm', 'pause', 'src', '--to-disk']);
    assert.equal(suspended.state, 'suspended');
    assert.equal(suspended.pid, null);
    assert.equal(isAlive(before.pid as number), false, 'the VMM process is gone, and with it the memfd that held the guest RAM');
    const resumed = await home.json<Vm>(['vm', 'resume', 'src']);
    assert.equal(resumed.state, 'running');
    await filesIntact('src');
    await tickerRuns('src');
    assert.equal((await exec('src', 'hostname')).trim(), 'src', 'a resumed VM keeps its identity');
  });

  test('a manifest that no longer matches (another VMM version) is refused with snapshot_incompatible naming the field', async () => {
    tamper('s1', 'vmmVersion', 'QEMU emulator version 0.0.1 (another build)');
    const r = await home.banger(['vm', 'create', '--name', 'r2', '--from-snapshot', 's1']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot be restored here: vmmVersion differs/);
    assert.equal(
      (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms.some((v) => v.name === 'r2'),
      false,
      'nothing was created',
    );
  });

  test('the warm pool: a create of the same image and size restores it (file sync after), a mismatch boots cold and says why', async () => {
    const w = await home.json<Snapshot>(['image', 'warm', 'img']);
    assert.equal(w.purpose, 'warm');
    assert.equal(w.manifest.takenAt, 'agent-ready');
    const warm = await home.banger(['vm', 'create', '--name', 'w1', '--image', 'img']);
    assert.equal(warm.code, 0, warm.stderr);
    assert.match(warm.stdout, /from=warm snapshot/);
    assert.equal((await exec('w1', 'hostname')).trim(), 'w1');
    assert.equal((await exec('w1', 'cat /root/.agent/auth.json')).trim(), secret.trim());
    const cold = await home.banger(['vm', 'create', '--name', 'w2', '--image', 'img', '--cold']);
    assert.equal(cold.code, 0, cold.stderr);
    assert.doesNotMatch(cold.stdout, /from=warm/);
    tamper(w.name, 'agentHash', 'another-agent');
    const fallback = await home.banger(['vm', 'create', '--name', 'w3', '--image', 'img']);
    assert.equal(fallback.code, 0, fallback.stderr);
    assert.doesNotMatch(fallback.stdout, /from=warm/);
    assert.match(fallback.stderr, /not used: agentHash differs/);
    await home.ok(['vm', 'delete', 'w1', 'w2', 'w3']);
  });

  test('kill -9 of the daemon during a snapshot or a fork leaves no half snapshot and no unpublished clone', async () => {
    const known = snapshotRowsOnDisk().sort();
    await home.banger(['daemon', 'stop']);
    const snap = await home.banger(['vm', 'snapshot', 'src', '--name', 'crash-snap'], 120_000, { BANGER_CRASH_AT: 'snapshot:saved' });
    assert.notEqual(snap.code, 0);
    for (let i = 0; i < 200 && home.daemonPids().length; i++) await new Promise((r) => setTimeout(r, 50));
    const after1 = await home.json<{ snapshots: Snapshot[] }>(['snapshot', 'list']);
    assert.ok(!after1.snapshots.some((s) => s.name === 'crash-snap'), 'no half snapshot is listed');
    assert.deepEqual(snapshotRowsOnDisk().sort(), known, 'its directory is gone');
    await tickerRuns('src');

    await home.banger(['daemon', 'stop']);
    const fork = await home.banger(['vm', 'fork', 'src', '--count', '2'], 120_000, { BANGER_CRASH_AT: 'vm-restore:launched' });
    assert.notEqual(fork.code, 0);
    for (let i = 0; i < 200 && home.daemonPids().length; i++) await new Promise((r) => setTimeout(r, 50));
    const vms = (await home.json<{ vms: Vm[] }>(['vm', 'list'])).vms;
    assert.deepEqual(
      vms.map((v) => v.name),
      ['src'],
      'no unpublished clone survives the restart',
    );
    assert.deepEqual(snapshotRowsOnDisk().sort(), known, 'the fork snapshot is gone');
    const qemus = (await pidsMentioning(home.dir)).filter(isAlive);
    const src = vms[0] as Vm;
    assert.deepEqual(qemus, [src.pid], 'only the source VM has a VMM');
    await tickerRuns('src');
  });
});
