/**
 * The real agent binary's identity.set, fs.freeze and fs.thaw, run on this host inside namespaces
 * the test creates, never against the host's own state:
 * - identity: `unshare --user --map-root-user --uts --net --mount` with private tmpfs over /etc and
 *   /run and a veth pair as eth0. CLOCK_REALTIME and the entropy pool are not namespaced: in a user
 *   namespace clock_settime and RNDADDENTROPY fail with EPERM (tested: the clock step fails first and
 *   nothing after it runs), and the effects of the later steps are tested with the test-only
 *   BANGER_AGENT_TEST_SKIP=clock,entropy. The clock is always given as the current time anyway.
 *   The clock step and the credited entropy are tested in a real VM: test/e2e/agent-guest.test.ts.
 * - freeze: an ext4 image on a loop device mounted in a private mount namespace (root, no user
 *   namespace: FIFREEZE needs CAP_SYS_ADMIN over the filesystem's own namespace). tmpfs cannot be
 *   frozen (EOPNOTSUPP), which the failure-rollback test uses.
 * The agent speaks over stdin/stdout (--stdio); state is read with nsenter into its namespaces.
 */
import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '../../src/guest/agent-client.js';
import { openAgentLink } from '../../src/guest/agent-link.js';
import type { VmmHandle } from '../../src/vmm/driver.js';
import { AGENT_BINARY, ensureAgentBuilt } from '../helpers/agent-harness.js';
import { sbin } from '../helpers/netns.js';
import { requires } from '../helpers/prereq.js';

ensureAgentBuilt();

const isRoot = process.getuid?.() === 0;
const run = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: 'utf8' });

/** Why the namespaces cannot be made here, or false. */
function nsUnavailable(): string | false {
  if (process.platform !== 'linux') return 'Linux only';
  if (!isRoot) return 'needs root: nsenter into the test namespaces, loop devices and mounts';
  const probe = run('unshare', ['--user', '--map-root-user', '--uts', '--net', '--mount', '--fork', 'sh', '-c', 'mount -t tmpfs t /etc']);
  if (probe.status !== 0) return `cannot create user+uts+net+mount namespaces here: ${probe.stderr.trim()}`;
  return false;
}
const nsSkip = nsUnavailable() || requires(sbin('ip'), 'iproute2 (ip) makes the veth of the identity tests');

function loopUnavailable(): string | false {
  if (nsSkip) return nsSkip;
  const probe = run('losetup', ['-f']);
  if (probe.status !== 0) return `no free loop device: ${probe.stderr.trim()}`;
  return false;
}
const loopSkip = loopUnavailable() || requires(sbin('mkfs.ext4'), 'mkfs.ext4 (e2fsprogs) makes the filesystem the freeze tests freeze');

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'banger-warm-'));
});
after(async () => {
  if (!dir) return;
  // the loop device goes when its mount namespace ends (autoclear); detach any left anyway
  const img = join(dir, 'fs.img');
  const left = run('losetup', ['-j', img, '-O', 'NAME', '-n']).stdout.trim();
  for (const dev of left.split('\n').filter(Boolean)) run('losetup', ['-d', dev]);
  await rm(dir, { recursive: true, force: true });
});

type Reply = { id: number; ok: boolean; result?: Record<string, unknown>; error?: string };

/** The agent in --stdio mode inside namespaces, started by `setup` (a shell script run there first). */
class NsAgent {
  private readonly lines: string[] = [];
  private waiter: (() => void) | null = null;
  private nextId = 1;
  private bridged: net.Socket | null = null;
  log = '';
  pid = 0;
  readonly exited: Promise<number | null>;

