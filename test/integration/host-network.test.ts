import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import pino from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { parseConfig } from '../../src/config/config.js';
import { type DnsRecords, NetworkService } from '../../src/daemon/services/network.js';
import { BridgeLock } from '../../src/host/bridge-lock.js';
import { OWNER_ALIAS, PrivilegedOps } from '../../src/host/privileged.js';
import { ProcessRunner, type RunOptions } from '../../src/host/runner.js';
import { TapPool } from '../../src/host/tap-pool.js';
import type { LeaseRepo } from '../../src/store/leases.js';
import type { Repos } from '../../src/store/repos.js';
import { macForIp } from '../../src/util/ipv4.js';
import { FakeRunner } from '../helpers/fake-runner.js';
import { netnsUnavailable, sbin } from '../helpers/netns.js';
import { requires } from '../helpers/prereq.js';
import { waitFor } from './harness.js';

/*
 * Every test here runs inside network namespaces it creates (banger-t-<random>) and deletes in
 * `after`; nothing touches the root namespace's links, routes, sysctls or firewall, and all
 * traffic stays between the test namespaces.
 */

const runner = new ProcessRunner();
const namespaces: string[] = [];
const children: ChildProcess[] = [];
const RUN_ID = randomBytes(3).toString('hex');

const skip = await netnsUnavailable('the test creates network namespaces (run as root, e.g. in the CI VM)', `banger-t-${RUN_ID}-probe`);
const nftSkip = skip || requires(sbin('nft'), 'requires nftables (`nft`)');
const iptSkip = skip || requires(sbin('iptables') && sbin('iptables-restore'), 'requires iptables');

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
const inNs = (ns: string, cmd: string, args: string[], options?: RunOptions) => runner.run('ip', ['netns', 'exec', ns, cmd, ...args], options);

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
  await assert.rejects(ops.createTap('bgx.0', 'bangerx'), rejectsWith('conflict'));
  // No policy or resolver routing for it either: its traffic and DNS are not banger's to change.
  await assert.rejects(ops.applyPolicy({ bridge: 'bangerx', cidr: '10.77.0.0/24', pins: [] }), rejectsWith('conflict'));
  await assert.rejects(ops.routeVmDomain('bangerx', '10.77.0.1'), rejectsWith('conflict'));
  await assert.rejects(ops.unrouteVmDomain('bangerx'), rejectsWith('conflict'));
  if (sbin('nft')) assert.doesNotMatch((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /bangerx/);
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
  // `ip -j -d link show dev banger0` finds banger's own bridge (applyPolicy checks it); everything else answers [].
  // `ip -j -4 addr show dev banger0` answers the bridge's address (applyPolicy checks the policy is for its network).
  const recorder = new FakeRunner((_cmd, args) => {
    const bridge = args.includes('link') && args.at(-1) === 'banger0';
    if (args.includes('addr') && args.at(-1) === 'banger0') {
      return { stdout: JSON.stringify([{ ifname: 'banger0', addr_info: [{ family: 'inet', local: '10.77.0.1', prefixlen: 24 }] }]) };
    }
    return { stdout: bridge ? JSON.stringify([{ ifname: 'banger0', ifalias: OWNER_ALIAS, linkinfo: { info_kind: 'bridge' } }]) : '[]' };
  });
  const calls = recorder.calls;
  const ops = new PrivilegedOps({ runner: recorder, netns: 'banger-t-never-created', sudo: 'never', firewall: 'nft' });
  await assert.rejects(ops.ensureBridge('eth0', '10.77.0.1/24'), rejectsWith('bad_request', /eth0/));
  await assert.rejects(ops.ensureBridge('docker0', '10.77.0.1/24'), rejectsWith('bad_request', /docker0/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.0/24'), rejectsWith('bad_request', /network or broadcast/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.1/31'), rejectsWith('bad_request', /prefix/));
  await assert.rejects(ops.ensureBridge('banger0', '10.77.0.1/24; reboot'), rejectsWith('bad_request'));
  await assert.rejects(ops.deleteBridge('br0'), rejectsWith('bad_request'));
  await assert.rejects(ops.createTap('eth0', 'banger0'), rejectsWith('bad_request'));
  await assert.rejects(ops.createTap('bg0.0', 'docker0'), rejectsWith('bad_request'));
  await assert.rejects(ops.deleteTap('vnet0', 'banger0'), rejectsWith('bad_request'));
  // Another bridge's TAP names (another daemon's) are not this bridge's to create or delete; legacy names are never created.
  await assert.rejects(ops.createTap('bg1.0', 'banger0'), rejectsWith('bad_request'));
  await assert.rejects(ops.deleteTap('bg1.0', 'banger0'), rejectsWith('bad_request'));
  await assert.rejects(ops.createTap('bgtap0', 'banger0'), rejectsWith('bad_request'));
  const pin = (tap: string, ip: string) => ({ tap, mac: '52:54:00:4d:00:02', ip, nat: true });
  await assert.rejects(
    ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pin('bg0.0', '10.78.0.2')] }),
    rejectsWith('bad_request', /not a host address/),
  );
  await assert.rejects(ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pin('bg0.0', '10.77.0.2/32')] }), rejectsWith('bad_request'));
  await assert.rejects(ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pin('bg1.0', '10.77.0.2')] }), rejectsWith('bad_request'));
  await assert.rejects(ops.applyPolicy({ bridge: 'eth0', cidr: '10.77.0.0/24', pins: [] }), rejectsWith('bad_request'));
  await assert.rejects(ops.removePolicy('eth0'), rejectsWith('bad_request'));
  assert.throws(() => new PrivilegedOps({ runner: recorder, netns: 'x; rm -rf /' }), rejectsWith('bad_request'));
  assert.equal(calls.length, 0, JSON.stringify(calls));

  // Commands go through `ip netns exec` when a namespace is set, and through `sudo -n` when asked.
  const viaSudo = new PrivilegedOps({ runner: recorder, netns: 'banger-t-x', sudo: 'always', firewall: 'nft' });
  await viaSudo.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [] });
  assert.ok(calls.length > 0);
  for (const c of calls) assert.deepEqual(c.slice(0, 6), ['sudo', '-n', 'ip', 'netns', 'exec', 'banger-t-x']);
  assert.ok(
    calls.some((c) => c.slice(6, 8).join(' ') === 'nft -f'),
    JSON.stringify(calls),
  );
  assert.equal((await viaSudo.doctorInfo()).mode, 'sudo');
  assert.equal((await new PrivilegedOps({ runner: recorder, sudo: 'never' }).doctorInfo()).mode, process.getuid?.() === 0 ? 'root' : 'unavailable');
});

