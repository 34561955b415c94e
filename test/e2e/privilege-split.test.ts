import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Vm } from '../../src/api/schemas.js';
import { supervisorPid } from '../../src/system/control.js';
import { guestAssets, isAlive, type Result, runProcess, treeReadableBy } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The split layout on a real QEMU guest, started the documented way without systemd: `banger
 * system start --owner USER` (its supervisor runs `bangerd-root` as root and `bangerd` as the user)
 * inside a network namespace of the test's own, for a user created for this test; the user's CLI
 * finds the fixed socket /run/banger/bangerd.sock with no XDG_RUNTIME_DIR. Everything is asserted
 * from the host: who each process runs as, QEMU's seccomp mode, who owns the TAP, the NAT set, and
 * that the VM outlives a restart of either process.
 */
const assets = guestAssets();
const isRoot = process.getuid?.() === 0;
// The split service uses fixed paths (/run/banger, /run/banger-root): one per host. A service the
// machine really runs is never touched.
const serviceRuns =
  supervisorPid() !== undefined || existsSync('/etc/systemd/system/bangerd.service') || existsSync('/run/banger') || existsSync('/run/banger-root');
const hadLogDir = existsSync('/var/log/banger');
const skip = !isRoot
  ? 'needs root: it creates a user and starts the root helper'
  : serviceRuns
    ? 'a banger system service is installed or runs on this host (/run/banger, /run/banger-root: its fixed paths are taken)'
    : requires(assets, 'guest assets missing: run scripts/guest-assets.sh');

/** What /proc says about a process: real uid and seccomp mode (2 = filter). */
function procStatus(pid: number): { uid: number; seccomp: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
  const seccomp = Number(/^Seccomp:\s+(\d+)/m.exec(status)?.[1]);
  return { uid, seccomp };
}

/** Live processes whose command line matches `re` and whose environment includes `envNeedle` (when given). */
function processes(re: RegExp, envNeedle?: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (!re.test(readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' '))) continue;
      if (envNeedle && !readFileSync(`/proc/${e}/environ`, 'utf8').split('\0').includes(envNeedle)) continue;
      if (isAlive(Number(e))) out.push(Number(e));
    } catch {
      /* exited while we looked */
    }
  }
  return out;
}