  private constructor(readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (this.bridged) return void this.bridged.write(`${line}\n`);
      this.lines.push(line);
      this.waiter?.();
    });
    child.stderr.on('data', (d: Buffer) => {
      this.log += d.toString();
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    process.once('exit', () => child.kill('SIGKILL'));
  }

  static async start(opts: { userns: boolean; setup: string; env?: Record<string, string> }): Promise<NsAgent> {
    const ns = opts.userns ? ['--user', '--map-root-user', '--uts', '--net', '--mount'] : ['--mount'];
    const procs = join(dir, `procs-${Math.random().toString(16).slice(2)}`);
    const script = `set -e\n${opts.setup}\necho "READY $$"\nexec "$0" --stdio --procs-dir "$1" --cgroup-root none`;
    const child = spawn('unshare', [...ns, '--propagation', 'private', '--fork', 'sh', '-c', script, AGENT_BINARY, procs], {
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...opts.env },
    });
    const agent = new NsAgent(child);
    const ready = await agent.line(20_000);
    const m = /^READY (\d+)$/.exec(ready);
    assert.ok(m, `the namespace setup failed: ${ready}\n${agent.log}`);
    agent.pid = Number(m[1]);
    return agent;
  }

  private async line(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (Date.now() > deadline) throw new Error(`no line from the agent within ${timeoutMs} ms; log:\n${this.log}`);
      await Promise.race([new Promise<void>((r) => (this.waiter = r)), sleep(100)]);
    }
    return this.lines.shift() as string;
  }

  async request(method: string, params?: unknown): Promise<Reply> {
    const id = this.nextId++;
    this.child.stdin.write(`${JSON.stringify(params === undefined ? { id, method } : { id, method, params })}\n`);
    const reply = JSON.parse(await this.line(20_000)) as Reply;
    assert.equal(reply.id, id);
    return reply;
  }

  async call(method: string, params?: unknown): Promise<Record<string, unknown>> {
    const r = await this.request(method, params);
    assert.equal(r.ok, true, `${method} failed: ${r.error}`);
    return r.result as Record<string, unknown>;
  }

  /**
   * A Unix socket the product's AgentClient can dial (as QEMU's chardev): its bytes go to the
   * agent's stdin and the agent's lines back to it. After this, request() is not used.
   */
  async bridge(): Promise<string> {
    const path = join(dir, `bridge-${this.pid}.sock`);
    const server = net.createServer((socket) => {
      this.bridged = socket;
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => this.child.stdin.write(d));
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    this.child.once('exit', () => server.close());
    return path;
  }

  /** Runs a shell command inside the agent's namespaces (as the host's root) and returns stdout. */
  sh(command: string): string {
    const ns = this.child.spawnargs.includes('--uts') ? ['-u', '-n', '-m'] : ['-m'];
    return execFileSync('nsenter', ['-t', String(this.pid), ...ns, 'sh', '-c', command], { encoding: 'utf8' });
  }

  /** Ends the agent: its stdin closes, as a control connection that goes away. */
  async stop(): Promise<void> {
    this.child.stdin.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}

const now = () => Date.now(); // the clock is always asked to be what it is: nothing moves even if a step ran

/** /etc and /run private tmpfs, an old identity, eth0 (a veth whose peer is up) with an old address and default route. */
const IDENTITY_SETUP = `
mount -t tmpfs tmpfs /etc
mount -t tmpfs tmpfs /run
hostname oldname
printf 'oldname\\n' > /etc/hostname
printf '127.0.0.1 localhost\\n127.0.1.1\\toldname oldname.local other # oldname stays in comments\\n::1 localhost oldname\\n' > /etc/hosts
printf '11111111111111111111111111111111\\n' > /etc/machine-id
ip link add eth0 type veth peer name peer0
ip link set peer0 up
ip link set eth0 up
ip addr add 10.99.0.5/16 dev eth0
ip route add default via 10.99.0.1
`;

const FULL = {
  hostname: 'clone-1',
  machine_id: '0123456789abcdef0123456789abcdef',
  net: { iface: 'eth0', mac: '52:54:00:ab:cd:ef', addr: '10.77.0.12', prefix: 24, gateway: '10.77.0.1' },
  seed_hex: 'a5'.repeat(32),
  generation: 3,
};
const SKIP_PRIVILEGED = { BANGER_AGENT_TEST_SKIP: 'clock,entropy' };

test('identity.set refuses every invalid field, naming it, and changes nothing', { skip: nsSkip }, async () => {
  const agent = await NsAgent.start({ userns: true, setup: IDENTITY_SETUP, env: SKIP_PRIVILEGED });
  try {
    const c = now();
    const bad: Array<[RegExp, unknown]> = [
      [/invalid params/, undefined],
      [/invalid params/, ['x']],
      [/clock_unix_ms: required/, { hostname: 'x' }],
      [/invalid clock_unix_ms/, { clock_unix_ms: 1000 }],
      [/invalid clock_unix_ms/, { clock_unix_ms: 5_000_000_000_000 }],
      [/invalid clock_unix_ms/, { clock_unix_ms: c + 0.5 }],
      [/invalid clock_unix_ms/, { clock_unix_ms: String(c) }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'Upper' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: '' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: '-x' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'a b' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'a\nb' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'a/b' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'a'.repeat(64) }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 'a\u0000b' }],
      [/invalid hostname/, { clock_unix_ms: c, hostname: 7 }],
      [/invalid machine_id/, { clock_unix_ms: c, machine_id: 'abc' }],
      [/invalid machine_id/, { clock_unix_ms: c, machine_id: '0123456789ABCDEF0123456789abcdef' }],
      [/invalid machine_id/, { clock_unix_ms: c, machine_id: '0'.repeat(32) }],
      [/invalid net: must be an object/, { clock_unix_ms: c, net: 'eth0' }],
      [/invalid net: unknown param mtu/, { clock_unix_ms: c, net: { ...FULL.net, mtu: 1500 } }],
      [/invalid net\.iface: required/, { clock_unix_ms: c, net: { addr: '10.0.0.2', prefix: 24 } }],
      [/invalid net\.iface/, { clock_unix_ms: c, net: { ...FULL.net, iface: '../x' } }],
      [/invalid net\.iface/, { clock_unix_ms: c, net: { ...FULL.net, iface: 'x'.repeat(16) } }],
      [/invalid net\.iface/, { clock_unix_ms: c, net: { ...FULL.net, iface: '..' } }],
      [/invalid net\.mac/, { clock_unix_ms: c, net: { ...FULL.net, mac: '53:54:00:ab:cd:ef' } }],
      [/invalid net\.mac/, { clock_unix_ms: c, net: { ...FULL.net, mac: '52:54:00:ab:cd' } }],
      [/invalid net\.mac/, { clock_unix_ms: c, net: { ...FULL.net, mac: '52-54-00-ab-cd-ef' } }],
      [/invalid net\.mac/, { clock_unix_ms: c, net: { ...FULL.net, mac: '00:00:00:00:00:00' } }],
      [/invalid net\.addr/, { clock_unix_ms: c, net: { ...FULL.net, addr: '10.77.0.012' } }],
      [/invalid net\.addr/, { clock_unix_ms: c, net: { ...FULL.net, addr: '10.77.0' } }],
      [/invalid net\.addr/, { clock_unix_ms: c, net: { ...FULL.net, addr: '::1' } }],
      [/invalid net\.addr: is the network or broadcast/, { clock_unix_ms: c, net: { ...FULL.net, addr: '10.77.0.255' } }],
      [/invalid net\.prefix/, { clock_unix_ms: c, net: { ...FULL.net, prefix: 0 } }],
      [/invalid net\.prefix/, { clock_unix_ms: c, net: { ...FULL.net, prefix: 33 } }],
      [/invalid net\.gateway: not in/, { clock_unix_ms: c, net: { ...FULL.net, gateway: '10.78.0.1' } }],
      [/invalid net\.gateway: equals/, { clock_unix_ms: c, net: { ...FULL.net, gateway: '10.77.0.12' } }],
      [/invalid seed_hex/, { clock_unix_ms: c, seed_hex: 'ab'.repeat(31) }],
      [/invalid seed_hex/, { clock_unix_ms: c, seed_hex: 'ab'.repeat(257) }],
      [/invalid seed_hex/, { clock_unix_ms: c, seed_hex: `${'ab'.repeat(32)}a` }],
      [/invalid seed_hex/, { clock_unix_ms: c, seed_hex: 'zz'.repeat(32) }],
      [/invalid seed_hex/, { clock_unix_ms: c, seed_hex: 'AB'.repeat(32) }],
      [/invalid generation/, { clock_unix_ms: c, generation: -1 }],
      [/invalid generation/, { clock_unix_ms: c, generation: 1.5 }],
      [/invalid generation/, { clock_unix_ms: c, generation: '3' }],
      [/unknown param shell/, { clock_unix_ms: c, shell: 'reboot' }],
    ];
    for (const [error, params] of bad) {
      // every bad field rides with valid ones, which must not be applied either
      const full = params && typeof params === 'object' && !Array.isArray(params) ? { ...FULL, ...params } : params;
      const r = await agent.request('identity.set', full);
      assert.equal(r.ok, false, `accepted ${JSON.stringify(params)}`);
      assert.match(r.error as string, error, JSON.stringify(params));
    }
    assert.equal(agent.sh('hostname').trim(), 'oldname');
    assert.equal(agent.sh('cat /etc/hostname /etc/machine-id'), 'oldname\n11111111111111111111111111111111\n');
    assert.match(agent.sh('ip -o -4 addr show dev eth0'), /10\.99\.0\.5\/16/);
    assert.equal(agent.sh('test -e /run/banger && echo yes || echo no').trim(), 'no');
  } finally {
    await agent.stop();
  }
});