test("createTap/listTaps/deleteTap: the bridge's own TAP names on its own bridge only", { skip }, async () => {
  const ns = await newNs('tap');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  await ops.ensureBridge('banger1', '10.78.0.1/24');
  await ops.createTap('bg0.3', 'banger0');
  await ops.createTap('bg0.3', 'banger0');
  await ops.createTap('bg0.12', 'banger0');
  const l = await linkJson(ns, 'bg0.3');
  assert.equal(l?.master, 'banger0');
  assert.equal(l?.linkinfo?.info_kind, 'tun');
  assert.ok(l?.flags.includes('UP'));
  // A TAP detached by someone else is re-attached.
  await ipn(ns, 'link', 'set', 'bg0.12', 'nomaster');
  await ops.createTap('bg0.12', 'banger0');
  assert.equal((await linkJson(ns, 'bg0.12'))?.master, 'banger0');
  // Other TAPs, same-prefix non-TAP links and another bridge's TAPs are not banger0's.
  await ipn(ns, 'tuntap', 'add', 'dev', 'othertap', 'mode', 'tap');
  await plainLink(ns, 'bg0.99');
  await ops.createTap('bg1.0', 'banger1');
  // A legacy bgtap<N> counts only when it is on this bridge.
  await ipn(ns, 'tuntap', 'add', 'dev', 'bgtap7', 'mode', 'tap');
  await ipn(ns, 'link', 'set', 'bgtap7', 'master', 'banger1');
  await ipn(ns, 'tuntap', 'add', 'dev', 'bgtap8', 'mode', 'tap');
  await ipn(ns, 'link', 'set', 'bgtap8', 'master', 'banger0');
  assert.deepEqual(await ops.listTaps('banger0'), ['bg0.3', 'bg0.12', 'bgtap8']);
  assert.deepEqual(await ops.listTaps('banger1'), ['bg1.0', 'bgtap7']);
  await assert.rejects(ops.deleteTap('bg0.99', 'banger0'), rejectsWith('conflict', /not a TAP/));
  await assert.rejects(ops.createTap('bg0.99', 'banger0'), rejectsWith('conflict'));
  await assert.rejects(ops.deleteTap('bgtap7', 'banger0'), rejectsWith('conflict', /banger1/));
  // A TAP with banger0's name that someone moved to banger1 is not deleted through banger0 either.
  await ipn(ns, 'link', 'set', 'bg0.12', 'master', 'banger1');
  await assert.rejects(ops.deleteTap('bg0.12', 'banger0'), rejectsWith('conflict', /enslaved to banger1/));
  await ipn(ns, 'link', 'set', 'bg0.12', 'master', 'banger0');
  await ops.deleteTap('bg0.3', 'banger0');
  await ops.deleteTap('bg0.3', 'banger0');
  await ops.deleteTap('bgtap8', 'banger0');
  assert.deepEqual(await ops.listTaps('banger0'), ['bg0.12']);
  for (const kept of ['othertap', 'bg0.99', 'bg1.0', 'bgtap7']) assert.ok(await linkJson(ns, kept), kept);
});

test('TapPool: reconcile keeps in-use TAPs, trims extras, fills to size; acquire/release never recycle', { skip }, async () => {
  const ns = await newNs('pool');
  const ops = new PrivilegedOps({ runner, netns: ns });
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  for (const t of ['bg0.1', 'bg0.4', 'bg0.5', 'bg0.6']) await ops.createTap(t, 'banger0');
  const errors: unknown[] = [];
  const pool = new TapPool({ ops, bridge: 'banger0', size: 2, onError: (e) => errors.push(e) });

  await pool.reconcile(new Set(['bg0.5', 'bg0.9']));
  assert.equal(pool.idleCount(), 2);
  // bg0.5 is a running VM's; two spares kept (bg0.1, bg0.4), bg0.6 deleted.
  assert.deepEqual(await ops.listTaps('banger0'), ['bg0.1', 'bg0.4', 'bg0.5']);

  const a = await pool.acquire();
  const b = await pool.acquire();
  const c = await pool.acquire();
  assert.equal(new Set([a, b, c, 'bg0.5']).size, 4, `distinct TAPs: ${a} ${b} ${c}`);
  assert.notEqual(c, 'bg0.9', 'a name reserved for an in-use VM is never handed out');
  await pool.settled();
  assert.equal(pool.idleCount(), 2);
  const present = await ops.listTaps('banger0');
  assert.equal(present.length, 1 + 3 + 2);
  for (const t of [a, b, c]) assert.equal((await linkJson(ns, t))?.master, 'banger0');

  await pool.release(a);
  assert.ok(!(await ops.listTaps('banger0')).includes(a), 'a released TAP is deleted, not pooled');
  await pool.settled();
  assert.equal(pool.idleCount(), 2);
  const d = await pool.acquire();
  assert.ok(![b, c].includes(d));
  await pool.settled();
  assert.deepEqual(errors, []);

  // Restart: a new pool adopting the host's state converges to in-use + size.
  const again = new TapPool({ ops, bridge: 'banger0', size: 1 });
  await again.reconcile(new Set([b, c, d, 'bg0.5']));
  assert.equal(again.idleCount(), 1);
  assert.equal((await ops.listTaps('banger0')).length, 5);

  // Size 0: nothing idle, TAPs created on demand.
  const none = new TapPool({ ops, bridge: 'banger0', size: 0 });
  await none.reconcile(new Set([b, c, d, 'bg0.5']));
  assert.equal((await ops.listTaps('banger0')).length, 4);
  const e = await none.acquire();
  await none.settled();
  assert.equal(none.idleCount(), 0);
  assert.deepEqual((await ops.listTaps('banger0')).length, 5);
  await none.release(e);
});

