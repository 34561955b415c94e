import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildCmdline } from '../../src/guest/cmdline.js';
import { buildBaseInitramfs, buildPayloadCpio, type PayloadExtra, writeVmInitrd } from '../../src/guest/initramfs.js';
import { readHostTscKhz } from '../../src/host/cpu.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { requires } from '../helpers/prereq.js';

/**
 * Boots the real Debian cloud kernel through banger's own initramfs (banger-init + virtio modules +
 * a per-VM payload) under QEMU microvm with TCG, without the daemon: the guest boot path alone.
 * One VM at a time; each is killed and its files removed.
 */
interface Manifest {
  kernel: string;
  kernelDir: string;
  kernelVersion: string;
  rootfs: string;
}
const cache = process.env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets');
const manifest = ((): Manifest | undefined => {
  try {
    const m = JSON.parse(readFileSync(join(cache, 'assets.json'), 'utf8')) as Partial<Manifest>;
    if (m.kernel && m.kernelDir && m.kernelVersion && m.rootfs && existsSync(m.kernel) && existsSync(m.rootfs)) return m as Manifest;
  } catch {
    /* no assets */
  }
  return undefined;
})();
const bin = (name: string) => fileURLToPath(new URL(`../../../agent/build/${name}`, import.meta.url));
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;

const skip =
  requires(manifest, 'guest assets missing: run scripts/guest-assets.sh') ||
  requires(existsSync(bin('banger-init')) && existsSync(bin('banger-agent')), 'agent/build/banger-init or banger-agent missing: run npm run build') ||
  requires(has('qemu-system-x86_64'), 'qemu-system-x86_64 not installed');

const runner = new ProcessRunner();
const BOOT_DEADLINE_MS = 120_000;

interface Booted {
  qemu: ChildProcess;
  serialLog: string;
  agent: Socket;
  startedAt: number;
}

class Vm {
  private booted?: Booted;
  private buffered = '';
  constructor(readonly dir: string) {}

  async boot(o: { base: string; kernel: string; rootfs: string; rootFormat: 'qcow2' | 'raw'; extra: PayloadExtra[] }): Promise<Booted> {
    const initrd = join(this.dir, 'initrd.img');
    const payload = await buildPayloadCpio({
      agentBinary: bin('banger-agent'),
      hostname: 'smoke',
      config: { work_disk: '/dev/vdb' },
      extraFiles: o.extra,
    });
    await writeVmInitrd({ baseInitramfs: o.base, payload, outPath: initrd });
    const seed = join(this.dir, 'seed');
    await mkdir(seed, { recursive: true });
    await writeFile(join(seed, 'from-work-disk'), 'work disk ok\n');
    await runner.run('mkfs.ext4', ['-q', '-F', '-d', seed, join(this.dir, 'work.ext4'), '64M']);
    const tscKhz = await readHostTscKhz();
    const cmdline = buildCmdline({ hostname: 'smoke', ...(tscKhz ? { tscKhz } : {}) });
    const serialLog = join(this.dir, 'serial.log');
    const sock = join(this.dir, 'agent.sock');
    // The command line of docs guest-boot.md (no NIC: nothing here needs one).
    const args = [
      '-M',
      'microvm,acpi=on',
      '-accel',
      'tcg,thread=multi',
      '-cpu',
      'max',
      '-smp',
      '2',
      '-m',
      '512',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-no-reboot',
      '-serial',
      `file:${serialLog}`,
      '-kernel',
      o.kernel,
      '-initrd',
      initrd,
      '-append',
      cmdline,
      '-drive',
      `id=root,file=${o.rootfs},format=${o.rootFormat},if=none,cache=unsafe`,
      '-device',
      'virtio-blk-device,drive=root',
      '-drive',
      `id=work,file=${join(this.dir, 'work.ext4')},format=raw,if=none,cache=unsafe`,
      '-device',
      'virtio-blk-device,drive=work',
      '-chardev',
      `socket,id=agent0,path=${sock},server=on,wait=off`,
      '-device',
      'virtio-serial-device',
      '-device',
      'virtserialport,chardev=agent0,name=org.banger.agent',
    ];
    const startedAt = Date.now();
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    qemu.stderr?.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    // One connection held from launch: with short-lived ones, replies get lost (guest-boot.md).
    const agent = await new Promise<Socket>((resolve, reject) => {
      const deadline = Date.now() + 10_000;
      const attempt = () => {
        const s = connect(sock);
        s.once('connect', () => resolve(s));
        s.once('error', () => {
          if (qemu.exitCode !== null || Date.now() > deadline) reject(new Error(`QEMU agent socket never came up: ${stderr}`));
          else setTimeout(attempt, 20);
        });
      };
      attempt();
    });
    agent.on('data', (b: Buffer) => {
      this.buffered += b.toString();
    });
    this.booted = { qemu, serialLog, agent, startedAt };
    return this.booted;
  }

