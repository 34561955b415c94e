import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { after, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { OWNER_ALIAS, PrivilegedOps } from '../../src/host/privileged.js';
import { type CommandRunner, ProcessRunner, type RunOptions, type RunResult } from '../../src/host/runner.js';
import { TapPool } from '../../src/host/tap-pool.js';

/*
 * Every test here runs inside network namespaces it creates (banger-t-<random>) and deletes in
 * `after`; nothing touches the root namespace's links, routes, sysctls or firewall, and all
 * traffic stays between the test namespaces.
 */

const runner = new ProcessRunner();
const namespaces: string[] = [];
const children: ChildProcess[] = [];
const RUN_ID = randomBytes(3).toString('hex');

const sbin = (cmd: string) => ['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(`${d}/${cmd}`));

async function probe(): Promise<string | false> {
  if (process.platform !== 'linux') return 'Linux only';
  if (process.getuid?.() !== 0) return 'requires root: the test creates network namespaces (run as root, e.g. in the CI VM)';
  if (!sbin('ip')) return 'requires iproute2 (`ip`)';
  const name = `banger-t-${RUN_ID}-probe`;
  const r = await runner.run('ip', ['netns', 'add', name], { allowFailure: true });
  if (r.code !== 0) return `cannot create network namespaces here: ${r.stderr.trim()}`;
  await runner.run('ip', ['netns', 'del', name], { allowFailure: true });
  return false;
}

const skip = await probe();
const nftSkip = skip || (sbin('nft') ? false : 'requires nftables (`nft`)');
const iptSkip = skip || (sbin('iptables') && sbin('iptables-restore') ? false : 'requires iptables');

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const ns of namespaces) await runner.run('ip', ['netns', 'del', ns], { allowFailure: true });
});

let nsCounter = 0;
async function newNs(tag: string): Promise<string> {
  const name = `banger-t-${RUN_ID}-${tag}${nsCounter++}`;
  namespaces.push(name);
  await runner.run('ip', ['netns', 'add', name]);
  await ipn(name, 'link', 'set', 'lo', 'up');
  return name;
}

const ipn = (ns: string, ...args: string[]) => runner.run('ip', ['-n', ns, ...args]);
const inNs = (ns: string, cmd: string, args: string[], options?: RunOptions) =>
  runner.run('ip', ['netns', 'exec', ns, cmd, ...args], options);