test('TapPool: a failing background refill never rejects and is reported', async () => {
  let fail = false;
  const made: string[] = [];
  const fakeOps = {
    listTaps: async () => [...made],
    // fake PrivilegedOps: records names only
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
  assert.deepEqual(made, ['bg0.0', 'bg0.1']);
  fail = true;
  assert.equal(await pool.acquire(), 'bg0.0');
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

// ---- NAT, pins and spoofing -------------------------------------------------------------------

/** Frames built byte by byte in a guest namespace and sent on its NIC with a raw packet socket. */
const FRAME_SENDER = String.raw`
import json, socket, struct, sys
def mac(m): return bytes(int(x, 16) for x in m.split(':'))
def ip(a): return socket.inet_aton(a)
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
spec = json.loads(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((spec['dev'], 0))
for f in spec['frames']:
    eth = mac(f['dst_mac']) + mac(f['src_mac'])
    if f['kind'] == 'udp':
        payload = f['payload'].encode()
        udp = struct.pack('!HHHH', 40000, f['dport'], 8 + len(payload), 0) + payload
        hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, ip(f['src_ip']), ip(f['dst_ip']))
        hdr = hdr[:10] + struct.pack('!H', csum(hdr)) + hdr[12:]
        s.send(eth + b'\x08\x00' + hdr + udp)
    elif f['kind'] == 'arp':
        arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, f['op'], mac(f['sha']), ip(f['spa']), mac(f['tha']), ip(f['tpa']))
        s.send(eth + b'\x08\x06' + arp + b'\x00' * 18)
`;

const python = skip || requires(sbin('python3'), 'requires python3 (crafts raw Ethernet frames)');

interface Guest {
  ns: string;
  tap: string;
  ip: string;
  mac: string;
}

/** A UDP listener in `ns` that records "source-address payload" lines. */
/**
 * Waits until a helper process prints "listening", then keeps collecting the lines it prints after
 * that (what it received) into the returned array.
 */
async function linesAfterListening(child: ChildProcess, what: string): Promise<string[]> {
  const seen: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout?.on('data', (b: Buffer) => {
      buf += b.toString();
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const l of lines) {
        if (l === 'listening') resolve();
        else seen.push(l);
      }
    });
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)));
  });
  return seen;
}

