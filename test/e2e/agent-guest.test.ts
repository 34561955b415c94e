import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { encodeData, encodeFrame, type Frame, FrameDecoder } from '../../src/guest/agent-frames.js';
import { buildCmdline } from '../../src/guest/cmdline.js';
import { buildBaseInitramfs, buildPayloadCpio, writeVmInitrd } from '../../src/guest/initramfs.js';
import { readHostTscKhz } from '../../src/host/cpu.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { requires } from '../helpers/prereq.js';

/**
 * The agent's processes and data channels inside a real guest (Debian rootfs, systemd, QEMU TCG,
 * banger's initramfs), without the daemon: the four virtio-serial data ports are found by name,
 * a process runs in its cgroup, output/read/write/tar sessions cross a real virtio port, and a
 * process survives `systemctl restart banger-agent` (KillMode=process). Run under
 * `flock /tmp/banger-vm.lock` like every boot.
 */
const cache = process.env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets');
const manifest = ((): { kernel: string; kernelDir: string; kernelVersion: string; rootfs: string } | undefined => {
  try {
    const m = JSON.parse(readFileSync(join(cache, 'assets.json'), 'utf8'));
    if (m.kernel && m.kernelDir && m.kernelVersion && m.rootfs && existsSync(m.kernel) && existsSync(m.rootfs)) return m;
  } catch {
    /* no assets */
  }
  return undefined;
})();
const bin = (name: string) => fileURLToPath(new URL(`../../../agent/build/${name}`, import.meta.url));
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
const skip =
  requires(manifest, 'guest assets missing: run scripts/guest-assets.sh') ||
  requires(existsSync(bin('banger-init')) && existsSync(bin('banger-agent')), 'agent/build missing: run npm run build') ||
  requires(has('qemu-system-x86_64'), 'qemu-system-x86_64 not installed');

const runner = new ProcessRunner();
const DEADLINE_MS = 180_000;

async function connectWhenUp(path: string, qemu: ChildProcess): Promise<Socket> {
  for (const deadline = Date.now() + 10_000; ; ) {
    const socket = connect(path);
    const ok = await new Promise<boolean>((resolve) => {
      socket.once('connect', () => resolve(true));
      socket.once('error', () => resolve(false));
    });
    if (ok) return socket;
    if (qemu.exitCode !== null || Date.now() > deadline) throw new Error(`${path} never came up`);
    await sleep(20);
  }
}

let dir: string;
let qemu: ChildProcess | undefined;
let control: Socket;
const ports: Socket[] = [];
let lines = '';
let nextId = 1;

async function call<T = Record<string, unknown>>(method: string, params?: unknown, timeoutMs = 30_000): Promise<T> {
  const id = nextId++;
  control.write(`${JSON.stringify(params === undefined ? { id, method } : { id, method, params })}\n`);
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(10)) {
    for (let nl = lines.indexOf('\n'); nl >= 0; nl = lines.indexOf('\n')) {
      const reply = JSON.parse(lines.slice(0, nl)) as { id: number; ok: boolean; result?: T; error?: string };
      lines = lines.slice(nl + 1);
      if (reply.id !== id) continue;
      if (!reply.ok) throw new Error(reply.error);
      return reply.result as T;
    }
  }
  throw new Error(`${method}: no reply`);
}

/** One data-channel session on port k: S with a fresh nonce, frames until R. */
async function session(k: number, request: Record<string, unknown>, stdin?: Buffer) {
  const socket = ports[k] as Socket;
  const nonce = randomBytes(8).toString('hex');
  const decoder = new FrameDecoder();
  const got = { stdout: [] as Buffer[], stderr: [] as Buffer[], data: [] as Buffer[] };
  return new Promise<{ result: Record<string, unknown>; stdout: Buffer; stderr: Buffer; data: Buffer }>((resolve, reject) => {
    let accepted = false;
    const timer = setTimeout(() => reject(new Error(`session ${JSON.stringify(request)} timed out`)), 60_000);
    const onData = (chunk: Buffer) => {
      for (const f of decoder.push(chunk) as Frame[]) {
        if (!accepted) {
          if (f.type === 'A' && JSON.parse(f.payload.toString()).nonce === nonce) {
            accepted = true;
            if (stdin) {
              for (const d of encodeData(stdin)) socket.write(d);
              socket.write(encodeFrame('E'));
            }
          }
          continue;
        }
        if (f.type === 'D') got[f.stream === 1 ? 'stdout' : f.stream === 2 ? 'stderr' : 'data'].push(f.payload);
        if (f.type === 'R') {
          clearTimeout(timer);
          socket.off('data', onData);
          resolve({
            result: JSON.parse(f.payload.toString()),
            stdout: Buffer.concat(got.stdout),
            stderr: Buffer.concat(got.stderr),
            data: Buffer.concat(got.data),
          });
        }
      }
    };
    socket.on('data', onData);
    socket.write(encodeFrame('S', JSON.stringify({ nonce, ...request })));
  });
}