/** A plain non-banger link: a dummy where the kernel has it, else one end of a veth pair. */
async function plainLink(ns: string, name: string): Promise<void> {
  const r = await runner.run('ip', ['-n', ns, 'link', 'add', name, 'type', 'dummy'], { allowFailure: true });
  if (r.code !== 0) await ipn(ns, 'link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`);
}

interface LinkJson {
  ifalias?: string;
  master?: string;
  flags: string[];
  linkinfo?: { info_kind?: string };
  addr_info: Array<{ family: string; local: string; prefixlen: number }>;
}

async function linkJson(ns: string, dev: string): Promise<LinkJson | undefined> {
  const r = await runner.run('ip', ['-n', ns, '-j', '-d', 'addr', 'show', 'dev', dev], { allowFailure: true });
  return r.code === 0 ? (JSON.parse(r.stdout) as LinkJson[])[0] : undefined;
}

const v4 = (l: LinkJson | undefined) => (l?.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`);

const rejectsWith = (code: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, String(e));
  assert.equal(e.code, code, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

test('ensureBridge: creates an owned, up bridge; idempotent; replaces its address; deleteBridge', { skip }, async () => {
  const ns = await newNs('br');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  let l = await linkJson(ns, 'banger0');
  assert.equal(l?.ifalias, OWNER_ALIAS);
  assert.equal(l?.linkinfo?.info_kind, 'bridge');
  assert.ok(l?.flags.includes('UP'));
  assert.deepEqual(v4(l), ['10.77.0.1/24']);

  await ops.ensureBridge('banger0', '10.78.0.1/25');
  l = await linkJson(ns, 'banger0');
  assert.deepEqual(v4(l), ['10.78.0.1/25']);

  await ops.deleteBridge('banger0');
  assert.equal(await linkJson(ns, 'banger0'), undefined);
  await ops.deleteBridge('banger0');
});

test('ensureBridge/deleteBridge refuse a pre-existing bridge banger does not own', { skip }, async () => {
  const ns = await newNs('foreign');
  await ipn(ns, 'link', 'add', 'bangerx', 'type', 'bridge');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await assert.rejects(ops.ensureBridge('bangerx', '10.77.0.1/24'), rejectsWith('conflict', /not a banger-managed bridge/));
  await assert.rejects(ops.deleteBridge('bangerx'), rejectsWith('conflict'));
  await assert.rejects(ops.createTap('bgtap0', 'bangerx'), rejectsWith('conflict'));
  const l = await linkJson(ns, 'bangerx');
  assert.ok(l, 'the foreign bridge is left alone');
  assert.equal(l.ifalias, undefined);
  assert.deepEqual(l.addr_info, []);
});

test('ensureBridge refuses a CIDR overlapping an address or route on another link', { skip }, async () => {
  const ns = await newNs('overlap');
  await plainLink(ns, 'dum0');
  await ipn(ns, 'addr', 'add', '10.88.0.5/16', 'dev', 'dum0');
  await ipn(ns, 'link', 'set', 'dum0', 'up');
  await ipn(ns, 'route', 'add', '10.99.0.0/24', 'dev', 'dum0');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await assert.rejects(ops.ensureBridge('banger1', '10.88.1.1/24'), rejectsWith('conflict', /overlaps 10\.88\.0\.5\/16 on dum0/));
  await assert.rejects(ops.ensureBridge('banger1', '10.0.0.1/8'), rejectsWith('conflict', /overlaps/));
  await assert.rejects(ops.ensureBridge('banger1', '10.99.0.129/25'), rejectsWith('conflict', /route 10\.99\.0\.0\/24 via dum0/));
  assert.equal(await linkJson(ns, 'banger1'), undefined, 'nothing was created');
  await ops.ensureBridge('banger1', '10.89.0.1/24');
  assert.ok(await linkJson(ns, 'banger1'));
});

test('bad names and arguments are refused before any command runs', async () => {
  const calls: string[][] = [];
  const recorder: CommandRunner = {
    run: async (cmd: string, args: readonly string[]): Promise<RunResult> => {
      calls.push([cmd, ...args]);
      return { code: 0, signal: null, stdout: '[]', stderr: '' };
    },
  };
  const ops = new PrivilegedOps({ runner: recorder, netns: 'banger-t-never-created', sudo: 'never', firewall: 'nft' });
  await assert.rejects(ops.ensureBridge('eth0', '10.77.0.1/24'), rejectsWith('bad_request', /eth0/));
  await assert.rejects(ops.ensureBridge('docker0', '10.77.0.1/24'), rejectsWith('bad_request', /docker0/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.0/24'), rejectsWith('bad_request', /network or broadcast/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.1/31'), rejectsWith('bad_request', /prefix/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.1/24; reboot'), rejectsWith('bad_request'));
  await assert.rejects(ops.deleteBridge('br0'), rejectsWith('bad_request'));
  await assert.rejects(ops.createTap('eth0', 'banger0'), rejectsWith('bad_request'));
  await assert.rejects(ops.createTap('bgtap0', 'docker0'), rejectsWith('bad_request'));
  await assert.rejects(ops.deleteTap('vnet0'), rejectsWith('bad_request'));
  await assert.rejects(ops.applyNat('banger0', '10.77.0.0/24', ['10.78.0.2']), rejectsWith('bad_request', /not a host address/));
  await assert.rejects(ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2/32']), rejectsWith('bad_request'));
  await assert.rejects(ops.applyNat('eth0', '10.77.0.0/24', []), rejectsWith('bad_request'));
  assert.throws(() => new PrivilegedOps({ runner: recorder, netns: 'x; rm -rf /' }), rejectsWith('bad_request'));
  assert.equal(calls.length, 0, JSON.stringify(calls));

  // Commands go through `ip netns exec` when a namespace is set, and through `sudo -n` when asked.
  const viaSudo = new PrivilegedOps({ runner: recorder, netns: 'banger-t-x', sudo: 'always', firewall: 'nft' });
  await viaSudo.applyNat('banger0', '10.77.0.0/24', []);
  assert.deepEqual(calls[0]?.slice(0, 8), ['sudo', '-n', 'ip', 'netns', 'exec', 'banger-t-x', 'nft', '-f']);
  assert.equal((await viaSudo.doctorInfo()).mode, 'sudo');
  assert.equal((await new PrivilegedOps({ runner: recorder, sudo: 'never' }).doctorInfo()).mode, process.getuid?.() === 0 ? 'root' : 'unavailable');
});

test('createTap/listTaps/deleteTap: bgtap<N> devices on the banger bridge only', { skip }, async () => {
  const ns = await newNs('tap');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  await ops.createTap('bgtap3', 'banger0');
  await ops.createTap('bgtap3', 'banger0');
  await ops.createTap('bgtap12', 'banger0');
  const l = await linkJson(ns, 'bgtap3');
  assert.equal(l?.master, 'banger0');
  assert.equal(l?.linkinfo?.info_kind, 'tun');
  assert.ok(l?.flags.includes('UP'));
  // A TAP detached by someone else is re-attached.
  await ipn(ns, 'link', 'set', 'bgtap12', 'nomaster');
  await ops.createTap('bgtap12', 'banger0');
  assert.equal((await linkJson(ns, 'bgtap12'))?.master, 'banger0');
  // Other TAPs and same-prefix non-TAP links are not banger's.
  await ipn(ns, 'tuntap', 'add', 'dev', 'othertap', 'mode', 'tap');
  await plainLink(ns, 'bgtap99');
  assert.deepEqual(await ops.listTaps(), ['bgtap3', 'bgtap12']);
  await assert.rejects(ops.deleteTap('bgtap99'), rejectsWith('conflict', /not a TAP/));
  await assert.rejects(ops.createTap('bgtap99', 'banger0'), rejectsWith('conflict'));
  await ops.deleteTap('bgtap3');
  await ops.deleteTap('bgtap3');
  assert.deepEqual(await ops.listTaps(), ['bgtap12']);
  assert.ok(await linkJson(ns, 'othertap'));
  assert.ok(await linkJson(ns, 'bgtap99'));
});

test('TapPool: reconcile keeps in-use TAPs, trims extras, fills to size; acquire/release never recycle', { skip }, async () => {
  const ns = await newNs('pool');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  for (const t of ['bgtap1', 'bgtap4', 'bgtap5', 'bgtap6']) await ops.createTap(t, 'banger0');
  const errors: unknown[] = [];
  const pool = new TapPool({ ops, bridge: 'banger0', size: 2, onError: (e) => errors.push(e) });

  await pool.reconcile(new Set(['bgtap5', 'bgtap9']));
  assert.equal(pool.idleCount(), 2);
  // bgtap5 is a running VM's; two spares kept (bgtap1, bgtap4), bgtap6 deleted.
  assert.deepEqual(await ops.listTaps(), ['bgtap1', 'bgtap4', 'bgtap5']);

  const a = await pool.acquire();
  const b = await pool.acquire();
  const c = await pool.acquire();
  assert.equal(new Set([a, b, c, 'bgtap5']).size, 4, `distinct TAPs: ${a} ${b} ${c}`);
  assert.notEqual(c, 'bgtap9', 'a name reserved for an in-use VM is never handed out');
  await pool.settled();
  assert.equal(pool.idleCount(), 2);
  const present = await ops.listTaps();
  assert.equal(present.length, 1 + 3 + 2);
  for (const t of [a, b, c]) assert.equal((await linkJson(ns, t))?.master, 'banger0');

  await pool.release(a);
  assert.ok(!(await ops.listTaps()).includes(a), 'a released TAP is deleted, not pooled');
  await pool.settled();
  assert.equal(pool.idleCount(), 2);
  const d = await pool.acquire();
  assert.ok(![b, c].includes(d));
  await pool.settled();
  assert.deepEqual(errors, []);

  // Restart: a new pool adopting the host's state converges to in-use + size.
  const again = new TapPool({ ops, bridge: 'banger0', size: 1 });
  await again.reconcile(new Set([b, c, d, 'bgtap5']));
  assert.equal(again.idleCount(), 1);
  assert.equal((await ops.listTaps()).length, 5);

  // Size 0: nothing idle, TAPs created on demand.
  const none = new TapPool({ ops, bridge: 'banger0', size: 0 });
  await none.reconcile(new Set([b, c, d, 'bgtap5']));
  assert.equal((await ops.listTaps()).length, 4);
  const e = await none.acquire();
  await none.settled();
  assert.equal(none.idleCount(), 0);
  assert.deepEqual((await ops.listTaps()).length, 5);
  await none.release(e);
});

test('TapPool: a failing background refill never rejects and is reported', async () => {
  let fail = false;
  const made: string[] = [];
  const fakeOps = {
    listTaps: async () => [...made],
    createTap: async (name: string) => {
      if (fail) throw new Error('boom');
      made.push(name);
    },
    deleteTap: async (name: string) => {
      const i = made.indexOf(name);
      if (i >= 0) made.splice(i, 1);
    },
  } as unknown as PrivilegedOps;
  const errors: unknown[] = [];
  const pool = new TapPool({ ops: fakeOps, bridge: 'banger0', size: 2, onError: (e) => errors.push(e) });
  await pool.reconcile(new Set());
  assert.deepEqual(made, ['bgtap0', 'bgtap1']);
  fail = true;
  assert.equal(await pool.acquire(), 'bgtap0');
  await pool.settled();
  assert.equal(errors.length, 1);
  assert.equal(pool.idleCount(), 1);
  await pool.acquire();
  await assert.rejects(pool.acquire(), /boom/);
  fail = false;
  const [x, y] = await Promise.all([pool.acquire(), pool.acquire()]);
  assert.notEqual(x, y);
  await pool.settled();
  assert.equal(pool.idleCount(), 2);
  assert.equal(new Set(made).size, made.length);
});

/** host ns (bridge + NAT) between a "VM" ns on the bridge and an "upstream" ns with a TCP server. */
async function natTopology() {
  const host = await newNs('host');
  const vm = await newNs('vm');
  const up = await newNs('up');
  const ops = (firewall: 'nft' | 'iptables') => new PrivilegedOps({ runner, netns: host, firewall });
  await ops('nft').ensureBridge('banger0', '10.77.0.1/24');
  await ops('nft').enableForwarding();
  // The veth's bridge end stands in for a TAP, its other end for the guest's NIC.
  await ipn(host, 'link', 'add', 'bgport0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', vm);
  await ipn(host, 'link', 'set', 'bgport0', 'master', 'banger0', 'up');
  await ipn(vm, 'addr', 'add', '10.77.0.2/24', 'dev', 'eth0');
  await ipn(vm, 'link', 'set', 'eth0', 'up');
  await ipn(vm, 'route', 'add', 'default', 'via', '10.77.0.1');
  // Upstream routes 10.77.0.0/24 back via the host, so without banger's table plain forwarding
  // works: a refused connection proves the forward drop, and seeing the host's address proves NAT.
  await ipn(host, 'link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', up);
  await ipn(host, 'addr', 'add', '198.51.100.1/24', 'dev', 'uplink0');
  await ipn(host, 'link', 'set', 'uplink0', 'up');
  await ipn(up, 'addr', 'add', '198.51.100.2/24', 'dev', 'eth0');
  await ipn(up, 'link', 'set', 'eth0', 'up');
  await ipn(up, 'route', 'add', '10.77.0.0/24', 'via', '198.51.100.1');

  const server = spawn(
    'ip',
    [
      'netns',
      'exec',
      up,
      process.execPath,
      '-e',
      `require('node:net').createServer((s) => { console.log(s.remoteAddress); s.end(s.remoteAddress + '\\n'); })
        .listen(8080, '198.51.100.2', () => console.log('listening'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(server);
  const seen: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    server.stdout?.on('data', (b: Buffer) => {
      buf += b.toString();
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) {
        if (l === 'listening') resolve();
        else seen.push(l);
      }
    });
    server.once('exit', (code) => reject(new Error(`upstream server exited with ${code}`)));
    setTimeout(() => reject(new Error('upstream server did not start')), 10_000).unref();
  });

  /** Connects from the VM ns; resolves to the address upstream saw, or undefined when it cannot connect. */
  const connectFromVm = async (): Promise<string | undefined> => {
    const script = `const s = require('node:net').connect({ host: '198.51.100.2', port: 8080 });
      let out = ''; s.setTimeout(1500, () => process.exit(3));
      s.on('data', (d) => (out += d)); s.on('end', () => { process.stdout.write(out.trim()); process.exit(0); });
      s.on('error', () => process.exit(4));`;
    const r = await inNs(vm, process.execPath, ['-e', script], { allowFailure: true, timeoutMs: 10_000 });
    return r.code === 0 ? r.stdout : undefined;
  };
  return { host, ops, connectFromVm, seen };
}