async function udpListener(ns: string, addr: string, port: number): Promise<string[]> {
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      process.execPath,
      '-e',
      `const s = require('node:dgram').createSocket('udp4');
       s.on('message', (m, r) => console.log(r.address + ' ' + m.toString()));
       s.bind(${port}, '${addr}', () => console.log('listening'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(child);
  const seen = await linesAfterListening(child, 'UDP listener');
  return seen;
}

/** A veth between the host ns (`<net>.1` on `ifname`) and `up` (`<net>.2`), which routes the VM network back via the host. */
async function uplink(host: string, up: string, ifname: string, net: string): Promise<void> {
  await ipn(host, 'link', 'add', ifname, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', up);
  await ipn(host, 'addr', 'add', `${net}.1/24`, 'dev', ifname);
  await ipn(host, 'link', 'set', ifname, 'up');
  await ipn(up, 'addr', 'add', `${net}.2/24`, 'dev', 'eth0');
  await ipn(up, 'link', 'set', 'eth0', 'up');
  await ipn(up, 'route', 'add', '10.77.0.0/24', 'via', `${net}.1`);
}

/**
 * host ns (banger's bridge, policy) between "guest" namespaces on the bridge and an "upstream" ns.
 * Each guest is a veth pair: its bridge end carries the guest's TAP name (the pins key on the
 * ingress port's name), its other end is the guest's NIC with the MAC banger leases for its IP.
 * Upstream routes the VM network back via the host, so without banger's tables plain forwarding
 * works: a refused connection proves the drop, and seeing the host's address proves NAT.
 */
async function topology(bridge: string, firewall: 'nft' | 'iptables', guestIps: string[]) {
  const host = await newNs('host');
  const up = await newNs('up');
  const ops = new PrivilegedOps({ runner, netns: host, firewall });
  await ops.ensureBridge(bridge, '10.77.0.1/24');
  const guests: Guest[] = [];
  for (const [i, ip] of guestIps.entries()) {
    const ns = await newNs('vm');
    const tap = `bg${bridge.slice(6)}.${i}`;
    const mac = macForIp(ip);
    await ipn(host, 'link', 'add', tap, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ipn(host, 'link', 'set', tap, 'master', bridge, 'up');
    await ipn(ns, 'link', 'set', 'eth0', 'address', mac);
    await ipn(ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0');
    await ipn(ns, 'link', 'set', 'eth0', 'up');
    await ipn(ns, 'route', 'add', 'default', 'via', '10.77.0.1');
    guests.push({ ns, tap, ip, mac });
  }
  await uplink(host, up, 'uplink0', '198.51.100');
  const bridgeMac = (JSON.parse((await ipn(host, '-j', 'link', 'show', 'dev', bridge)).stdout) as Array<{ address: string }>)[0]?.address as string;

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
  const seen = await linesAfterListening(server, 'upstream server');

  /** Connects from a guest with its kernel's stack; resolves to the address upstream saw, or undefined when it cannot connect. */
  const connectFrom = async (g: Guest): Promise<string | undefined> => {
    const script = `const s = require('node:net').connect({ host: '198.51.100.2', port: 8080 });
      let out = ''; s.setTimeout(1500, () => process.exit(3));
      s.on('data', (d) => (out += d)); s.on('end', () => { process.stdout.write(out.trim()); process.exit(0); });
      s.on('error', () => process.exit(4));`;
    const r = await inNs(g.ns, process.execPath, ['-e', script], { allowFailure: true, timeoutMs: 10_000 });
    return r.code === 0 ? r.stdout : undefined;
  };

  /**
   * Sends crafted frames from a guest's NIC. Every sender is pinned to CPU 0: frames then go
   * through one per-CPU backlog queue in the order they were sent, so a later frame seen at the
   * far end proves an earlier one was already forwarded or dropped (no waiting on a clock).
   */
  const send = async (g: Guest, frames: object[]) => {
    await runner.run('taskset', ['-c', '0', 'ip', 'netns', 'exec', g.ns, 'python3', '-c', FRAME_SENDER, JSON.stringify({ dev: 'eth0', frames })]);
  };
  const udp = (g: Guest, o: { srcMac?: string; srcIp?: string; dstIp: string; dport: number; payload: string }) => ({
    kind: 'udp',
    src_mac: o.srcMac ?? g.mac,
    dst_mac: bridgeMac,
    src_ip: o.srcIp ?? g.ip,
    dst_ip: o.dstIp,
    dport: o.dport,
    payload: o.payload,
  });
  return { host, up, ops, guests, bridgeMac, connectFrom, seen, send, udp };
}

const masqueradeCount = async (host: string, bridge = 'banger0') =>
  ((await inNs(host, 'nft', ['list', 'table', 'inet', bridge])).stdout.match(/\bmasquerade\b/g) ?? []).length;

const sysctl = async (ns: string, key: string) => (await inNs(ns, 'sysctl', ['-n', key])).stdout.trim();
const pinOf = (g: Guest, nat: boolean) => ({ tap: g.tap, mac: g.mac, ip: g.ip, nat });

test('NAT (nftables): masquerades NAT VMs by their TAP, drops the rest, idempotent, removable; forwarding on only while needed', {
  skip: nftSkip,
}, async () => {
  const { host, ops, guests, connectFrom, seen } = await topology('banger0', 'nft', ['10.77.0.2']);
  const [vm] = guests as [Guest];
  const policy = (pins: ReturnType<typeof pinOf>[]) => ({ bridge: 'banger0', cidr: '10.77.0.0/24', pins });
  assert.equal(await sysctl(host, 'net.ipv4.ip_forward'), '0', 'a fresh namespace starts without forwarding');

  await ops.applyPolicy(policy([pinOf(vm, true)]));
  assert.equal(await sysctl(host, 'net.ipv4.ip_forward'), '1', 'banger turned forwarding on for NAT');
  assert.equal(await connectFrom(vm), '198.51.100.1', 'upstream sees the host side address: masqueraded');
  assert.deepEqual(seen, ['198.51.100.1']);
  assert.deepEqual(await ops.currentNatIps('banger0'), ['10.77.0.2']);

  await ops.applyPolicy(policy([pinOf(vm, true)]));
  assert.equal(await masqueradeCount(host), 1);
  const tables = (await inNs(host, 'nft', ['list', 'tables'])).stdout;
  assert.equal(tables.match(/table inet banger0\b/g)?.length, 1);
  assert.equal(tables.match(/table bridge banger0\b/g)?.length, 1);

  // NAT for another VM only (on another TAP): this VM's forwarded traffic is dropped.
  await ops.applyPolicy(policy([pinOf(vm, false), { tap: 'bg0.7', mac: macForIp('10.77.0.9'), ip: '10.77.0.9', nat: true }]));
  assert.deepEqual(await ops.currentNatIps('banger0'), ['10.77.0.9']);
  assert.equal(await connectFrom(vm), undefined);

  await ops.applyPolicy(policy([pinOf(vm, false)]));
  assert.deepEqual(await ops.currentNatIps('banger0'), []);
  assert.equal(await sysctl(host, 'net.ipv4.ip_forward'), '0', 'no NAT VM left: forwarding restored to what it was');
  assert.equal(await connectFrom(vm), undefined);
  assert.equal(await masqueradeCount(host), 1, 'the rule stays, its set is empty');
  assert.equal(seen.length, 1, 'upstream never saw the dropped attempts');

  await ops.applyPolicy(policy([pinOf(vm, true)]));
  assert.equal(await connectFrom(vm), '198.51.100.1');

  await ops.removePolicy('banger0');
  await ops.removePolicy('banger0');
  assert.doesNotMatch((await inNs(host, 'nft', ['list', 'tables'])).stdout, /banger/);
  assert.deepEqual(await ops.currentNatIps('banger0'), []);
  assert.equal(await sysctl(host, 'net.ipv4.ip_forward'), '0');
  // Control: with forwarding on and no banger table, plain routing (neither NAT nor drop).
  await inNs(host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  assert.equal(await connectFrom(vm), '10.77.0.2', 'with no banger table, plain routing: neither NAT nor drop');
});

test("NAT (iptables fallback): same behaviour with tagged rules in the bridge's own chains", { skip: iptSkip }, async () => {
  const { host, ops, guests, connectFrom } = await topology('banger0', 'iptables', ['10.77.0.2']);
  const [vm] = guests as [Guest];
  const policy = (nat: boolean) => ({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(vm, nat)] });
  await ops.applyPolicy(policy(true));
  await ops.applyPolicy(policy(true));
  assert.equal(await connectFrom(vm), '198.51.100.1');
  assert.deepEqual(await ops.currentNatIps('banger0'), ['10.77.0.2']);
  const nat = (await inNs(host, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout;
  assert.equal(nat.match(/MASQUERADE/g)?.length, 1, nat);
  assert.equal(nat.match(/-A POSTROUTING .*-j BGNAT-banger0/g)?.length, 1, nat);
  const filter = (await inNs(host, 'iptables', ['-w', '-S'])).stdout;
  assert.equal(filter.match(/-A FORWARD .*-j BGFWD-banger0/g)?.length, 1, filter);
  for (const line of [...nat.split('\n'), ...filter.split('\n')].filter((l) => l.startsWith('-A'))) {
    assert.match(line, /--comment "?banger:banger0/);
  }

  await ops.applyPolicy(policy(false));
  assert.equal(await connectFrom(vm), undefined);
  assert.deepEqual(await ops.currentNatIps('banger0'), []);
  assert.equal(await sysctl(host, 'net.ipv4.ip_forward'), '0');

  await ops.removePolicy('banger0');
  await ops.removePolicy('banger0');
  const left = (await inNs(host, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout + (await inNs(host, 'iptables', ['-w', '-S'])).stdout;
  assert.doesNotMatch(left, /banger|BG(NAT|FWD)/i);
  await inNs(host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  assert.equal(await connectFrom(vm), '10.77.0.2', 'with no banger rules, plain routing: neither NAT nor drop');
});

for (const firewall of ['nft', 'iptables'] as const) {
  const fwSkip = firewall === 'nft' ? nftSkip : iptSkip || requires(sbin('ebtables'), 'requires ebtables (the fallback pins TAPs with it)');
  test(`spoofing (${firewall}): a guest using another guest's IP or MAC gets nothing out, and cannot take its IP by ARP`, {
    skip: fwSkip || python,
  }, async () => {
    const t = await topology('banger0', firewall, ['10.77.0.2', '10.77.0.3']);
    const [a, b] = t.guests as [Guest, Guest];
    const upstream = await udpListener(t.up, '198.51.100.2', 9999);
    const atHost = await udpListener(t.host, '10.77.0.1', 9998);
    await inNs(t.host, 'sysctl', ['-qw', 'net.ipv4.neigh.banger0.locktime=0']);
    let token = 0;
    /** A's own datagram to upstream, sent after the frames under test and waited for (CPU-0 ordering). */
    const upstreamBarrier = async () => {
      const p = `barrier-${token++}`;
      await t.send(a, [t.udp(a, { dstIp: '198.51.100.2', dport: 9999, payload: p })]);
      await waitFor(`upstream to receive ${p}`, () => upstream.some((l) => l.endsWith(` ${p}`)));
      return upstream.find((l) => l.endsWith(` ${p}`)) as string;
    };
    /** B's own datagram to the host, after B's frames under test. */
    const hostBarrier = async () => {
      const p = `barrier-${token++}`;
      await t.send(b, [t.udp(b, { dstIp: '10.77.0.1', dport: 9998, payload: p })]);
      await waitFor(`the host to receive ${p}`, () => atHost.some((l) => l === `10.77.0.3 ${p}`));
    };
    const hostNeighMac = async (ip: string) => {
      const r = await ipn(t.host, '-j', 'neigh', 'show', ip, 'dev', 'banger0');
      return (JSON.parse(r.stdout || '[]') as Array<{ lladdr?: string }>)[0]?.lladdr;
    };
    /** The host has a (non-permanent, so updatable) ARP entry for A, as after talking to it. */
    const learnA = () => ipn(t.host, 'neigh', 'replace', a.ip, 'lladdr', a.mac, 'dev', 'banger0', 'nud', 'reachable');
    /** B claims A's address: an ARP reply "A's IP is at B's MAC", sent to the host. */
    const arpClaim = { kind: 'arp', op: 2, src_mac: b.mac, dst_mac: t.bridgeMac, sha: b.mac, spa: a.ip, tha: t.bridgeMac, tpa: '10.77.0.1' };

    // Positive control, no banger tables: the hostile frames do what they are meant to.
    await inNs(t.host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    await t.send(b, [t.udp(b, { srcIp: a.ip, dstIp: '198.51.100.2', dport: 9999, payload: 'control-spoof' })]);
    await upstreamBarrier();
    assert.ok(upstream.includes('10.77.0.2 control-spoof'), `without pins B's spoofed datagram leaves: ${upstream.join(' | ')}`);
    await learnA();
    assert.equal(await hostNeighMac(a.ip), a.mac);
    await t.send(b, [arpClaim]);
    await hostBarrier();
    assert.equal(await hostNeighMac(a.ip), b.mac, "without pins B takes A's address in the host's ARP cache");
    await inNs(t.host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=0']);
    await ipn(t.host, 'neigh', 'flush', 'dev', 'banger0');
    upstream.length = 0;

    // banger's policy: A has NAT, B has not.
    await t.ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(a, true), pinOf(b, false)] });
    await t.send(b, [
      t.udp(b, { srcIp: a.ip, dstIp: '198.51.100.2', dport: 9999, payload: 'spoof-ip' }),
      t.udp(b, { srcIp: a.ip, srcMac: a.mac, dstIp: '198.51.100.2', dport: 9999, payload: 'spoof-ip-and-mac' }),
      t.udp(b, { srcMac: a.mac, dstIp: '10.77.0.1', dport: 9998, payload: 'spoof-mac-to-host' }),
      t.udp(b, { srcIp: '10.77.0.99', dstIp: '10.77.0.1', dport: 9998, payload: 'spoof-free-ip-to-host' }),
      t.udp(b, { dstIp: '198.51.100.2', dport: 9999, payload: 'b-own-address' }),
    ]);
    assert.equal(await upstreamBarrier(), `198.51.100.1 barrier-${token - 1}`, 'A, a NAT VM, still gets out, masqueraded');
    await hostBarrier();
    assert.deepEqual(
      upstream.filter((l) => !/ barrier-\d+$/.test(l)),
      [],
      'nothing B sent reached upstream, spoofed or not',
    );
    assert.deepEqual(
      atHost.filter((l) => /spoof/.test(l)),
      [],
      "the host received none of B's spoofed datagrams",
    );
    assert.ok(atHost.includes(`10.77.0.3 barrier-${token - 1}`), 'B still reaches the host with its own address');

    await learnA();
    assert.equal(await hostNeighMac(a.ip), a.mac);
    await t.send(b, [arpClaim, { ...arpClaim, src_mac: a.mac }]);
    await hostBarrier();
    assert.equal(await hostNeighMac(a.ip), a.mac, "B's ARP claim on A's address was dropped");
    assert.equal(await t.connectFrom(a), '198.51.100.1', "A's own stack still works through NAT");
    assert.equal(await t.connectFrom(b), undefined, 'B has no NAT');
  });
}