before(async () => {
  if (skip) return;
  const m = manifest as NonNullable<typeof manifest>;
  dir = await mkdtemp(join(tmpdir(), 'banger-agent-guest-'));
  const base = join(dir, 'base.cpio.gz');
  await buildBaseInitramfs({ kernelTree: m.kernelDir, version: m.kernelVersion, initBinary: bin('banger-init'), outPath: base });
  const payload = await buildPayloadCpio({ agentBinary: bin('banger-agent'), hostname: 'agentvm', config: {}, extraFiles: [] });
  const initrd = join(dir, 'initrd.img');
  await writeVmInitrd({ baseInitramfs: base, payload, outPath: initrd });
  const overlay = join(dir, 'root.qcow2');
  await runner.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', m.rootfs, '-F', 'raw', overlay]);
  const tscKhz = await readHostTscKhz();
  const args = [
    ...['-M', 'microvm,acpi=on', '-accel', 'tcg,thread=multi', '-cpu', 'max'],
    ...['-smp', '2', '-m', '768', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'],
    ...['-serial', `file:${join(dir, 'serial.log')}`, '-kernel', m.kernel, '-initrd', initrd],
    ...['-append', buildCmdline({ hostname: 'agentvm', ...(tscKhz ? { tscKhz } : {}) })],
    ...['-drive', `id=root,file=${overlay},format=qcow2,if=none,cache=unsafe`, '-device', 'virtio-blk-device,drive=root'],
    ...['-device', 'virtio-serial-device'],
    ...['-chardev', `socket,id=agent0,path=${join(dir, 'agent.sock')},server=on,wait=off`],
    ...['-device', 'virtserialport,chardev=agent0,name=org.banger.agent'],
  ];
  for (let k = 0; k < 4; k++) {
    args.push('-chardev', `socket,id=data${k},path=${join(dir, `agent-data-${k}.sock`)},server=on,wait=off`);
    args.push('-device', `virtserialport,chardev=data${k},name=org.banger.data.${k}`);
  }
  qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  control = await connectWhenUp(join(dir, 'agent.sock'), qemu);
  control.on('data', (b: Buffer) => {
    lines += b.toString();
  });
  for (let k = 0; k < 4; k++) ports.push(await connectWhenUp(join(dir, `agent-data-${k}.sock`), qemu));
  for (const deadline = Date.now() + DEADLINE_MS; ; ) {
    try {
      await call('ping', undefined, 1000);
      break;
    } catch (error) {
      const serial = await readFile(join(dir, 'serial.log'), 'utf8').catch(() => '');
      if (Date.now() > deadline || qemu.exitCode !== null) throw new Error(`no agent: ${error}\n${serial}`);
    }
  }
});

after(async () => {
  for (const s of ports) s.destroy();
  control?.destroy();
  if (qemu && qemu.exitCode === null) {
    const exited = new Promise((r) => qemu?.once('exit', r));
    qemu.kill('SIGKILL');
    await exited;
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('a process in its cgroup, its output over a virtio data port', { skip }, async () => {
  await call('proc.start', { id: 'hello', shell: 'cat /proc/self/cgroup; echo to-stderr >&2; exit 4' });
  const s = await session(0, { op: 'output', id: 'hello', stdout_from: 0, stderr_from: 0, follow: true });
  assert.equal(s.result.ok, true);
  const proc = s.result.proc as { exit_code: number; state: string };
  assert.equal(proc.exit_code, 4);
  assert.match(s.stdout.toString(), /^0::\/banger\/hello$/m);
  assert.equal(s.stderr.toString(), 'to-stderr\n');
});

test('write, read and tar-out over the data ports; every port answers', { skip }, async () => {
  const content = randomBytes(300 * 1024);
  const w = await session(1, { op: 'write', path: '/root/e2e/blob', mode: 0o600, mkdirs: true }, content);
  assert.deepEqual(w.result, { ok: true, size: content.length });
  const r = await session(2, { op: 'read', path: '/root/e2e/blob' });
  assert.deepEqual(r.result, { ok: true, size: content.length, mode: 0o600 });
  assert.ok(r.data.equals(content));
  const t = await session(3, { op: 'tar-out', path: '/root/e2e' });
  assert.equal(t.result.ok, true, JSON.stringify(t.result));
  assert.ok(t.data.includes(Buffer.from('e2e/blob')));
  const st = await call<{ type: string; size: number }>('fs.stat', { path: '/root/e2e/blob' });
  assert.deepEqual([st.type, st.size], ['file', content.length]);
});

/** call, retried while the agent restarts (its replies in that window are lost). */
async function callRetrying<T = Record<string, unknown>>(method: string, params: unknown): Promise<T> {
  for (const deadline = Date.now() + 90_000; ; await sleep(200)) {
    try {
      return await call<T>(method, params, 2000);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      lines = '';
    }
  }
}

let runs = 0;
async function run(shell: string): Promise<string> {
  const id = `run-${++runs}`;
  await callRetrying('proc.start', { id, shell });
  const s = await session(0, { op: 'output', id, stdout_from: 0, stderr_from: 0, follow: true });
  return s.stdout.toString().trim();
}

test('a process survives systemctl restart banger-agent (KillMode=process)', { skip }, async () => {
  const agentPid = () => run('systemctl show -p MainPID --value banger-agent');
  const before = await agentPid();
  const started = await call<{ pid: number }>('proc.start', { id: 'longrun', shell: 'while :; do echo tick; sleep 0.1; done' });
  await call('proc.start', { id: 'restarter', shell: 'systemctl restart banger-agent' });
  for (let i = 0; ; i++) {
    assert.ok(i < 600, 'systemctl restart banger-agent never finished');
    const r = await callRetrying<{ state: string; exit_code: number }>('proc.show', { id: 'restarter' });
    if (r.state !== 'running') {
      assert.equal(r.exit_code, 0);
      break;
    }
    await sleep(200);
  }
  const afterPid = await agentPid();
  assert.notEqual(afterPid, before, 'the agent was restarted');
  const info = await callRetrying<{ state: string; pid: number; stdout_bytes: number }>('proc.show', { id: 'longrun' });
  assert.equal(info.state, 'running');
  assert.equal(info.pid, started.pid);
  for (let i = 0; ; i++) {
    assert.ok(i < 300, 'the output stopped growing after the restart');
    const now = await call<{ stdout_bytes: number }>('proc.show', { id: 'longrun' });
    if (now.stdout_bytes > info.stdout_bytes) break;
    await sleep(100);
  }
  await call('proc.signal', { id: 'longrun', signal: 9 });
});

// ---- warm start (docs/processes.md "Warm start"): what only a real guest can show ------------

test('identity.set in a real guest: the clock step moves the guest clock; entropy is credited as root; names and generation land', { skip }, async () => {
  const ahead = Date.now() + 86_400_000; // the guest's own CLOCK_REALTIME, a day ahead
  const machineId = randomBytes(16).toString('hex');
  const r = await callRetrying<{ hostname: string; generation: number }>('identity.set', {
    clock_unix_ms: ahead,
    hostname: 'warm-clone',
    machine_id: machineId,
    seed_hex: randomBytes(64).toString('hex'),
    generation: 7,
  });
  assert.deepEqual([r.hostname, r.generation], ['warm-clone', 7]);
  assert.ok(Number(await run('date +%s%3N')) >= ahead, 'the guest clock was stepped forward');
  assert.equal(await run('hostname; cat /etc/hostname /etc/machine-id /run/banger/generation'), `warm-clone\nwarm-clone\n${machineId}\n7`);
  await call('identity.set', { clock_unix_ms: Date.now() }); // and back
  assert.ok(Number(await run('date +%s%3N')) < ahead, 'the guest clock was stepped back');
});

/** The state letter of a guest process (R, S, D…), read over a data port (nothing written to the guest's disk). */
async function guestProcState(pid: number): Promise<string> {
  const s = await session(1, { op: 'read', path: `/proc/${pid}/stat` });
  const stat = s.data.toString();
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

test('fs.freeze of the guest root holds a write until fs.thaw, and without fs.thaw the guest thaws itself', { skip }, async () => {
  for (const [round, thawAfterMs] of [
    ['explicit', 60_000],
    ['auto', 1500],
  ] as const) {
    // the writer waits on /run (tmpfs, never frozen) so it can be started before the freeze
    const trigger = `/run/warm-go-${round}`;
    const p = await call<{ pid: number }>('proc.start', {
      id: `frozen-writer-${round}`,
      shell: `while [ ! -e ${trigger} ]; do sleep 0.05; done; echo ${round} > /root/frozen-${round}`,
    });
    assert.deepEqual(await call('fs.freeze', { paths: ['/'], thaw_after_ms: thawAfterMs }), { frozen: ['/'] });
    await call('fs.mkdir', { path: trigger });
    while ((await guestProcState(p.pid)) !== 'D') await sleep(20);
    if (round === 'explicit') assert.deepEqual(await call('fs.thaw', { paths: ['/'] }), { thawed: ['/'] });
    for (;;) {
      const info = await call<{ state: string; exit_code: number }>('proc.show', { id: `frozen-writer-${round}` });
      if (info.state !== 'running') {
        assert.equal(info.exit_code, 0);
        break;
      }
      await sleep(50);
    }
    assert.equal(await run(`cat /root/frozen-${round}`), round);
  }
  assert.match(await run('journalctl -b -u banger-agent --no-pager | grep -c "thawed /: no fs.thaw came" || true'), /^[1-9]/);
});