const masqueradeCount = async (host: string) =>
  ((await inNs(host, 'nft', ['list', 'table', 'inet', 'banger'])).stdout.match(/\bmasquerade\b/g) ?? []).length;

test('NAT (nftables): masquerades NAT-enabled VMs, drops the rest, idempotent, removable', { skip: nftSkip }, async () => {
  const { host, ops: mk, connectFromVm, seen } = await natTopology();
  const ops = mk('nft');
  assert.equal((await inNs(host, 'sysctl', ['-n', 'net.ipv4.ip_forward'])).stdout.trim(), '1');

  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2']);
  assert.equal(await connectFromVm(), '198.51.100.1', 'upstream sees the host side address: masqueraded');
  assert.deepEqual(seen, ['198.51.100.1']);
  assert.deepEqual(await ops.currentNatIps(), ['10.77.0.2']);

  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2']);
  assert.equal(await masqueradeCount(host), 1);
  const tables = (await inNs(host, 'nft', ['list', 'tables'])).stdout;
  assert.equal(tables.match(/table inet banger/g)?.length, 1);

  // NAT for another VM only: this VM's forwarded traffic is dropped.
  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.3', '10.77.0.9']);
  assert.deepEqual(await ops.currentNatIps(), ['10.77.0.3', '10.77.0.9']);
  assert.equal(await connectFromVm(), undefined);

  await ops.applyNat('banger0', '10.77.0.0/24', []);
  assert.deepEqual(await ops.currentNatIps(), []);
  assert.equal(await connectFromVm(), undefined);
  assert.equal(await masqueradeCount(host), 1, 'the rule stays, its set is empty');
  assert.equal(seen.length, 1, 'upstream never saw the dropped attempts');

  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2']);
  assert.equal(await connectFromVm(), '198.51.100.1');

  await ops.removeNat();
  await ops.removeNat();
  assert.doesNotMatch((await inNs(host, 'nft', ['list', 'tables'])).stdout, /banger/);
  assert.deepEqual(await ops.currentNatIps(), []);
  assert.equal(await connectFromVm(), '10.77.0.2', 'with no banger table, plain routing: neither NAT nor drop');
});