// ---- two daemons on one host ------------------------------------------------------------------

test('two daemons on two bridges in one namespace keep their own TAPs, tables and NAT across restarts of either', { skip: nftSkip }, async () => {
  const ns = await newNs('two');
  const daemon = async (bridge: string, cidr: string, gw: string) => {
    const ops = new PrivilegedOps({ runner, netns: ns, firewall: 'nft' });
    await ops.ensureBridge(bridge, `${gw}/24`);
    const pool = new TapPool({ ops, bridge, size: 2 });
    return { ops, pool, bridge, cidr };
  };
  // A table left by banger before tables were per bridge, for banger1's VMs: only banger1's daemon may remove it.
  await inNs(ns, 'nft', ['-f', '-'], { input: 'table inet banger {\n  comment "banger: NAT for VMs on banger1 (10.78.0.0/24); rebuilt by bangerd"\n}\n' });
  const a = await daemon('banger0', '10.77.0.0/24', '10.77.0.1');
  const b = await daemon('banger1', '10.78.0.0/24', '10.78.0.1');
  await a.pool.reconcile(new Set());
  await b.pool.reconcile(new Set());
  const tapA = await a.pool.acquire();
  const tapB = await b.pool.acquire();
  await a.pool.settled();
  await b.pool.settled();
  const pinA = { tap: tapA, mac: macForIp('10.77.0.2'), ip: '10.77.0.2', nat: true };
  const pinB = { tap: tapB, mac: macForIp('10.78.0.2'), ip: '10.78.0.2', nat: true };
  await a.ops.applyPolicy({ bridge: 'banger0', cidr: a.cidr, pins: [pinA] });
  assert.match((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /table inet banger\n/, "banger0's daemon left banger1's legacy table alone");
  await b.ops.applyPolicy({ bridge: 'banger1', cidr: b.cidr, pins: [pinB] });
  assert.doesNotMatch((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /table inet banger\n/, "banger1's daemon replaced its own legacy table");

  const tapsOf = async (bridge: string) => (await runner.run('ip', ['-n', ns, '-j', 'link', 'show', 'master', bridge])).stdout;
  const stateOf = async (bridge: string) => ({
    inet: (await inNs(ns, 'nft', ['list', 'table', 'inet', bridge])).stdout,
    bridge: (await inNs(ns, 'nft', ['list', 'table', 'bridge', bridge])).stdout,
    taps: await tapsOf(bridge),
    listed: await a.ops.listTaps(bridge),
  });
  const before = { a: await stateOf('banger0'), b: await stateOf('banger1') };
  assert.equal(before.a.listed.length, 3);
  assert.equal(before.b.listed.length, 3);
  assert.ok(before.a.listed.every((t) => t.startsWith('bg0.')) && before.b.listed.every((t) => t.startsWith('bg1.')), JSON.stringify(before));
  assert.match(before.a.bridge, new RegExp(`"${tapA.replace('.', '\\.')}" \\. 52:54:00:4d:00:02 \\. 10\\.77\\.0\\.2`));
  assert.match(before.b.bridge, new RegExp(`"${tapB.replace('.', '\\.')}" \\. 52:54:00:4e:00:02 \\. 10\\.78\\.0\\.2`));
  assert.equal(await sysctl(ns, 'net.ipv4.ip_forward'), '1');

  // Restart A twice (fresh ops and pool adopting the host, as bangerd does at start), with NAT off: B is untouched.
  for (let i = 0; i < 2; i++) {
    const again = await daemon('banger0', '10.77.0.0/24', '10.77.0.1');
    await again.pool.reconcile(new Set([tapA]));
    await again.ops.applyPolicy({ bridge: 'banger0', cidr: again.cidr, pins: [{ ...pinA, nat: false }] });
    await again.pool.settled();
    assert.deepEqual(await stateOf('banger1'), before.b, "banger1's daemon's TAPs and tables are untouched by a restart of banger0's");
  }
  assert.equal(await sysctl(ns, 'net.ipv4.ip_forward'), '1', 'B still has a NAT VM: forwarding stays on');
  assert.deepEqual(await a.ops.currentNatIps('banger0'), []);
  assert.deepEqual(await b.ops.currentNatIps('banger1'), ['10.78.0.2']);

  // Restart B: A's state is untouched too.
  const aState = await stateOf('banger0');
  const b2 = await daemon('banger1', '10.78.0.0/24', '10.78.0.1');
  await b2.pool.reconcile(new Set([tapB]));
  await b2.ops.applyPolicy({ bridge: 'banger1', cidr: b2.cidr, pins: [pinB] });
  await b2.pool.settled();
  assert.deepEqual(await stateOf('banger0'), aState);
  assert.deepEqual(await stateOf('banger1'), before.b);

  // A's daemon cannot delete B's TAPs, and removing A's policy leaves B's.
  await assert.rejects(a.ops.deleteTap(tapB, 'banger0'), rejectsWith('bad_request'));
  await a.ops.removePolicy('banger0');
  assert.deepEqual(await stateOf('banger1'), before.b);
  assert.equal(await sysctl(ns, 'net.ipv4.ip_forward'), '1');
  // The last NAT VM in the namespace goes: banger turned forwarding on here, so it restores 0.
  await b.ops.applyPolicy({ bridge: 'banger1', cidr: b.cidr, pins: [{ ...pinB, nat: false }] });
  assert.equal(await sysctl(ns, 'net.ipv4.ip_forward'), '0');
  assert.doesNotMatch((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /banger_ip_forward_was_0/);
});

test('ip_forward: a host that had forwarding on keeps it when the last NAT VM goes', { skip: nftSkip }, async () => {
  const ns = await newNs('fwd');
  const ops = new PrivilegedOps({ runner, netns: ns, firewall: 'nft' });
  await inNs(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  await ops.ensureBridge('banger0', '10.77.0.1/24');
  const pin = { tap: 'bg0.0', mac: macForIp('10.77.0.2'), ip: '10.77.0.2', nat: true };
  await ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pin] });
  assert.doesNotMatch((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /banger_ip_forward_was_0/, 'no marker: banger did not turn it on');
  await ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [{ ...pin, nat: false }] });
  await ops.removePolicy('banger0');
  assert.equal(await sysctl(ns, 'net.ipv4.ip_forward'), '1');
});

