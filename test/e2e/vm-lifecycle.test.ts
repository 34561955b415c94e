import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Vm } from '../../src/api/schemas.js';
import { guestAssets, pidsMentioning, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * Real VMs under QEMU (TCG on hosts without usable KVM) from real Debian assets, driven through
 * the real CLI and daemon. One shared home keeps the number of boots low; every test checks that
 * nothing leaked.
 */
const assets = guestAssets();
const skip = requires(assets, 'guest assets missing: run scripts/guest-assets.sh');

describe('VM lifecycle on real QEMU', { skip }, () => {
  let home: TestHome;

  const rows = () => {
    const db = new Database(join(home.dir, 'state', 'banger.db'), { readonly: true });
    try {
      return db.prepare('SELECT id, name, state FROM vms ORDER BY name').all() as Array<{ id: string; name: string; state: string }>;
    } finally {
      db.close();
    }
  };
  const qemuPids = async (vmName?: string) =>
    (await pidsMentioning(home.dir)).filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
        return cmd.includes('qemu-system') && (!vmName || cmd.includes(`banger-${vmName},`));
      } catch {
        return false;
      }
    });
  /** No VMM process, run dir, state dir or row may outlive a deleted VM. */
  const assertNoTraceOf = async (vm: Pick<Vm, 'id' | 'name'>) => {
    assert.deepEqual(await qemuPids(vm.name), [], `no QEMU left for ${vm.name}`);
    assert.equal(existsSync(join(home.dir, 'state', 'vms', vm.id)), false, 'state dir removed');
    // Its disk layers went with it: every file left in the layer store belongs to a VM still there.
    const kept = new Set((await Promise.all(rows().map((r) => home.vmDisks(r.id)))).flatMap((d) => [...d.root, ...d.work].map((p) => basename(p))));
    assert.deepEqual(
      readdirSync(join(home.dir, 'state', 'layers')).filter((f) => !kept.has(f)),
      [],
      'no disk layer of a deleted VM is left',
    );
    assert.equal(existsSync(join(home.dir, 'run', 'vms', vm.id)), false, 'run dir (sockets) removed');
    assert.equal(
      rows().some((r) => r.id === vm.id),
      false,
      'row removed',
    );
  };

  before(async () => {
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    const k = await home.banger(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    assert.equal(k.code, 0, k.stderr);
    const i = await home.banger(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    assert.equal(i.code, 0, i.stderr);
  });

  after(async () => {
    await home?.destroy();
  });

  test('create boots a VM to a healthy agent, with live stages and a spec line', async () => {
    const r = await home.banger(['vm', 'create', '--name', 'alpha']);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^spec: alpha vcpus=2 memory=512MiB disk=1024MiB image=debian-bookworm vmm=qemu ip=172\.30\.0\.\d+ nat=off$/m);
    for (const stage of ['resolve image', 'prepare disks', 'start VMM', 'wait for agent', 'ready']) {
      assert.ok(r.stderr.includes(`- ${stage}`), `stage "${stage}" rendered:\n${r.stderr}`);
    }
    const vm = await home.json<Vm>(['vm', 'show', 'alpha']);
    assert.equal(vm.state, 'running');
    assert.equal(vm.accel, 'tcg');
    assert.ok(vm.pid && (await qemuPids('alpha')).includes(vm.pid));
    // Every QEMU runs under the seccomp sandbox (filter mode), seen from the host.
    assert.match(readFileSync(`/proc/${vm.pid}/status`, 'utf8'), /^Seccomp:\t2$/m);
    const h = await home.json<{ ready: boolean; hostname: string; uptimeSeconds: number }>(['vm', 'health', 'alpha']);
    assert.equal(h.ready, true);
    assert.equal(h.hostname, 'alpha');
    assert.ok(h.uptimeSeconds > 0);
    const logs = await home.banger(['vm', 'logs', 'alpha', '-n', '500']);
    assert.match(logs.stdout, /banger-init/);
  });

  test('ports lists sshd listening in the guest (started with a per-VM host key)', async () => {
    let ports: Array<{ proto: string; port: number; pid: number | null; command: string }> = [];
    // sshd starts a moment after the agent under TCG.
    for (let i = 0; i < 60; i++) {
      ports = (await home.json<{ ports: typeof ports }>(['vm', 'ports', 'alpha'])).ports;
      if (ports.some((p) => p.port === 22)) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    const ssh = ports.find((p) => p.port === 22 && p.proto.startsWith('tcp'));
    assert.ok(ssh, `port 22 listed: ${JSON.stringify(ports)}`);
    assert.ok(ssh.pid && ssh.pid > 1);
    assert.match(ssh.command, /sshd/);
  });

  test('stats report the VMM process and the guest', async () => {
    const s = await home.json<{ vmm: { rssBytes: number; pid: number } | null; guest: { memTotalKib: number } | null }>(['vm', 'stats', 'alpha']);
    assert.ok(s.vmm && s.vmm.rssBytes > 10 * 1024 * 1024);
    assert.ok(s.guest && s.guest.memTotalKib > 256 * 1024 && s.guest.memTotalKib <= 512 * 1024);
  });

  test('the daemon restarts while the VM runs and re-adopts it', async () => {
    const before = await home.json<Vm>(['vm', 'show', 'alpha']);
    const r = await home.banger(['daemon', 'restart']);
    assert.equal(r.code, 0, r.stderr);
    const after = await home.json<Vm>(['vm', 'show', 'alpha']);
    assert.equal(after.state, 'running');
    assert.equal(after.pid, before.pid);
    const h = await home.json<{ ready: boolean }>(['vm', 'health', 'alpha']);
    assert.equal(h.ready, true);
  });

  /** Runs a shell command in alpha over SSH; its stdout. */
  const inAlpha = async (cmd: string) => {
    const r = await home.banger(['vm', 'ssh', 'alpha', '--', 'sh', '-c', cmd]);
    assert.equal(r.code, 0, `${cmd}: ${r.stderr}`);
    return r.stdout;
  };
  /**
   * `vm start`/`restart` return once the agent answers; sshd comes up a moment later (seconds
   * under TCG, more on a busy host than `vm ssh`'s own retries cover). Polled through the agent;
   * the bound only keeps a hang from lasting forever.
   */
  const waitForSshd = async (vm: string) => {
    for (let i = 0; i < 180; i++) {
      const { ports } = await home.json<{ ports: Array<{ port: number }> }>(['vm', 'ports', vm]);
      if (ports.some((p) => p.port === 22)) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.fail(`sshd never listened in ${vm}`);
  };
  const bootId = async () => (await inAlpha('cat /proc/sys/kernel/random/boot_id')).trim();
  /** A line only this call writes, on the guest's console (the serial log). */
  const markConsole = async () => {
    const mark = `e2e-mark-${randomUUID()}`;
    await inAlpha(`echo ${mark} > /dev/console`);
    return mark;
  };
  /** `vm logs -f alpha`, once its tail has arrived: from then on it is following. */
  const followAlpha = async () => {
    const f = home.start(['vm', 'logs', '-f', 'alpha', '-n', '5']);
    assert.ok(await f.waitFor(/\n/), `vm logs -f printed its tail: ${f.stderr}`);
    return f;
  };

  test('vm logs -f follows the console live and ends cleanly on Ctrl-C', async () => {
    const f = await followAlpha();
    try {
      const mark = await markConsole();
      assert.ok(await f.waitFor(new RegExp(mark)), `the mark arrived while following: ${f.stderr}`);
      assert.equal(f.running, true, 'still following after the mark');
      f.child.kill('SIGINT');
      assert.deepEqual(await f.exit(), { code: 0, signal: null }, f.stderr);
      assert.equal(f.stderr, '');
    } finally {
      await f.stop();
    }
  });

  test('restart reboots the VM with its name, address and disks; a file on the work disk survives; a follow of the old boot ends with it', async () => {
    const before = await home.json<Vm>(['vm', 'show', 'alpha']);
    const workTop = (await home.vmDisks(before.id)).work[0] as string;
    const workInode = statSync(workTop).ino;
    const oldBoot = await bootId();
    assert.match(oldBoot, /^[0-9a-f-]{36}$/);
    const token = randomUUID();
    await inAlpha(`echo ${token} > /root/kept-across-restart && sync`);
    const f = await followAlpha();
    try {
      const r = await home.banger(['vm', 'restart', 'alpha']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /restarted alpha/);
      // The follow ends on its own once the boot it followed is over, with that boot's last words.
      assert.deepEqual(await f.exit(), { code: 0, signal: null }, f.stderr);
      assert.match(f.stdout, /reboot: Power down/);
    } finally {
      await f.stop();
    }
    const after = await home.json<Vm>(['vm', 'show', 'alpha']);
    assert.equal(after.state, 'running');
    assert.notEqual(after.pid, before.pid, 'a new VMM process');
    await waitForSshd('alpha');
    for (const k of ['id', 'name', 'ip', 'dir', 'imageName', 'vcpus', 'memoryMib', 'diskSizeBytes', 'nat'] as const) {
      assert.deepEqual(after[k], before[k], `${k} kept across the restart`);
    }
    assert.equal((await home.vmDisks(after.id)).work[0], workTop, 'the same work disk top layer');
    assert.equal(statSync(workTop).ino, workInode, 'the same work disk file');
    assert.equal((await home.json<{ ready: boolean; hostname: string }>(['vm', 'health', 'alpha'])).hostname, 'alpha');
    const newBoot = await bootId();
    assert.match(newBoot, /^[0-9a-f-]{36}$/);
    assert.notEqual(newBoot, oldBoot, 'the guest booted again');
    assert.equal((await inAlpha('cat /root/kept-across-restart')).trim(), token);
  });

  test('stop powers off gracefully; set changes the stopped VM; start boots it again', async () => {
    const vm = await home.json<Vm>(['vm', 'show', 'alpha']);
    const stop = await home.banger(['vm', 'stop', 'alpha']);
    assert.equal(stop.code, 0, stop.stderr);
    assert.equal((await home.json<Vm>(['vm', 'show', 'alpha'])).state, 'stopped');
    assert.deepEqual(await qemuPids('alpha'), []);
    assert.equal(existsSync(join(home.dir, 'run', 'vms', vm.id, 'qmp.sock')), false);
    const logs = await home.banger(['vm', 'logs', 'alpha', '-n', '50']);
    assert.match(logs.stdout, /reboot: Power down|Power down/);

    const set = await home.json<Vm>(['vm', 'set', 'alpha', '--vcpus', '1', '--memory', '768', '--disk-size', '2G']);
    assert.equal(set.vcpus, 1);
    assert.equal(set.memoryMib, 768);
    assert.equal(set.diskSizeBytes, 2 * 1024 ** 3);
    const shrink = await home.banger(['vm', 'set', 'alpha', '--disk-size', '1G']);
    assert.equal(shrink.code, 1);
    assert.match(shrink.stderr, /can only grow/);

    const start = await home.banger(['vm', 'start', 'alpha']);
    assert.equal(start.code, 0, start.stderr);
    const again = await home.json<Vm>(['vm', 'show', 'alpha']);
    assert.equal(again.state, 'running');
    assert.notEqual(again.pid, vm.pid);
    await waitForSshd('alpha');
    // The guest sees the new size: its MemTotal (a little under what it was given) is nearer
    // 768 MiB than the 512 MiB it had.
    const memTotalMib = Number(/^MemTotal:\s+(\d+) kB$/m.exec(await inAlpha('cat /proc/meminfo'))?.[1]) / 1024;
    assert.ok(Math.abs(memTotalMib - 768) < Math.abs(memTotalMib - 512), `MemTotal ${memTotalMib} MiB after --memory 768`);
    assert.equal((await inAlpha('nproc')).trim(), '1');
    // The guest grew its work filesystem online to the new 2 GiB disk, and the seed (done on the
    // first boot, from the image's own /root) is not redone.
    const df = await home.banger(['vm', 'ssh', 'alpha', '--', 'df', '-B1', '--output=size', '/root']);
    assert.equal(df.code, 0, df.stderr);
    assert.ok(Number(df.stdout.trim().split('\n').pop()) > 1.5 * 1024 ** 3, `work fs grown: ${df.stdout}`);
    const seeded = await home.banger(['vm', 'ssh', 'alpha', '--', 'test', '-f', '/root/.bashrc']);
    assert.equal(seeded.code, 0, "the work disk holds the image's /root");
    // The console log covers this boot (and the first one too when it is appended to): the seed ran on the first boot only.
    const log = (await home.banger(['vm', 'logs', 'alpha', '-n', '2000'])).stdout;
    const count = (re: RegExp) => log.match(re)?.length ?? 0;
    assert.equal(count(/seeded the work disk/g), count(/mounted work disk/g) >= 2 ? 1 : 0, log.slice(-3000));
  });

  test('kill stops at once (a follow of its console ends too); delete leaves nothing behind', async () => {
    const vm = await home.json<Vm>(['vm', 'show', 'alpha']);
    const f = await followAlpha();
    const k = await home.banger(['vm', 'kill', 'alpha']);
    assert.equal(k.code, 0, k.stderr);
    assert.deepEqual(await f.exit(), { code: 0, signal: null }, f.stderr);
    assert.equal((await home.json<Vm>(['vm', 'show', 'alpha'])).state, 'stopped');
    assert.deepEqual(await qemuPids('alpha'), []);
    const d = await home.banger(['vm', 'delete', 'alpha']);
    assert.equal(d.code, 0, d.stderr);
    await assertNoTraceOf(vm);
  });

  test('two VMs boot concurrently and a bulk delete removes both', async () => {
    const [b, c] = await Promise.all([home.banger(['vm', 'create', '--name', 'beta']), home.banger(['vm', 'create', '--name', 'gamma', '--memory', '384M'])]);
    assert.equal(b.code, 0, b.stderr);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, /^spec: gamma vcpus=2 memory=384MiB /m);
    // Each guest sees its own size: MemTotal (a little under what it was given) nearer the size asked for.
    for (const [name, mib, other] of [
      ['gamma', 384, 512],
      ['beta', 512, 384],
    ] as const) {
      const s = await home.json<{ guest: { memTotalKib: number } | null }>(['vm', 'stats', name]);
      const seen = (s.guest?.memTotalKib ?? 0) / 1024;
      assert.ok(Math.abs(seen - mib) < Math.abs(seen - other), `${name}: MemTotal ${seen} MiB for --memory ${mib}`);
    }
    const list = await home.json<{ vms: Vm[] }>(['vm', 'list']);
    const running = list.vms
      .filter((v) => v.state === 'running')
      .map((v) => v.name)
      .sort();
    assert.deepEqual(running, ['beta', 'gamma']);
    for (const n of ['beta', 'gamma']) assert.equal((await home.json<{ hostname: string }>(['vm', 'health', n])).hostname, n);
    const del = await home.json<{ results: Array<{ ref: string; ok: boolean }> }>(['vm', 'delete', 'gamma', 'beta', 'gamma']);
    assert.deepEqual(
      del.results.map((r) => [r.ref, r.ok]),
      [
        ['gamma', true],
        ['beta', true],
      ],
    );
    for (const v of list.vms) await assertNoTraceOf(v);
  });

  test('bad input is refused clearly and leaves nothing behind', async () => {
    const cases: Array<[string[], RegExp, number]> = [
      [['vm', 'create', '--name', 'x1', '--image', 'nope'], /image "nope" not found/, 1],
      [['vm', 'create', '--name', 'Bad_Name'], /VM name "Bad_Name"/, 1],
      [['vm', 'create', '--name', 'x2', '--vcpus', '0'], /--vcpus must be an integer from 1 to 64/, 1],
      [['vm', 'create', '--name', 'x3', '--vcpus', 'two'], /--vcpus must be an integer/, 2],
      [
        ['image', 'register', '--name', 'broken', '--rootfs', (assets as NonNullable<typeof assets>).rootfs, '--kernel', '/nonexistent/vmlinuz'],
        /kernel \/nonexistent\/vmlinuz is not a file/,
        1,
      ],
    ];
    for (const [args, re, code] of cases) {
      const r = await home.banger(args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.match(r.stderr, /fix:|usage/i);
    }
    const dupA = await home.banger(['vm', 'create', '--name', 'dup', '--no-start']);
    assert.equal(dupA.code, 0, dupA.stderr);
    const dupB = await home.banger(['vm', 'create', '--name', 'dup', '--no-start']);
    assert.equal(dupB.code, 1);
    assert.match(dupB.stderr, /a VM named "dup" already exists/);
    assert.deepEqual(
      rows().map((r) => r.name),
      ['dup'],
    );
    assert.deepEqual(
      (await home.json<{ images: Array<{ name: string }> }>(['image', 'list'])).images.map((i) => i.name),
      ['debian-bookworm'],
    );
    const unknown = await home.banger(['vm', 'stop', 'ghost', 'dup']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /ghost/);
    assert.match(unknown.stdout, /stopped dup/);
  });

  test('a work disk from before guest-side seeding (label banger-work) keeps its files: it is never seeded over', async () => {
    await home.ok(['vm', 'create', '--name', 'legacy', '--no-start', '--disk-size', '1G']);
    const vm = await home.json<Vm>(['vm', 'show', 'legacy']);
    // What an older banger left: its own files in a disk labelled banger-work (written into the
    // work disk's raw base: its qcow2 top is still empty, so the guest sees the base).
    const workChain = (await home.vmDisks(vm.id)).work;
    assert.equal(workChain.length, 2, `a qcow2 top over a raw base: ${workChain.join(' ')}`);
    const work = workChain[1] as string;
    writeFileSync(join(vm.dir, 'mine.txt'), 'the user’s\n');
    execFileSync('e2label', [work, 'banger-work']);
    execFileSync('debugfs', ['-w', '-R', `write ${join(vm.dir, 'mine.txt')} mine.txt`, work], { stdio: 'ignore' });
    await home.ok(['vm', 'start', 'legacy']);
    const r = await home.banger(['vm', 'ssh', 'legacy', '--', 'sh', '-c', 'cat /root/mine.txt; test ! -e /root/.bashrc']);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.equal(r.stdout, 'the user’s\n');
    assert.doesNotMatch((await home.banger(['vm', 'logs', 'legacy', '-n', '400'])).stdout, /seeded the work disk/);
    await home.ok(['vm', 'delete', 'legacy']);
  });

  test('prune deletes VMs that are not running', async () => {
    const dup = await home.json<Vm>(['vm', 'show', 'dup']);
    const dry = await home.json<{ pruned: Array<{ name: string }> }>(['vm', 'prune', '--dry-run']);
    assert.deepEqual(
      dry.pruned.map((v) => v.name),
      ['dup'],
    );
    assert.equal(rows().length, 1);
    const r = await home.banger(['vm', 'prune', '-f']);
    assert.equal(r.code, 0, r.stderr);
    await assertNoTraceOf(dup);
    const vmDirs = await readdir(join(home.dir, 'state', 'vms'));
    assert.deepEqual(vmDirs, []);
  });

  test('a VMM that exits at once fails create with its log tail and leaks nothing', async () => {
    const fakeQemu = join(home.dir, 'qemu-exits');
    // Real QEMU, handed an option it rejects: it exits immediately with its own message. The
    // driver's sandbox check (`-sandbox … -version`) still reaches the real QEMU unchanged.
    writeFileSync(fakeQemu, '#!/bin/sh\ncase " $* " in *" -version "*) exec qemu-system-x86_64 "$@";; esac\nexec qemu-system-x86_64 -no-such-option "$@"\n');
    chmodSync(fakeQemu, 0o755);
    const other = await TestHome.create(`accel = "tcg"\nqemu_bin = "${fakeQemu}"\n[vm_defaults]\ndisk_size = "512M"\n`, { netns: true });
    try {
      const a = assets as NonNullable<typeof assets>;
      assert.equal((await other.banger(['kernel', 'import', 'k', '--from', a.kernelDir])).code, 0);
      assert.equal((await other.banger(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k'])).code, 0);
      const r = await other.banger(['vm', 'create', '--name', 'doomed']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /QEMU failed to start/);
      assert.match(r.stderr, /no-such-option/);
      assert.match(r.stderr, /\(op-[0-9a-f]{6}\)/);
      const vms = await other.json<{ vms: Vm[] }>(['vm', 'list']);
      assert.deepEqual(vms.vms, []);
      assert.deepEqual(await readdir(join(other.dir, 'state', 'vms')), []);
      assert.deepEqual(await readdir(join(other.dir, 'run', 'vms')), []);
    } finally {
      await other.destroy();
    }
  });
});