test('NAT (iptables fallback): same behaviour with tagged rules in banger chains', { skip: iptSkip }, async () => {
  const { host, ops: mk, connectFromVm } = await natTopology();
  const ops = mk('iptables');
  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2']);
  await ops.applyNat('banger0', '10.77.0.0/24', ['10.77.0.2']);
  assert.equal(await connectFromVm(), '198.51.100.1');
  assert.deepEqual(await ops.currentNatIps(), ['10.77.0.2']);
  const nat = (await inNs(host, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout;
  assert.equal(nat.match(/MASQUERADE/g)?.length, 1, nat);
  assert.equal(nat.match(/-A POSTROUTING .*-j BANGER-POSTROUTING/g)?.length, 1, nat);
  const filter = (await inNs(host, 'iptables', ['-w', '-S'])).stdout;
  assert.equal(filter.match(/-A FORWARD .*-j BANGER-FORWARD/g)?.length, 1, filter);
  for (const line of [...nat.split('\n'), ...filter.split('\n')].filter((l) => l.startsWith('-A'))) {
    assert.match(line, /--comment banger/);
  }

  await ops.applyNat('banger0', '10.77.0.0/24', []);
  assert.equal(await connectFromVm(), undefined);
  assert.deepEqual(await ops.currentNatIps(), []);

  await ops.removeNat();
  await ops.removeNat();
  const left = (await inNs(host, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout + (await inNs(host, 'iptables', ['-w', '-S'])).stdout;
  assert.doesNotMatch(left, /banger|BANGER/i);
  assert.equal(await connectFromVm(), '10.77.0.2', 'with no banger rules, plain routing: neither NAT nor drop');
});