test('a second daemon on the same bridge (same namespace) is refused before it touches the host', { skip: nftSkip }, async () => {
  const ns = await newNs('lock');
  // The "other daemon": a process holding banger0's claim for this namespace.
  const holder = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { BridgeLock } = await import(${JSON.stringify(new URL('../../src/host/bridge-lock.js', import.meta.url).href)});
       await BridgeLock.acquire('banger0', ${JSON.stringify(ns)}); console.log('held'); setInterval(() => {}, 1 << 30);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(holder);
  await new Promise<void>((resolve, reject) => {
    holder.stdout?.on('data', (b: Buffer) => b.toString().includes('held') && resolve());
    holder.once('exit', (code) => reject(new Error(`lock holder exited with ${code}`)));
  });
  const config = parseConfig('bridge_name = "banger0"\ncidr = "10.77.0.0/24"\nbridge_ip = "10.77.0.1"\n', 'test-config.toml');
  const ops = new PrivilegedOps({ runner, netns: ns, firewall: 'nft' });
  const log = pino({ level: 'silent' });
  const fakeDns: DnsRecords = { set: () => {}, remove: () => {}, replaceAll: () => {} };
  // Fakes for the store: the claim must fail before any of them is read.
  const fakeLeases = { pins: () => assert.fail('the store was read') } as unknown as LeaseRepo;
  const fakeRepos = { vms: { all: () => assert.fail('the store was read') } } as unknown as Repos;
  const clock = { now: () => new Date() };
  const net = new NetworkService({ ops, leases: fakeLeases, repos: fakeRepos, config, clock, log, dns: fakeDns });
  const refused = rejectsWith('conflict', new RegExp(`bridge banger0 is already used by another bangerd \\(pid ${holder.pid}\\)`));
  await assert.rejects(net.ensureHost(), (e) => refused(e) && /bridge_name/.test((e as BangerError).fix ?? ''));
  await assert.rejects(net.applyNat(), refused);
  assert.equal(await linkJson(ns, 'banger0'), undefined, 'the refused daemon created no bridge');
  assert.doesNotMatch((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /banger/, 'and no table');

  // Another bridge, or the same name in another namespace, is free.
  const other = await BridgeLock.acquire('banger1', ns);
  const elsewhere = await BridgeLock.acquire('banger0', `${ns}-elsewhere`);
  other.release();
  elsewhere.release();

  // The holder dies: the kernel frees the claim, and this daemon proceeds.
  const exited = new Promise((r) => holder.once('exit', r));
  holder.kill('SIGKILL');
  await exited;
  const fakeReposEmpty = { vms: { all: () => [] } } as unknown as Repos;
  const fakeLeasesEmpty = { pins: () => [] } as unknown as LeaseRepo;
  const net2 = new NetworkService({ ops, leases: fakeLeasesEmpty, repos: fakeReposEmpty, config, clock, log, dns: fakeDns });
  await net2.ensureHost();
  assert.equal((await linkJson(ns, 'banger0'))?.ifalias, OWNER_ALIAS);
  assert.match((await inNs(ns, 'nft', ['list', 'tables'])).stdout, /table bridge banger0/);
  await net2.close();
  (await net2.claim()).release();
});

/** Sends one UDP datagram from inside `ns` with its kernel's stack (the real routing and nat hooks). */
const udpSend = (ns: string, ip: string, port: number, payload: string) =>
  inNs(ns, process.execPath, [
    '-e',
    `const s = require('node:dgram').createSocket('udp4'); s.send(${JSON.stringify(payload)}, ${port}, '${ip}', (e) => { s.close(); process.exit(e ? 1 : 0); });`,
  ]);

const until = async (what: string, cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(cond(), what);
};

for (const firewall of ['nft', 'iptables'] as const) {
  test(`DNS redirect (${firewall}): bridge_ip:53 from a guest and from the host reaches the daemon's unprivileged port; gone with the policy`, {
    skip: firewall === 'nft' ? nftSkip : iptSkip,
  }, async () => {
    const { host, ops, guests } = await topology('banger0', firewall, ['10.77.0.2']);
    const [vm] = guests as [Guest];
    const seen = await udpListener(host, '10.77.0.1', 42053);
    await ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(vm, false)], dns: { ip: '10.77.0.1', port: 42053 } });
    await ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(vm, false)], dns: { ip: '10.77.0.1', port: 42053 } });

    await udpSend(vm.ns, '10.77.0.1', 53, 'from-guest');
    await until('the guest query to :53 reached port 42053', () => seen.includes('10.77.0.2 from-guest'));
    await udpSend(host, '10.77.0.1', 53, 'from-host');
    await until('the host query to :53 reached port 42053', () => seen.some((l) => l.endsWith(' from-host')));

    await ops.removePolicy('banger0');
    await udpSend(vm.ns, '10.77.0.1', 53, 'after-removal');
    // A datagram sent straight to the port afterwards orders the two: once it is seen, the first was not redirected.
    await udpSend(vm.ns, '10.77.0.1', 42053, 'marker');
    await until('the marker arrived', () => seen.includes('10.77.0.2 marker'));
    assert.ok(!seen.some((l) => l.endsWith(' after-removal')), `no redirect once the policy is removed: ${seen.join(', ')}`);
    const left = firewall === 'nft' ? (await inNs(host, 'nft', ['list', 'ruleset'])).stdout : (await inNs(host, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout;
    assert.doesNotMatch(left, /BGDNS|dnat/i, left);
  });
}