describe('privilege split: root helper + unprivileged daemon and QEMU on a real guest', { skip }, () => {
  const user = `bgsplit${randomBytes(3).toString('hex')}`;
  const netns = `bgs-${randomBytes(3).toString('hex')}`;
  let dir: string;
  let uid: number;
  let gid: number;
  let tree: string;
  let home: string;
  let startedHere = false;

  const ns = (cmd: string, args: string[], timeoutMs = 30_000) => runProcess('ip', ['netns', 'exec', netns, cmd, ...args], {}, timeoutMs);

  /** The CLI as the unprivileged user, in the namespace, with the split layout's environment. */
  const asUser = (args: string[], timeoutMs = 600_000): Promise<Result> =>
    runProcess(
      'ip',
      [
        'netns',
        'exec',
        netns,
        'setpriv',
        `--reuid=${uid}`,
        `--regid=${gid}`,
        '--init-groups',
        'env',
        '-i',
        `HOME=${home}`,
        `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`,
        process.execPath,
        join(tree, 'bin', 'banger.js'),
        ...args,
      ],
      { cwd: '/' },
      timeoutMs,
    );
  const ok = async (args: string[]): Promise<string> => {
    const r = await asUser(args);
    assert.equal(r.code, 0, `banger ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  };
  const showVm = async (name: string) => JSON.parse(await ok(['vm', 'show', name, '--json'])) as Vm;
  const daemonPids = () => processes(/bangerd\.js|daemon\/main\.js/, `HOME=${home}`);
  const qemuPids = () => processes(new RegExp(`qemu-system.*${home.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  const natIps = async () => (await ns('nft', ['list', 'set', 'inet', 'banger0', 'nat_ips'])).stdout;

  const systemCtl = (args: string[]) =>
    runProcess('ip', ['netns', 'exec', netns, process.execPath, join(tree, 'bin', 'banger.js'), 'system', ...args], {}, 120_000);
  const helperPids = () => processes(/bangerd-root\.js/);
  /** Waits (bounded) for the supervisor to have restarted a process: a live pid other than `old`. */
  const restartedPid = async (pids: () => number[], old: number) => {
    for (let i = 0; i < 600; i++) {
      const now = pids().filter((p) => p !== old);
      if (now.length === 1 && !isAlive(old)) return now[0] as number;
      await sleep(50);
    }
    assert.fail(`no restarted process after ${old}: ${pids().join(', ')}`);
  };

  before(async () => {
    const a = assets as NonNullable<typeof assets>;
    dir = await mkdtemp('/tmp/bgs-');
    chmodSync(dir, 0o755);
    home = join(dir, 'home');
    const add = await runProcess('useradd', ['--no-create-home', '--user-group', '--home-dir', home, '--shell', '/usr/sbin/nologin', user], {}, 30_000);
    assert.equal(add.code, 0, add.stderr);
    const ids = (await runProcess('id', ['-u', user], {}, 5000)).stdout.trim();
    uid = Number(ids);
    gid = Number((await runProcess('id', ['-g', user], {}, 5000)).stdout.trim());
    mkdirSync(home, { mode: 0o700 });
    chownSync(home, uid, gid);

    // The user must read the built tree; a clone under a 0700 home (root's) is copied.
    tree = await treeReadableBy(uid, gid, dir);
    // Guest assets the daemon (as the user) imports: a copy it can read.
    const assetDir = join(dir, 'assets');
    mkdirSync(assetDir, { mode: 0o755 });
    const cp = await runProcess('cp', ['-a', '--reflink=auto', a.kernelDir, join(assetDir, 'kernel')], {}, 120_000);
    assert.equal(cp.code, 0, cp.stderr);
    try {
      linkSync(a.rootfs, join(assetDir, 'rootfs.ext4'));
    } catch {
      const r = await runProcess('cp', ['--reflink=auto', a.rootfs, join(assetDir, 'rootfs.ext4')], {}, 300_000);
      assert.equal(r.code, 0, r.stderr);
    }
    await runProcess('chmod', ['-R', 'a+rX', assetDir], {}, 60_000);

    assert.equal((await runProcess('ip', ['netns', 'add', netns], {}, 10_000)).code, 0);
    await ns('ip', ['link', 'set', 'lo', 'up']);
    mkdirSync(join(home, '.config', 'banger'), { recursive: true });
    writeFileSync(
      join(home, '.config', 'banger', 'config.toml'),
      ['accel = "tcg"', '[vm_defaults]', 'vcpu = 1', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'),
    );
    await runProcess('chown', ['-R', `${uid}:${gid}`, join(home, '.config')], {}, 10_000);
    startedHere = true;
    const started = await systemCtl(['start', '--owner', user]);
    assert.equal(started.code, 0, `system start: ${started.stdout}${started.stderr}`);
    await ok(['kernel', 'import', 'debian-cloud', '--from', join(assetDir, 'kernel')]);
    await ok(['image', 'register', '--name', 'debian-bookworm', '--rootfs', join(assetDir, 'rootfs.ext4'), '--kernel-ref', 'debian-cloud']);
  });

  after(async () => {
    if (home) {
      await asUser(['vm', 'delete', 'split1'], 120_000).catch(() => undefined);
      await systemCtl(['stop']).catch(() => undefined);
      for (const pid of [...daemonPids(), ...qemuPids()]) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    // Both runtime dirs were created by this test's `system start` (none existed: see `skip`); later
    // suites (the Node 24 pass) must find the host as it was.
    if (startedHere)
      for (const d of ['/run/banger', '/run/banger-root', ...(hadLogDir ? [] : ['/var/log/banger'])]) await rm(d, { recursive: true, force: true });
    await runProcess('ip', ['netns', 'del', netns], {}, 10_000).catch(() => undefined);
    await runProcess('userdel', [user], {}, 30_000).catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('vm run -d with NAT: the daemon and QEMU run as the user, QEMU under seccomp, the TAP is the user’s, NAT and DNS work', async () => {
    const run = await ok(['vm', 'run', '-d', '--name', 'split1', '--nat']);
    assert.match(run, /split1/, 'vm run -d names the VM it left running');
    const vm = await showVm('split1');
    assert.equal(vm.state, 'running');

    const daemons = daemonPids();
    assert.equal(daemons.length, 1, 'one daemon for the home');
    assert.equal(procStatus(daemons[0] as number).uid, uid, 'bangerd runs as the owner, not root');
    const helpers = helperPids();
    assert.equal(helpers.length, 1, 'one helper');
    assert.equal(procStatus(helpers[0] as number).uid, 0, 'the helper is root');
    const qemu = qemuPids();
    assert.equal(qemu.length, 1, 'one QEMU');
    const q = procStatus(qemu[0] as number);
    assert.equal(q.uid, uid, 'QEMU runs as the owner');
    assert.equal(q.seccomp, 2, 'QEMU runs with a seccomp filter (-sandbox)');

    const tap = vm.tap as string;
    assert.ok(tap, 'the VM has a TAP');
    assert.equal(
      (await ns('cat', [`/sys/class/net/${tap}/owner`])).stdout.trim(),
      String(uid),
      'the TAP belongs to the owner, so its QEMU opened it without root',
    );
    assert.match(await natIps(), new RegExp(`\\b${(vm.ip as string).replace(/\./g, '\\.')}\\b`), 'NAT on: the VM is in the NAT set');

    // DNS: the guest asks bridge_ip:53; the policy DNATs it to the daemon's unprivileged port.
    const dns = await asUser(['vm', 'ssh', 'split1', '--', 'getent', 'hosts', 'split1.vm'], 120_000);
    assert.equal(dns.code, 0, dns.stderr);
    assert.match(dns.stdout, new RegExp(`^${(vm.ip as string).replace(/\./g, '\\.')}\\s+split1\\.vm`, 'm'));
    const hostname = await asUser(['vm', 'ssh', 'split1', '--', 'cat', '/etc/hostname'], 120_000);
    assert.equal(hostname.stdout.trim(), 'split1', hostname.stderr);

    await ok(['vm', 'set', 'split1', '--nat', 'off']);
    assert.doesNotMatch(await natIps(), new RegExp(`\\b${(vm.ip as string).replace(/\./g, '\\.')}\\b`), 'NAT off: the VM left the NAT set');
  });

  test('the supervisor restarts a killed helper, then a killed daemon; the VM keeps running and is re-adopted', async () => {
    const [qemu] = qemuPids();
    assert.ok(qemu, 'QEMU is running');
    const [oldHelper] = helperPids();
    process.kill(oldHelper as number, 'SIGKILL');
    const newHelper = await restartedPid(helperPids, oldHelper as number);
    assert.equal(procStatus(newHelper).uid, 0);
    assert.ok(isAlive(qemu), 'QEMU survives the helper dying');
    await ok(['vm', 'set', 'split1', '--nat', 'on']);
    assert.match(await natIps(), /\d+\.\d+\.\d+\.\d+/, 'NAT applied through the restarted helper');

    const [oldDaemon] = daemonPids();
    process.kill(oldDaemon as number, 'SIGTERM');
    const newDaemon = await restartedPid(daemonPids, oldDaemon as number);
    assert.equal(procStatus(newDaemon).uid, uid);
    assert.ok(isAlive(qemu), 'QEMU survives the daemon restart');
    let vm = await showVm('split1').catch(() => undefined);
    for (let i = 0; i < 200 && !vm; i++) {
      await sleep(50);
      vm = await showVm('split1').catch(() => undefined);
    }
    assert.equal(vm?.state, 'running');
    assert.deepEqual(qemuPids(), [qemu], 'the same QEMU, re-adopted, no second one');
    const r = await asUser(['vm', 'ssh', 'split1', '--', 'true'], 120_000);
    assert.equal(r.code, 0, r.stderr);
  });

  test('delete removes the VM and its QEMU; every TAP left (the warm pool) was made for the owner', async () => {
    await ok(['vm', 'delete', 'split1']);
    assert.deepEqual(qemuPids(), []);
    assert.deepEqual((JSON.parse(await ok(['vm', 'list', '--json'])) as { vms: Vm[] }).vms, []);
    const taps = (await ns('ls', ['/sys/class/net'])).stdout.split(/\s+/).filter((n) => /^bg0\.\d+$/.test(n));
    for (const t of taps) assert.equal((await ns('cat', [`/sys/class/net/${t}/owner`])).stdout.trim(), String(uid), t);
  });
});