test('identity.set without the test skip: the clock step comes first, fails in a user namespace (EPERM), and nothing after it runs', {
  skip: nsSkip,
}, async () => {
  const agent = await NsAgent.start({ userns: true, setup: IDENTITY_SETUP });
  try {
    const r = await agent.request('identity.set', { clock_unix_ms: now(), ...FULL });
    assert.equal(r.ok, false);
    assert.match(r.error as string, /^identity step clock failed: clock_settime: Operation not permitted/);
    assert.equal(agent.sh('hostname').trim(), 'oldname');
    assert.equal(agent.sh('cat /etc/hostname').trim(), 'oldname');
    // with the clock skipped, the entropy step is next and needs the init namespace's CAP_SYS_ADMIN
    const agent2 = await NsAgent.start({ userns: true, setup: IDENTITY_SETUP, env: { BANGER_AGENT_TEST_SKIP: 'clock' } });
    try {
      const r2 = await agent2.request('identity.set', { clock_unix_ms: now(), ...FULL });
      assert.match(r2.error as string, /^identity step entropy failed: RNDADDENTROPY: Operation not permitted/);
      assert.equal(agent2.sh('hostname').trim(), 'oldname');
    } finally {
      await agent2.stop();
    }
  } finally {
    await agent.stop();
  }
});