/** The namespace's NAT rules as text, to compare before and after a refused policy. */
const natRules = async (ns: string, firewall: 'nft' | 'iptables') =>
  firewall === 'nft' ? (await inNs(ns, 'nft', ['list', 'ruleset'])).stdout : (await inNs(ns, 'iptables', ['-w', '-t', 'nat', '-S'])).stdout;

for (const firewall of ['nft', 'iptables'] as const) {
  test(`DNS redirect (${firewall}): only of the bridge's own address, only for packets arriving on the bridge; any other network or address is refused`, {
    skip: firewall === 'nft' ? nftSkip : iptSkip,
  }, async () => {
    const { host, ops, guests } = await topology('banger0', firewall, ['10.77.0.2']);
    const [vm] = guests as [Guest];
    const atDaemonPort = await udpListener(host, '10.77.0.1', 42053);
    // Another private network on the host with a resolver banger must never capture (libvirt's, a LAN one).
    await plainLink(host, 'virbr9');
    await ipn(host, 'addr', 'add', '192.168.122.1/24', 'dev', 'virbr9');
    await ipn(host, 'link', 'set', 'virbr9', 'up');
    if (firewall === 'iptables') {
      // The jump an earlier bangerd inserted: into the DNS chain from every interface.
      await inNs(host, 'iptables', ['-w', '-t', 'nat', '-N', 'BGDNS-banger0']);
      await inNs(host, 'iptables', ['-w', '-t', 'nat', '-I', 'PREROUTING', '1', '-m', 'comment', '--comment', 'banger:banger0', '-j', 'BGDNS-banger0']);
    }
    await ops.applyPolicy({ bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(vm, false)], dns: { ip: '10.77.0.1', port: 42053 } });
    const before = await natRules(host, firewall);
    if (firewall === 'nft') {
      assert.match(before, /chain dns_prerouting \{[^}]*iifname "banger0" ip daddr 10\.77\.0\.1 /, before);
    } else {
      assert.match(before, /^-A PREROUTING -i banger0 -m comment --comment "?banger:banger0"? -j BGDNS-banger0$/m, before);
      assert.doesNotMatch(before, /^-A PREROUTING -m comment --comment "?banger:banger0"? -j BGDNS/m, "an earlier version's unrestricted jump is gone");
    }

    const refusals: Array<[object, RegExp]> = [
      [
        { cidr: '192.168.122.0/24', pins: [], dns: { ip: '192.168.122.1', port: 42053 } },
        /192\.168\.122\.0\/24 is not the network of the bridge's address \(10\.77\.0\.1\/24\)/,
      ],
      [{ cidr: '192.168.122.0/24', pins: [] }, /not the network of the bridge's address/],
      [{ cidr: '10.77.0.0/16', pins: [], dns: { ip: '10.77.0.1', port: 42053 } }, /10\.77\.0\.0\/16 is not the network/],
      [
        { cidr: '10.77.0.0/24', pins: [pinOf(vm, false)], dns: { ip: '10.77.0.2', port: 42053 } },
        /DNS of 10\.77\.0\.2: it is not banger0's address \(10\.77\.0\.1\)/,
      ],
    ];
    for (const [p, re] of refusals) {
      await assert.rejects(ops.applyPolicy({ bridge: 'banger0', ...(p as { cidr: string; pins: [] }) }), rejectsWith('conflict', re), JSON.stringify(p));
      assert.equal(await natRules(host, firewall), before, `the ruleset is unchanged after ${JSON.stringify(p)}`);
    }

    // A packet to port 53 of the bridge address arriving on another interface is not redirected.
    const up = await newNs('up2');
    await uplink(host, up, 'uplink9', '203.0.113');
    const fromOutside = await udpListener(host, '10.77.0.1', 53);
    await udpSend(up, '10.77.0.1', 53, 'from-outside');
    await until('the outside query reached port 53 itself, not the redirect', () => fromOutside.includes('203.0.113.2 from-outside'));
    assert.ok(!atDaemonPort.some((l) => l.endsWith(' from-outside')), atDaemonPort.join(', '));
  });
}