  /** Polls `health` until the first reply line; returns it and the seconds since QEMU started. */
  async health(): Promise<{ reply: Record<string, unknown>; seconds: number }> {
    const b = this.booted as Booted;
    const deadline = b.startedAt + BOOT_DEADLINE_MS;
    let id = 0;
    while (Date.now() < deadline) {
      assert.equal(b.qemu.exitCode, null, `QEMU exited early; serial log:\n${await this.serial()}`);
      const nl = this.buffered.indexOf('\n');
      if (nl >= 0) {
        const reply = JSON.parse(this.buffered.slice(0, nl)) as Record<string, unknown>;
        return { reply, seconds: (Date.now() - b.startedAt) / 1000 };
      }
      b.agent.write(`${JSON.stringify({ id: ++id, method: 'health' })}\n`);
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.fail(`no agent reply within ${BOOT_DEADLINE_MS / 1000} s; serial log:\n${await this.serial()}`);
  }

  async waitForSerial(re: RegExp): Promise<string> {
    const b = this.booted as Booted;
    const deadline = b.startedAt + BOOT_DEADLINE_MS;
    while (Date.now() < deadline) {
      const log = await this.serial();
      if (re.test(log)) return log;
      if (b.qemu.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`${re} not on the console; serial log:\n${await this.serial()}`);
  }

  serial(): Promise<string> {
    return readFile((this.booted as Booted).serialLog, 'utf8').catch(() => '');
  }

  async destroy(): Promise<void> {
    const b = this.booted;
    if (b) {
      b.agent.destroy();
      if (b.qemu.exitCode === null) {
        const exited = new Promise((r) => b.qemu.once('exit', r));
        b.qemu.kill('SIGKILL');
        await exited;
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

describe('guest boot through banger-init (real kernel, QEMU TCG)', { skip }, () => {
  const m = manifest as Manifest;
  let work: string;
  let base: string;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'banger-boot-smoke-'));
    base = join(work, 'base.cpio.gz');
    const r = await buildBaseInitramfs({ kernelTree: m.kernelDir, version: m.kernelVersion, initBinary: bin('banger-init'), outPath: base });
    assert.ok(r.modules.includes('virtio_blk') && r.modules.includes('virtio_console'), r.modules.join(' '));
  });
  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  test('Debian rootfs: modules, root, work disk, payload, systemd starts the agent unit', async (t) => {
    const vm = new Vm(join(work, 'debian'));
    await mkdir(vm.dir);
    try {
      const overlay = join(vm.dir, 'root.qcow2');
      await runner.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', m.rootfs, '-F', 'raw', overlay]);
      // Prints what only the guest can see, once the agent unit has been started.
      const check = [
        '#!/bin/sh',
        'exec >/dev/console 2>&1',
        'echo "SMOKE payload=$(cat /etc/banger-smoke) hostname=$(hostname) work=$(cat /root/from-work-disk)"',
        'echo "SMOKE root=$(awk \'$2=="/" {print $1}\' /proc/mounts) workmount=$(awk \'$2=="/root" {print $1}\' /proc/mounts)"',
        'echo "SMOKE agent=$(systemctl is-active banger-agent.service) port=$(readlink /dev/virtio-ports/org.banger.agent)"',
        // The udev rule of the payload is what makes systemd see the port as a device unit.
        'echo "SMOKE device=$(systemctl is-active \'dev-virtio\\x2dports-org.banger.agent.device\')"',
        'echo SMOKE-DONE',
      ].join('\n');
      await vm.boot({
        base,
        kernel: m.kernel,
        rootfs: overlay,
        rootFormat: 'qcow2',
        extra: [
          { path: '/etc/banger-smoke', mode: 0o600, content: 'installed\n' },
          { path: '/usr/local/sbin/banger-smoke', mode: 0o755, content: `${check}\n` },
          {
            path: '/etc/systemd/system/banger-smoke.service',
            mode: 0o644,
            content:
              '[Unit]\nAfter=banger-agent.service\n[Service]\nType=oneshot\nExecStartPre=/bin/udevadm settle\nExecStart=/usr/local/sbin/banger-smoke\n[Install]\nWantedBy=multi-user.target\n',
          },
          { path: '/etc/systemd/system/multi-user.target.wants/banger-smoke.service', target: '/etc/systemd/system/banger-smoke.service' },
        ],
      });
      const { reply, seconds } = await vm.health();
      t.diagnostic(`QEMU start → agent health reply: ${seconds.toFixed(2)} s`);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.equal((reply.result as { hostname?: string }).hostname, 'smoke');
      const log = await vm.waitForSerial(/SMOKE-DONE/);
      assert.match(log, /banger-init: loaded \d+ modules at/);
      assert.doesNotMatch(log, /banger-init: .* failed:/);
      assert.match(log, /banger-init: mounted \/dev\/vda \(ext4\)/);
      assert.match(log, /banger-init: switching root/);
      assert.match(log, /banger-init: mounted work disk \/dev\/vdb on \/root/);
      assert.match(log, /banger-init: installed \d+ payload entries\r?\n/);
      assert.match(log, /banger-init: starting systemd/);
      assert.match(log, /SMOKE payload=installed hostname=smoke work=work disk ok/);
      assert.match(log, /SMOKE root=\/dev\/vda workmount=\/dev\/vdb/);
      assert.match(log, /SMOKE agent=active port=\.\.\/vport\d+p1/);
      assert.match(log, /SMOKE device=active/);
    } finally {
      await vm.destroy();
    }
  });

  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
  test('image without systemd or /sbin/init: banger-init starts the agent and stays PID 1', {
    skip: requires(busybox, 'busybox-static not installed'),
  }, async (t) => {
    const vm = new Vm(join(work, 'busybox'));
    await mkdir(vm.dir);
    try {
      const tree = join(vm.dir, 'tree');
      for (const d of ['bin', 'dev', 'proc', 'sys', 'root', 'etc', 'tmp']) await mkdir(join(tree, d), { recursive: true });
      await copyFile(busybox as string, join(tree, 'bin/busybox'));
      await chmod(join(tree, 'bin/busybox'), 0o755);
      await symlink('busybox', join(tree, 'bin/sh'));
      const image = join(vm.dir, 'root.ext4');
      await runner.run('mkfs.ext4', ['-q', '-F', '-d', tree, image, '32M']);
      await vm.boot({ base, kernel: m.kernel, rootfs: image, rootFormat: 'raw', extra: [] });
      const { reply, seconds } = await vm.health();
      t.diagnostic(`QEMU start → agent health reply: ${seconds.toFixed(2)} s`);
      assert.equal(reply.ok, true, JSON.stringify(reply));
      assert.equal((reply.result as { hostname?: string }).hostname, 'smoke', 'banger-init sets the hostname without systemd');
      const log = await vm.serial();
      assert.match(log, /banger-init: started agent \/usr\/local\/bin\/banger-agent/);
      assert.match(log, /banger-init: no init in the image; supervising the agent as PID 1/);
    } finally {
      await vm.destroy();
    }
  });
});