test('identity.set applies hostname, /etc/hosts, machine-id, MAC, address, default route and generation; a retry is a no-op', { skip: nsSkip }, async () => {
  const agent = await NsAgent.start({ userns: true, setup: IDENTITY_SETUP, env: SKIP_PRIVILEGED });
  try {
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    for (let attempt = 0; attempt < 2; attempt++) {
      const result = await agent.call('identity.set', { clock_unix_ms: now(), ...FULL });
      assert.deepEqual(result, { hostname: 'clone-1', generation: 3, boot_id: bootId });
      assert.equal(agent.sh('hostname'), 'clone-1\n');
      assert.equal(agent.sh('cat /etc/hostname'), 'clone-1\n');
      assert.equal(
        agent.sh('cat /etc/hosts'),
        '127.0.0.1 localhost\n127.0.1.1\tclone-1 oldname.local other # oldname stays in comments\n::1 localhost clone-1\n',
      );
      assert.equal(agent.sh('cat /etc/machine-id'), '0123456789abcdef0123456789abcdef\n');
      assert.equal(agent.sh('stat -c %a /etc/machine-id /etc/hostname /etc/hosts'), '444\n644\n644\n');
      assert.equal(agent.sh('cat /run/banger/generation'), '3\n');
      assert.equal(agent.sh('stat -c %a /run/banger'), '755\n');
      const link = agent.sh('ip -o link show dev eth0');
      assert.match(link, /link\/ether 52:54:00:ab:cd:ef /);
      assert.match(link, /[<,]UP[,>]/);
      const addrs = agent.sh('ip -o -4 addr show dev eth0');
      assert.match(addrs, /inet 10\.77\.0\.12\/24 /);
      assert.doesNotMatch(addrs, /10\.99\.0\.5/, 'the old address is gone');
      assert.equal(agent.sh('ip -4 route show default'), 'default via 10.77.0.1 dev eth0 \n', 'only the new default route');
      assert.equal(agent.sh('ls -A /etc /run/banger | grep -c banger- || true').trim(), '0', 'no temp file left');
    }
    // a second clone identity replaces the first (address, gateway), generation moves on
    const next = { ...FULL, hostname: 'clone_2.dev', net: { ...FULL.net, addr: '10.77.0.13', gateway: '10.77.0.254' }, generation: 4 };
    assert.deepEqual(await agent.call('identity.set', { clock_unix_ms: now(), ...next }), { hostname: 'clone_2.dev', generation: 4, boot_id: bootId });
    assert.match(agent.sh('cat /etc/hosts'), /127\.0\.1\.1\tclone_2\.dev oldname\.local/);
    assert.match(agent.sh('ip -o -4 addr show dev eth0'), /inet 10\.77\.0\.13\/24 /);
    assert.doesNotMatch(agent.sh('ip -o -4 addr show dev eth0'), /10\.77\.0\.12/);
    assert.equal(agent.sh('ip -4 route show default'), 'default via 10.77.0.254 dev eth0 \n');
    assert.equal(agent.sh('cat /run/banger/generation'), '4\n');
    // only the clock: nothing else changes, no generation in the answer
    assert.deepEqual(await agent.call('identity.set', { clock_unix_ms: now() }), { hostname: 'clone_2.dev', generation: null, boot_id: bootId });
    assert.equal(agent.sh('cat /run/banger/generation'), '4\n');
  } finally {
    await agent.stop();
  }
});

