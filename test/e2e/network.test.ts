import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Vm } from '../../src/api/schemas.js';
import { guestAssets, ROOT, runProcess, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * Networking on real VMs. Everything runs inside the test home's own network namespace (the
 * daemon, its bridge, TAPs, NAT rules and DNS listener), plus a second namespace standing in for
 * an upstream host. No packet leaves those namespaces.
 */
const assets = guestAssets();
const UPSTREAM_NS_IP = '192.0.2.1';
const HOST_UPLINK_IP = '192.0.2.2';

describe('VM networking', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let upstream: string;
  let server: Promise<unknown> | undefined;

  /**
   * Resolves `<name>` through banger's DNS listener inside the namespace (dns-packet over UDP). Like
   * a resolver, it resends the query every second while no answer came (a busy daemon is slow, not
   * wrong); the 60 s bound only keeps a dead listener from hanging the test.
   */
  const resolve = async (name: string, type = 'A') => {
    const script = `
      const dgram = require('node:dgram'); const pkt = require(${JSON.stringify(join(ROOT, 'node_modules', 'dns-packet'))});
      const s = dgram.createSocket('udp4');
      s.on('message', (m) => { const r = pkt.decode(m); console.log(JSON.stringify({ rcode: r.rcode, answers: r.answers.map((a) => a.data) })); process.exit(0); });
      const query = pkt.encode({ type: 'query', id: 7, flags: pkt.RECURSION_DESIRED, questions: [{ type: ${JSON.stringify(type)}, name: ${JSON.stringify(name)} }] });
      let tries = 0;
      const send = () => { if (++tries > 60) process.exit(3); s.send(query, 42069, '127.0.0.1'); setTimeout(send, 1000); };
      send();`;
    const r = await home.exec(process.execPath, ['-e', script]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as { rcode: string; answers: string[] };
  };
  const sh = (vm: string, cmd: string) => home.banger(['vm', 'ssh', vm, '--', 'sh', '-c', cmd], 120_000);
  const nftMasquerades = async () => {
    const r = await home.exec('nft', ['list', 'table', 'inet', 'banger0']);
    return r.code === 0 ? (r.stdout.match(/masquerade/g) ?? []).length : -1;
  };

  before(async () => {
    home = await TestHome.create('accel = "tcg"\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = "512M"\n', { netns: true });
    const a = assets as NonNullable<typeof assets>;
    assert.equal((await home.banger(['kernel', 'import', 'k', '--from', a.kernelDir])).code, 0);
    assert.equal((await home.banger(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k'])).code, 0);
    // A fake upstream host: its own namespace, linked to the daemon's namespace by a veth pair.
    upstream = `${home.netns}-up`;
    for (const args of [
      ['netns', 'add', upstream],
      ['link', 'add', 'bgup0', 'netns', home.netns as string, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', upstream],
      ['-n', home.netns as string, 'addr', 'add', `${HOST_UPLINK_IP}/24`, 'dev', 'bgup0'],
      ['-n', home.netns as string, 'link', 'set', 'bgup0', 'up'],
      ['-n', upstream, 'addr', 'add', `${UPSTREAM_NS_IP}/24`, 'dev', 'eth0'],
      ['-n', upstream, 'link', 'set', 'eth0', 'up'],
      ['-n', upstream, 'link', 'set', 'lo', 'up'],
    ]) {
      const r = await runProcess('ip', args, {}, 10_000);
      assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
    }
  });

  after(async () => {
    await home?.destroy();
    if (upstream) await runProcess('ip', ['netns', 'del', upstream], {}, 10_000).catch(() => {});
    await server?.catch(() => {});
  });

  test('concurrent creates get distinct leases; names resolve through banger DNS', async () => {
    const [a, b] = await Promise.all([home.banger(['vm', 'create', '--name', 'neta', '--nat']), home.banger(['vm', 'create', '--name', 'netb'])]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const va = await home.json<Vm>(['vm', 'show', 'neta']);
    const vb = await home.json<Vm>(['vm', 'show', 'netb']);
    assert.ok(va.ip && vb.ip && va.ip !== vb.ip, `${va.ip} vs ${vb.ip}`);
    assert.equal(va.nat, true);
    assert.deepEqual((await resolve('neta.vm')).answers, [va.ip]);
    assert.deepEqual((await resolve('NETB.vm')).answers, [vb.ip]);
    assert.equal((await resolve('ghost.vm')).rcode, 'NXDOMAIN');
    const aaaa = await resolve('neta.vm', 'AAAA');
    assert.equal(aaaa.rcode, 'NOERROR');
    assert.deepEqual(aaaa.answers, []);
  });

  test('vm ssh runs commands, quotes argv and passes the exit code through', async () => {
    const r = await sh('neta', 'exit 42');
    assert.equal(r.code, 42, r.stderr);
    const echo = await home.banger(['vm', 'ssh', 'neta', '--', 'printf', '%s|', 'a b', "it's", '$HOME', '']);
    assert.equal(echo.code, 0, echo.stderr);
    assert.equal(echo.stdout, "a b|it's|$HOME||");
    const host = await sh('netb', 'hostname');
    assert.equal(host.stdout.trim(), 'netb');
  });

  test('the host reaches a VM over SSH at the address banger DNS gives, with host-key checking on', async () => {
    const ip = (await resolve('netb.vm')).answers[0] as string;
    const config = join(home.dir, 'state', 'ssh', 'config');
    const r = await home.exec('ssh', ['-F', config, '-o', `HostName=${ip}`, 'netb.vm', 'cat /etc/hostname']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'netb');
    assert.match(await import('node:fs/promises').then((f) => f.readFile(config, 'utf8')), /StrictHostKeyChecking yes/);
  });

  test('each VM has its own SSH host key: the one banger recorded is the one its sshd serves', async () => {
    const knownHosts = await import('node:fs/promises').then((f) => f.readFile(join(home.dir, 'state', 'ssh', 'known_hosts'), 'utf8'));
    const recorded = (alias: string) => {
      const line = knownHosts.split('\n').find((l) => l.startsWith(`${alias} `));
      assert.ok(line, `${alias} is in known_hosts:\n${knownHosts}`);
      const [, type, key] = line.split(' ');
      return { type: type as string, key: key as string };
    };
    const a = recorded('neta.vm');
    const b = recorded('netb.vm');
    assert.notEqual(a.key, b.key, 'two VMs of one image got the same host key');
    for (const [name, want] of [
      ['neta', a],
      ['netb', b],
    ] as const) {
      const ip = (await home.json<Vm>(['vm', 'show', name])).ip as string;
      const scan = await home.exec('ssh-keyscan', ['-T', '60', ip]);
      const served = scan.stdout.split('\n').find((l) => l.startsWith(`${ip} ${want.type} `));
      assert.equal(served?.split(' ')[2], want.key, `${name}'s sshd serves the key banger recorded for it (${scan.stderr})`);
    }
  });

  test('guests resolve each other by name', async () => {
    const r = await sh('neta', 'getent hosts netb.vm');
    assert.equal(r.code, 0, r.stderr);
    const vb = await home.json<Vm>(['vm', 'show', 'netb']);
    assert.match(r.stdout, new RegExp(`^${vb.ip?.replace(/\./g, '\\.')}\\s+netb\\.vm`, 'm'));
  });

  test('an HTTP server in the guest shows up in vm ports as a URL', async () => {
    // The test image has no HTTP server: copy the host's static busybox in and run its httpd.
    const config = join(home.dir, 'state', 'ssh', 'config');
    const cp = await home.exec('scp', ['-F', config, '-q', '/bin/busybox', 'netb.vm:/tmp/busybox']);
    assert.equal(cp.code, 0, cp.stderr);
    const start = await sh('netb', 'mkdir -p /tmp/www && echo hi > /tmp/www/index.html && /tmp/busybox httpd -p 8080 -h /tmp/www');
    assert.equal(start.code, 0, start.stderr);
    // httpd daemonizes: ask the guest itself when the socket listens (bounded only against a hang).
    const listening = await sh('netb', "for i in $(seq 600); do ss -Hltn 'sport = :8080' | grep -q . && exit 0; sleep 0.1; done; exit 1");
    assert.equal(listening.code, 0, `httpd never listened: ${listening.stderr}`);
    const ports = (await home.json<{ ports: Array<{ port: number; url?: string; endpoint?: string; proto: string }> }>(['vm', 'ports', 'netb'])).ports;
    const web = ports.find((p) => p.port === 8080);
    assert.equal(web?.url, 'http://netb.vm:8080/');
    assert.equal(web?.endpoint, 'netb.vm:8080');
    const ssh = ports.filter((p) => p.port === 22);
    assert.equal(ssh.length, 1, `dual-stack sshd collapses to one entry: ${JSON.stringify(ssh)}`);
    assert.equal(ssh[0]?.url, undefined);
  });

  test('NAT: the upstream host sees the masqueraded address; --nat off cuts the VM off', async () => {
    const listen = `
      const net = require('node:net');
      const s = net.createServer((c) => { console.log(c.remoteAddress); c.end(); });
      s.listen(9000, '${UPSTREAM_NS_IP}', () => console.log('listening'));
      setTimeout(() => process.exit(0), 600000);`;
    const seen: string[] = [];
    let firstSeen: (() => void) | undefined;
    const connectionSeen = new Promise<void>((r) => {
      firstSeen = r;
    });
    const { spawn } = await import('node:child_process');
    const child = spawn('ip', ['netns', 'exec', upstream, process.execPath, '-e', listen], { stdio: ['ignore', 'pipe', 'inherit'] });
    server = new Promise((r) => child.on('close', r));
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => {
        for (const line of d.toString().split('\n').filter(Boolean)) {
          if (line === 'listening') resolve();
          else {
            seen.push(line);
            firstSeen?.();
          }
        }
      }),
    );
    try {
      // A reachable upstream answers at once however slow the guest is: the 60 s only bounds a hang.
      // A blocked one never answers (its packets are dropped): 5 s of silence show that.
      const connect = (seconds: number) => `timeout ${seconds} bash -c 'exec 3<>/dev/tcp/${UPSTREAM_NS_IP}/9000'`;
      const ok = await sh('neta', connect(60));
      assert.equal(ok.code, 0, `NAT VM reaches upstream: ${ok.stderr}`);
      await connectionSeen; // the upstream's report of that connection (its stdout) arrives on its own time
      assert.deepEqual(seen, [HOST_UPLINK_IP], 'upstream saw the masqueraded source, not the VM address');
      const blocked = await sh('netb', connect(5));
      assert.notEqual(blocked.code, 0, 'a VM without NAT cannot reach beyond the host');
      assert.equal(await nftMasquerades(), 1);
      const off = await home.banger(['vm', 'set', 'neta', '--nat', 'off']);
      assert.equal(off.code, 0, off.stderr);
      const after = await sh('neta', connect(5));
      assert.notEqual(after.code, 0, 'after --nat off the VM is cut off');
      assert.equal(seen.length, 1);
      assert.equal((await home.banger(['vm', 'set', 'neta', '--nat', 'on'])).code, 0);
    } finally {
      child.kill();
    }
  });

  test('a daemon restart leaves exactly one rule set and every DNS record', async () => {
    assert.equal(await nftMasquerades(), 1);
    assert.equal((await home.banger(['daemon', 'restart'])).code, 0);
    assert.equal(await nftMasquerades(), 1);
    const va = await home.json<Vm>(['vm', 'show', 'neta']);
    const vb = await home.json<Vm>(['vm', 'show', 'netb']);
    assert.deepEqual((await resolve('neta.vm')).answers, [va.ip]);
    assert.deepEqual((await resolve('netb.vm')).answers, [vb.ip]);
  });

  test('a second daemon (another home, another bridge) runs its VM beside this one; restarting either disturbs neither; a third on the same bridge is refused', async () => {
    const a = assets as NonNullable<typeof assets>;
    const other = await TestHome.create(
      'accel = "tcg"\nbridge_name = "banger1"\nbridge_ip = "172.31.0.1"\ncidr = "172.31.0.0/24"\ndns_listen_addr = "127.0.0.1:42071"\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = "512M"\n',
      { sharedNetnsOf: home },
    );
    const same = await TestHome.create('accel = "tcg"\ndns_listen_addr = "127.0.0.1:42072"\n', { sharedNetnsOf: home });
    try {
      await other.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
      await other.ok(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k']);
      const c = await other.banger(['vm', 'create', '--name', 'other', '--nat']);
      assert.equal(c.code, 0, c.stderr);
      const tables = async () => (await home.exec('nft', ['list', 'tables'])).stdout;
      assert.match(await tables(), /inet banger0/);
      assert.match(await tables(), /inet banger1/);
      const ownRules = async (h: TestHome, bridge: string) => (await h.exec('nft', ['list', 'table', 'inet', bridge])).stdout;
      const before0 = await ownRules(home, 'banger0');
      const before1 = await ownRules(other, 'banger1');
      for (const restarted of [home, other]) {
        assert.equal((await restarted.banger(['daemon', 'restart'])).code, 0);
        assert.equal(await ownRules(home, 'banger0'), before0, 'banger0 rules unchanged');
        assert.equal(await ownRules(other, 'banger1'), before1, 'banger1 rules unchanged');
        const mine = await sh('neta', 'hostname');
        assert.equal(mine.stdout.trim(), 'neta', mine.stderr);
        const theirs = await other.banger(['vm', 'ssh', 'other', '--', 'hostname'], 120_000);
        assert.equal(theirs.stdout.trim(), 'other', theirs.stderr);
      }
      await same.ok(['kernel', 'import', 'k', '--from', a.kernelDir]);
      await same.ok(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k']);
      const refused = await same.banger(['vm', 'create', '--name', 'third']);
      assert.notEqual(refused.code, 0, 'a daemon on a bridge another daemon holds is refused');
      assert.match(refused.stderr, /bridge_name/);
      assert.equal(await ownRules(home, 'banger0'), before0, 'the refused daemon changed nothing');
      assert.equal((await other.banger(['vm', 'delete', 'other'])).code, 0);
    } finally {
      await same.destroy();
      await other.destroy();
    }
  });

  test('delete frees the lease, the TAP and the DNS record', async () => {
    const vb = await home.json<Vm>(['vm', 'show', 'netb']);
    assert.ok(vb.tap);
    assert.equal((await home.banger(['vm', 'delete', 'netb'])).code, 0);
    const links = await home.exec('ip', ['-o', 'link', 'show']);
    assert.doesNotMatch(links.stdout, new RegExp(`\\b${vb.tap}\\b`));
    assert.equal((await resolve('netb.vm')).rcode, 'NXDOMAIN');
    const c = await home.banger(['vm', 'create', '--name', 'netc', '--no-start']);
    assert.equal(c.code, 0, c.stderr);
    assert.equal((await home.json<Vm>(['vm', 'show', 'netc'])).ip, vb.ip, 'the freed address is reused');
    assert.equal(existsSync(join(home.dir, 'state', 'vms', vb.id)), false);
  });

  test('a bridge name or CIDR that would touch networking banger does not own is refused', async () => {
    const bad = await TestHome.create('bridge_name = "eth0"\n', { netns: true });
    try {
      const r = await bad.banger(['daemon', 'start']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /bridge_name/);
      assert.match(r.stderr, /banger only manages bridges it owns/);
    } finally {
      await bad.destroy();
    }
    const clash = await TestHome.create('accel = "tcg"\ncidr = "192.0.2.0/24"\nbridge_ip = "192.0.2.1"\n[vm_defaults]\ndisk_size = "512M"\n', { netns: true });
    try {
      const a = assets as NonNullable<typeof assets>;
      // The namespace already has 192.0.2.0/24 on a link banger does not own.
      await clash.exec('ip', ['link', 'add', 'other0', 'type', 'bridge']);
      await clash.exec('ip', ['addr', 'add', '192.0.2.10/24', 'dev', 'other0']);
      assert.equal((await clash.banger(['kernel', 'import', 'k', '--from', a.kernelDir])).code, 0);
      assert.equal((await clash.banger(['image', 'register', '--name', 'debian-bookworm', '--rootfs', a.rootfs, '--kernel-ref', 'k'])).code, 0);
      const r = await clash.banger(['vm', 'create', '--name', 'x']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /192\.0\.2\.0\/24|overlap/);
      assert.deepEqual((await clash.json<{ vms: Vm[] }>(['vm', 'list'])).vms, []);
    } finally {
      await clash.destroy();
    }
  });
});