test('DNS redirect: refused while another uid holds the DNS port (no DNAT installed); accepted once the expected uid holds it', {
  skip: nftSkip || requires(sbin('setpriv'), 'requires setpriv (util-linux) to start the squatter as another uid'),
}, async () => {
  const { host, ops, guests } = await topology('banger0', 'nft', ['10.77.0.2']);
  const [vm] = guests as [Guest];
  const policy = { bridge: 'banger0', cidr: '10.77.0.0/24', pins: [pinOf(vm, false)], dns: { ip: '10.77.0.1', port: 42053 } };
  // Nobody listens yet: refused, the policy is not installed with a redirect.
  await assert.rejects(ops.applyPolicy(policy), rejectsWith('precondition_failed', /no UDP socket of uid 0 is bound to 10\.77\.0\.1:42053/));
  assert.doesNotMatch(await natRules(host, 'nft'), /dnat/);

  // Another local user (nobody, 65534) squats the port before the daemon.
  const squatter = spawn(
    'ip',
    [
      'netns',
      'exec',
      host,
      'setpriv',
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      process.execPath,
      '-e',
      `const s = require('node:dgram').createSocket('udp4');
       s.on('message', (m, r) => console.log(r.address + ' ' + m.toString()));
       s.bind(42053, '10.77.0.1', () => console.log('listening'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(squatter);
  const squatted = await linesAfterListening(squatter, 'squatter');
  await assert.rejects(ops.applyPolicy(policy), (e) => {
    rejectsWith('conflict', /port 42053: udp 10\.77\.0\.1:42053 is held by uid 65534, not by bangerd's user \(uid 0\)/)(e);
    assert.match((e as BangerError).fix ?? '', /bridge_dns_port/);
    return true;
  });
  assert.doesNotMatch(await natRules(host, 'nft'), /dnat/, 'no DNAT rule was installed');
  // The squatter gets nothing: a guest query to :53 is not redirected to it (the marker to 42053 orders the two).
  await udpSend(vm.ns, '10.77.0.1', 53, 'guest-query');
  await udpSend(vm.ns, '10.77.0.1', 42053, 'marker');
  await until('the marker reached the squatter', () => squatted.includes('10.77.0.2 marker'));
  assert.ok(!squatted.some((l) => l.endsWith(' guest-query')), squatted.join(', '));

  // The squatter goes; the expected uid (root, this process's) binds the port: accepted, and redirected.
  const gone = new Promise((r) => squatter.once('exit', r));
  squatter.kill('SIGKILL');
  await gone;
  const seen = await udpListener(host, '10.77.0.1', 42053);
  await ops.applyPolicy(policy);
  assert.match(await natRules(host, 'nft'), /dnat ip to 10\.77\.0\.1:42053/);
  await udpSend(vm.ns, '10.77.0.1', 53, 'redirected');
  await until('the guest query reached the daemon port', () => seen.includes('10.77.0.2 redirected'));
});