test("the product's AgentClient and AgentLink re-identify the real agent (the namespaced guest); its result passes the host schema", {
  skip: nsSkip,
}, async () => {
  const agent = await NsAgent.start({ userns: true, setup: IDENTITY_SETUP, env: SKIP_PRIVILEGED });
  const socketPath = await agent.bridge();
  const client = new AgentClient({ socketPath, transport: 'virtio-serial' });
  try {
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    assert.deepEqual(await client.identitySet({ clock_unix_ms: now(), ...FULL }, 10_000), { hostname: 'clone-1', generation: 3, boot_id: bootId });
    assert.equal(agent.sh('hostname'), 'clone-1\n');
    // the agent's own refusal comes back as bad_request naming the field
    await assert.rejects(
      client.identitySet({ clock_unix_ms: now(), net: { ...FULL.net, gateway: '10.1.1.1' } }, 10_000),
      (e: Error & { code?: string }) => e.code === 'bad_request' && /net\.gateway: not in/.test(e.message),
    );
  } finally {
    client.close();
  }
  // the daemon's view: AgentLink over the same agent (a new connection, as after a daemon restart)
  const link = openAgentLink({ agentSocket: socketPath, agentTransport: 'virtio-serial' } as VmmHandle);
  try {
    await link.identitySet({ clock_unix_ms: now(), hostname: 'via-link', generation: 5 }, 10_000);
    assert.equal(agent.sh('hostname; cat /run/banger/generation'), 'via-link\n5\n');
  } finally {
    link.close();
    await agent.stop();
  }
});

test('symlinks planted at /etc/hostname, /etc/machine-id, /etc/hosts and /run/banger/generation are never written through', { skip: nsSkip }, async () => {
  const canaries = join(dir, 'canaries');
  mkdirSync(canaries, { recursive: true });
  const names = ['hostname', 'machine-id', 'hosts', 'generation'];
  for (const n of names) writeFileSync(join(canaries, n), `canary ${n}\n`);
  const setup = `${IDENTITY_SETUP}
rm /etc/hostname /etc/machine-id /etc/hosts
ln -s ${canaries}/hostname /etc/hostname
ln -s ${canaries}/machine-id /etc/machine-id
ln -s ${canaries}/hosts /etc/hosts
mkdir -m 0755 /run/banger
ln -s ${canaries}/generation /run/banger/generation
`;
  const agent = await NsAgent.start({ userns: true, setup, env: SKIP_PRIVILEGED });
  try {
    await agent.call('identity.set', { clock_unix_ms: now(), ...FULL });
    for (const n of names) assert.equal(readFileSync(join(canaries, n), 'utf8'), `canary ${n}\n`, `the ${n} canary is unchanged`);
    // the links at hostname, machine-id and generation were replaced by files (rename replaces the link)
    assert.equal(agent.sh('stat -c %F /etc/hostname /etc/machine-id /run/banger/generation'), 'regular file\nregular file\nregular file\n');
    assert.equal(agent.sh('cat /etc/hostname /etc/machine-id /run/banger/generation'), 'clone-1\n0123456789abcdef0123456789abcdef\n3\n');
    // /etc/hosts as a link is a distro's business: left as it is, not followed
    assert.equal(agent.sh('stat -c %F /etc/hosts'), 'symbolic link\n');
  } finally {
    await agent.stop();
  }
});

test('/run/banger planted as a symlink: the generation step refuses it and writes nothing where it points', { skip: nsSkip }, async () => {
  const target = join(dir, 'planted-run-banger');
  mkdirSync(target, { recursive: true });
  const agent = await NsAgent.start({ userns: true, setup: `${IDENTITY_SETUP}\nln -s ${target} /run/banger\n`, env: SKIP_PRIVILEGED });
  try {
    const r = await agent.request('identity.set', { clock_unix_ms: now(), ...FULL });
    assert.equal(r.ok, false);
    assert.match(r.error as string, /^identity step generation failed: replace \/run\/banger\/generation: /);
    assert.deepEqual(execFileSync('ls', ['-A', target], { encoding: 'utf8' }), '');
    assert.equal(agent.sh('hostname').trim(), 'clone-1', 'the steps before it stay done');
  } finally {
    await agent.stop();
  }
});

// ---- fs.freeze / fs.thaw --------------------------------------------------------------------

/** An ext4 image mounted (loop) at $dir/mnt and a tmpfs at $dir/tmpfs, in the agent's private mount namespace. */
function freezeSetup(): { setup: string; mnt: string; tmpfs: string; plain: string; link: string } {
  const img = join(dir, 'fs.img');
  const mnt = join(dir, 'mnt');
  const tmpfs = join(dir, 'tmpfs');
  const plain = join(dir, 'plain');
  const link = join(dir, 'mnt-link');
  for (const d of [mnt, tmpfs, plain]) mkdirSync(d, { recursive: true });
  execFileSync('rm', ['-f', img, link]);
  execFileSync('mkfs.ext4', ['-q', '-F', img, '16M']);
  symlinkSync(mnt, link);
  return { setup: `mount -o loop ${img} ${mnt}\nmount -t tmpfs tmpfs ${tmpfs}`, mnt, tmpfs, plain, link };
}

/** A shell writing into the frozen filesystem, in the agent's mount namespace. */
function startWriter(agent: NsAgent, file: string): { pid: number; done: Promise<number | null> } {
  const w = spawn('nsenter', ['-t', String(agent.pid), '-m', 'sh', '-c', `echo written > ${file}`], { stdio: 'ignore' });
  return { pid: w.pid as number, done: new Promise((resolve) => w.once('exit', (code) => resolve(code))) };
}

/** Waits until the process sleeps uninterruptibly (state D): blocked on the frozen filesystem. */
async function waitBlocked(pid: number): Promise<void> {
  for (;;) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('D')) return;
    await sleep(20);
  }
}

test('fs.freeze and fs.thaw refuse invalid params, non-mount points and links, freezing nothing', { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  try {
    const bad: Array<[string, RegExp, unknown]> = [
      ['fs.freeze', /invalid params/, undefined],
      ['fs.freeze', /invalid thaw_after_ms/, { paths: [fx.mnt] }],
      ['fs.freeze', /invalid thaw_after_ms/, { paths: [fx.mnt], thaw_after_ms: 99 }],
      ['fs.freeze', /invalid thaw_after_ms/, { paths: [fx.mnt], thaw_after_ms: 60_001 }],
      ['fs.freeze', /invalid thaw_after_ms/, { paths: [fx.mnt], thaw_after_ms: 1000.5 }],
      ['fs.freeze', /invalid paths: required/, { thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: must be an array/, { paths: fx.mnt, thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: must not be empty/, { paths: [], thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: at most 8/, { paths: Array.from({ length: 9 }, (_, i) => `${fx.mnt}/${i}`), thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: must hold strings/, { paths: [1], thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: relative\/x is not an absolute path/, { paths: ['relative/x'], thaw_after_ms: 1000 }],
      ['fs.freeze', /invalid paths: .* repeats/, { paths: [fx.mnt, fx.mnt], thaw_after_ms: 1000 }],
      ['fs.freeze', /unknown param force/, { paths: [fx.mnt], thaw_after_ms: 1000, force: true }],
      ['fs.freeze', /is not a mount point/, { paths: [fx.mnt, fx.plain], thaw_after_ms: 1000 }],
      ['fs.freeze', /mnt-link is a symlink or not a directory/, { paths: [fx.link], thaw_after_ms: 1000 }],
      ['fs.freeze', /failed: No such file or directory/, { paths: [join(dir, 'missing')], thaw_after_ms: 1000 }],
      ['fs.thaw', /invalid paths: required/, {}],
      ['fs.thaw', /unknown param thaw_after_ms/, { paths: [fx.mnt], thaw_after_ms: 1000 }],
      ['fs.thaw', /invalid paths: relative is not an absolute path/, { paths: ['relative'] }],
    ];
    for (const [method, error, params] of bad) {
      const r = await agent.request(method, params);
      assert.equal(r.ok, false, `${method} accepted ${JSON.stringify(params)}`);
      assert.match(r.error as string, error, `${method} ${JSON.stringify(params)}`);
    }
    // nothing was frozen: a write completes (a frozen filesystem would hold it until the test times out)
    const w = startWriter(agent, `${fx.mnt}/after-refusals`);
    assert.equal(await w.done, 0);
  } finally {
    await agent.stop();
  }
});

test('fs.freeze holds writes until fs.thaw, cancels its watchdog on thaw, and a second thaw is fine', { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  try {
    assert.deepEqual(await agent.call('fs.freeze', { paths: [fx.mnt], thaw_after_ms: 60_000 }), { frozen: [fx.mnt] });
    // freezing it again is fine (EBUSY = frozen already)
    assert.deepEqual(await agent.call('fs.freeze', { paths: [fx.mnt], thaw_after_ms: 60_000 }), { frozen: [fx.mnt] });
    const watchdogs = () =>
      readFileSync(`/proc/${agent.pid}/task/${agent.pid}/children`, 'utf8')
        .trim()
        .split(' ')
        .filter((p) => p && readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'banger-thaw');
    // the second freeze replaced the first freeze's watchdog: one covers what is frozen
    while (watchdogs().length !== 1) await sleep(20);
    const w = startWriter(agent, `${fx.mnt}/f`);
    await waitBlocked(w.pid);
    assert.deepEqual(await agent.call('fs.thaw', { paths: [fx.mnt] }), { thawed: [fx.mnt] });
    assert.equal(await w.done, 0);
    assert.equal(agent.sh(`cat ${fx.mnt}/f`), 'written\n');
    assert.deepEqual(await agent.call('fs.thaw', { paths: [fx.mnt] }), { thawed: [fx.mnt] }, 'not frozen: fine');
    while (watchdogs().length > 0) await sleep(20); // cancelled: it exits without thawing anything
    assert.doesNotMatch(agent.log, /no fs\.thaw came/);
  } finally {
    await agent.stop();
  }
});

test("the product's AgentClient freezes and thaws through the real agent", { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  const client = new AgentClient({ socketPath: await agent.bridge(), transport: 'virtio-serial' });
  try {
    assert.deepEqual(await client.freezeFilesystems([fx.mnt], 60_000, 10_000), [fx.mnt]);
    const w = startWriter(agent, `${fx.mnt}/via-client`);
    await waitBlocked(w.pid);
    assert.deepEqual(await client.thawFilesystems([fx.mnt], 10_000), [fx.mnt]);
    assert.equal(await w.done, 0);
    await assert.rejects(
      client.freezeFilesystems([fx.plain], 1000, 10_000),
      (e: Error & { code?: string }) => e.code === 'bad_request' && /not a mount point/.test(e.message),
    );
  } finally {
    client.close();
    await agent.stop();
  }
});

test('a freeze that fails part-way thaws what it froze (ext4 frozen, then tmpfs refuses)', { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  try {
    const r = await agent.request('fs.freeze', { paths: [fx.mnt, fx.tmpfs], thaw_after_ms: 60_000 });
    assert.equal(r.ok, false);
    assert.match(r.error as string, new RegExp(`^fs\\.freeze ${fx.tmpfs} failed: Operation not supported`));
    const w = startWriter(agent, `${fx.mnt}/after-rollback`);
    assert.equal(await w.done, 0, 'the ext4 frozen first was thawed again');
  } finally {
    await agent.stop();
  }
});

test('without fs.thaw the guest thaws by itself after thaw_after_ms, with the agent still connected', { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  try {
    await agent.call('fs.freeze', { paths: [fx.mnt], thaw_after_ms: 1000 });
    const w = startWriter(agent, `${fx.mnt}/auto`);
    await waitBlocked(w.pid);
    assert.equal(await w.done, 0, 'the blocked write completed once the watchdog thawed');
    assert.equal(agent.sh(`cat ${fx.mnt}/auto`), 'written\n');
    while (!agent.log.includes(`thawed ${fx.mnt}: no fs.thaw came`)) await sleep(20);
  } finally {
    await agent.stop();
  }
});

test('the thaw-after timer outlives the control connection and the agent itself', { skip: loopSkip }, async () => {
  const fx = freezeSetup();
  const agent = await NsAgent.start({ userns: false, setup: fx.setup });
  await agent.call('fs.freeze', { paths: [fx.mnt], thaw_after_ms: 1500 });
  const w = startWriter(agent, `${fx.mnt}/orphaned`);
  await waitBlocked(w.pid);
  // the control connection goes away: in --stdio mode the agent then exits, and nobody sends fs.thaw
  await agent.stop();
  assert.equal(await w.done, 0, 'the watchdog thawed after the agent was gone');
  // its log line arrives on the stderr it inherited from the agent
  while (!agent.log.includes(`thawed ${fx.mnt}: no fs.thaw came`)) await sleep(20);
});
