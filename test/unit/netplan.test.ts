import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import {
  assertDnsPortHeld,
  buildEbtablesRules,
  buildIptablesRules,
  buildNftRuleset,
  iptablesJumps,
  iptablesRestoreScript,
  iptablesStaleJumps,
  normaliseNat,
  normalisePolicy,
  parseMac,
  parseProcNetIpv4,
  tapName,
  tapNameRe,
  tapPrefix,
  validateBridgeName,
  validateOwnTapName,
  validateTapName,
} from '../../src/host/netplan.js';
import { allocateIp, cidrContains, cidrsOverlap, formatIpv4, macForIp, nthHost, parseCidr, parseIpv4 } from '../../src/util/ipv4.js';

const isCode = (code: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, String(e));
  assert.equal(e.code, code);
  if (re) assert.match(e.message, re);
  return true;
};

test('parseIpv4/formatIpv4 round-trip and reject malformed addresses', () => {
  for (const ip of ['0.0.0.0', '10.0.0.1', '172.30.0.255', '255.255.255.255']) assert.equal(formatIpv4(parseIpv4(ip)), ip);
  assert.equal(parseIpv4('10.0.0.1'), 0x0a000001);
  for (const bad of ['', '10.0.0', '10.0.0.256', '010.0.0.1', '1.2.3.4 ', 'a.b.c.d', '1.2.3.4/24', '::1']) {
    assert.throws(() => parseIpv4(bad), isCode('bad_request', /invalid IPv4 address/));
  }
});

test('parseCidr: network, broadcast, prefix bounds 8–30 by default', () => {
  const c = parseCidr('172.30.0.1/24');
  assert.equal(formatIpv4(c.address), '172.30.0.1');
  assert.equal(formatIpv4(c.network), '172.30.0.0');
  assert.equal(formatIpv4(c.broadcast), '172.30.0.255');
  assert.equal(formatIpv4(parseCidr('10.1.2.3/8').broadcast), '10.255.255.255');
  assert.throws(() => parseCidr('10.0.0.0/7'), isCode('bad_request', /prefix \/7; expected \/8 to \/30/));
  assert.throws(() => parseCidr('10.0.0.0/31'), isCode('bad_request', /\/31/));
  assert.throws(() => parseCidr('10.0.0.0'), isCode('bad_request', /invalid IPv4 CIDR/));
  assert.throws(() => parseCidr('10.0.0.0/033'), isCode('bad_request'));
  assert.equal(parseCidr('0.0.0.0/0', { min: 0, max: 32 }).prefix, 0);
  assert.equal(formatIpv4(parseCidr('1.2.3.4/32', { min: 0, max: 32 }).broadcast), '1.2.3.4');
});

test('cidrContains and cidrsOverlap', () => {
  assert.equal(cidrContains('172.30.0.0/24', '172.30.0.200'), true);
  assert.equal(cidrContains('172.30.0.0/24', '172.30.1.0'), false);
  assert.equal(cidrsOverlap('10.0.0.0/8', '10.20.0.0/16'), true);
  assert.equal(cidrsOverlap('10.20.0.0/16', '10.0.0.0/8'), true);
  assert.equal(cidrsOverlap('172.30.0.0/24', '172.30.1.0/24'), false);
  assert.equal(cidrsOverlap('172.30.0.0/23', '172.30.1.7/32'), true);
  assert.equal(cidrsOverlap('192.168.0.0/30', '192.168.0.4/30'), false);
});

test('nthHost', () => {
  assert.equal(nthHost('172.30.0.0/24', 1), '172.30.0.1');
  assert.equal(nthHost('172.30.0.0/24', 254), '172.30.0.254');
  assert.throws(() => nthHost('172.30.0.0/24', 255), isCode('bad_request', /no host number 255/));
  assert.throws(() => nthHost('172.30.0.0/24', 0), isCode('bad_request'));
});

test('allocateIp: lowest free host, skipping network, gateway and broadcast', () => {
  assert.equal(allocateIp('172.30.0.0/24', '172.30.0.1', new Set()), '172.30.0.2');
  assert.equal(allocateIp('172.30.0.0/24', '172.30.0.5', new Set()), '172.30.0.1');
  assert.equal(allocateIp('172.30.0.0/24', '172.30.0.1', new Set(['172.30.0.2', '172.30.0.4'])), '172.30.0.3');
  // A /30 has two hosts; one is the gateway.
  assert.equal(allocateIp('10.9.0.0/30', '10.9.0.1', new Set()), '10.9.0.2');
  assert.throws(() => allocateIp('10.9.0.0/30', '10.9.0.1', new Set(['10.9.0.2'])), isCode('conflict', /no free IP address left in 10\.9\.0\.0\/30/));
  assert.throws(() => allocateIp('10.9.0.0/24', '10.9.1.1', new Set()), isCode('bad_request', /gateway 10\.9\.1\.1 is not a host address/));
  assert.throws(() => allocateIp('10.9.0.0/24', '10.9.0.0', new Set()), isCode('bad_request'));
});

test('macForIp: deterministic, locally administered, unique within a /8', () => {
  assert.equal(macForIp('172.30.0.2'), '52:54:00:1e:00:02');
  assert.equal(macForIp('10.255.1.254'), '52:54:00:ff:01:fe');
  assert.equal(macForIp('10.0.0.2'), macForIp('10.0.0.2'));
  const seen = new Set<string>();
  for (let i = 1; i < 255; i++) seen.add(macForIp(`10.1.0.${i}`));
  assert.equal(seen.size, 254);
});

test('name validation: only banger* bridges, and each bridge its own TAP names', () => {
  for (const ok of ['banger', 'banger0', 'banger-test_1', 'bangerabcdefghi']) assert.equal(validateBridgeName(ok), ok);
  for (const bad of ['eth0', 'docker0', 'br0', 'Banger0', 'banger0123456789', 'banger 0', 'banger/0', '']) {
    assert.throws(() => validateBridgeName(bad), isCode('bad_request', /refusing bridge name/));
  }
  assert.equal(tapPrefix('banger0'), 'bg0.');
  assert.equal(tapPrefix('banger'), 'bg.');
  for (const ok of ['bg0.0', 'bg0.123456']) assert.equal(validateTapName(ok, 'banger0'), ok);
  for (const bad of ['tap0', 'bg0.', 'bg0.1234567', 'bg0.x', 'bg0.01', 'bg1.0', 'bgtap0', 'eth0']) {
    assert.throws(() => validateTapName(bad, 'banger0'), isCode('bad_request'), bad);
  }
  // A legacy bgtap<N> may be touched (PrivilegedOps then checks it is on this bridge), never created.
  assert.equal(validateOwnTapName('bgtap3', 'banger0'), 'bgtap3');
  assert.throws(() => validateOwnTapName('bg1.3', 'banger0'), isCode('bad_request'));
  // Names fit IFNAMSIZ (15): a 9-character suffix leaves room for 3 digits, then no name is left.
  assert.equal(tapName('bangerabcdefghi', 999), 'bgabcdefghi.999');
  assert.equal(tapName('bangerabcdefghi', 999).length, 15);
  assert.throws(() => tapName('bangerabcdefghi', 1000), isCode('conflict', /no TAP name left/));
});

test('TAP names of different bridges never collide, not even as wildcard prefixes', () => {
  const bridges = ['banger', 'banger0', 'banger00', 'banger0t', 'banger0t1', 'banger1', 'bangerta', 'bangertap', 'banger-', 'banger_0'];
  const names = new Map<string, string>();
  for (const b of bridges) for (const n of [0, 1, 5, 12, 123]) names.set(tapName(b, n), b);
  for (const [name, owner] of names) {
    for (const b of bridges) {
      assert.equal(tapNameRe(b).test(name), b === owner, `${name} (of ${owner}) against ${b}'s names`);
      // nft's "prefix*" and ebtables' "prefix+" wildcards are prefix matches.
      assert.equal(name.startsWith(tapPrefix(b)), b === owner, `${name} (of ${owner}) against ${b}'s wildcard`);
    }
    assert.doesNotMatch(name, /^bgtap[0-9]+$/);
  }
});

test('parseMac: unicast only, lower case', () => {
  assert.equal(parseMac('52:54:00:1E:00:02'), '52:54:00:1e:00:02');
  for (const bad of ['ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:01', '00:00:00:00:00:00', '52:54:00:1e:00', '52-54-00-1e-00-02', '52:54:00:1e:00:02 ']) {
    assert.throws(() => parseMac(bad), isCode('bad_request'), bad);
  }
});

test('normalisePolicy: pins sorted by IP, NAT IPs from NAT pins, duplicates and foreign names refused', () => {
  const p = normalisePolicy({
    bridge: 'banger0',
    cidr: '172.30.0.1/24',
    pins: [
      { tap: 'bg0.1', mac: macForIp('172.30.0.9'), ip: '172.30.0.9', nat: true },
      { tap: 'bgtap4', mac: macForIp('172.30.0.3'), ip: '172.30.0.3', nat: false },
    ],
  });
  assert.equal(p.cidr, '172.30.0.0/24');
  assert.deepEqual(
    p.pins.map((x) => x.tap),
    ['bgtap4', 'bg0.1'],
  );
  assert.deepEqual(p.natIps, ['172.30.0.9']);
  const pin = (tap: string, ip: string, mac = macForIp(ip)) => ({ tap, mac, ip, nat: false });
  const policy = (...pins: ReturnType<typeof pin>[]) => ({ bridge: 'banger0', cidr: '172.30.0.0/24', pins });
  assert.throws(() => normalisePolicy(policy(pin('bg0.1', '172.30.0.2'), pin('bg0.2', '172.30.0.2'))), isCode('conflict'));
  assert.throws(() => normalisePolicy(policy(pin('bg0.1', '172.30.0.2'), pin('bg0.1', '172.30.0.3'))), isCode('conflict'));
  assert.throws(() => normalisePolicy(policy(pin('bg0.1', '172.30.0.2'), pin('bg0.2', '172.30.0.3', macForIp('172.30.0.2')))), isCode('conflict'));
  assert.throws(() => normalisePolicy(policy(pin('bg1.1', '172.30.0.2'))), isCode('bad_request'));
  assert.throws(() => normalisePolicy(policy(pin('bg0.1', '172.30.1.2'))), isCode('bad_request', /not a host address/));
  assert.throws(() => normalisePolicy(policy(pin('bg0.1', '172.30.0.2', 'ff:ff:ff:ff:ff:ff'))), isCode('bad_request', /MAC/));
  assert.throws(() => normalisePolicy(policy(pin('bg0.1"; flush ruleset; "', '172.30.0.2'))), isCode('bad_request'));
});

test('normaliseNat: network form, sorted unique IPs, all inside the network', () => {
  assert.deepEqual(normaliseNat({ bridge: 'banger0', cidr: '172.30.0.1/24', natIps: ['172.30.0.10', '172.30.0.9', '172.30.0.10'] }), {
    bridge: 'banger0',
    cidr: '172.30.0.0/24',
    natIps: ['172.30.0.9', '172.30.0.10'],
  });
  assert.throws(() => normaliseNat({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: ['172.30.1.2'] }), isCode('bad_request', /not a host address/));
  assert.throws(() => normaliseNat({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: ['172.30.0.255'] }), isCode('bad_request'));
  assert.throws(() => normaliseNat({ bridge: 'eth0', cidr: '172.30.0.0/24', natIps: [] }), isCode('bad_request'));
  assert.throws(() => normaliseNat({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: ['1.2.3.4; drop'] }), isCode('bad_request'));
});

const POLICY = {
  bridge: 'banger0',
  cidr: '172.30.0.0/24',
  pins: [
    { tap: 'bg0.1', mac: macForIp('172.30.0.3'), ip: '172.30.0.3', nat: true },
    { tap: 'bg0.0', mac: macForIp('172.30.0.2'), ip: '172.30.0.2', nat: true },
    { tap: 'bg0.2', mac: macForIp('172.30.0.4'), ip: '172.30.0.4', nat: false },
  ],
};

test('buildNftRuleset: two self-replacing tables named after the bridge: masquerade/accept/drop, and the TAP pins', () => {
  const text = buildNftRuleset(POLICY);
  const lines = text.split('\n').map((l) => l.trim());
  // Replacement preamble: create-if-missing then delete, so the new tables never merge with old ones.
  assert.deepEqual(lines.slice(0, 5), [
    'table inet banger0',
    'delete table inet banger0',
    'table bridge banger0',
    'delete table bridge banger0',
    'table inet banger0 {',
  ]);
  assert.doesNotMatch(text, /table (inet|bridge) banger[^0]/, "no other bridge's table is named");
  assert.ok(lines.includes('elements = { 172.30.0.2, 172.30.0.3 }'), text);
  assert.ok(lines.includes('type nat hook postrouting priority srcnat; policy accept;'));
  assert.ok(lines.includes('ip saddr @nat_ips oifname != "banger0" masquerade'));
  assert.ok(lines.includes('type filter hook forward priority filter; policy accept;'));
  const fwd = lines.slice(lines.indexOf('chain forward {'));
  const iEst = fwd.indexOf('ct state established,related accept');
  const iAcc = fwd.indexOf('iifname "banger0" oifname != "banger0" ip saddr @nat_ips accept');
  const iDrop = fwd.indexOf('iifname "banger0" oifname != "banger0" drop');
  assert.ok(iEst > 0 && iEst < iAcc && iAcc < iDrop, text);
  assert.equal(text.match(/masquerade/g)?.length, 1);
  // Pins: every TAP of the bridge goes through the guest chain, whose last word is drop.
  assert.ok(lines.includes('iifname "bg0.*" jump guest'), text);
  assert.ok(
    lines.includes(
      'elements = { "bg0.0" . 52:54:00:1e:00:02 . 172.30.0.2, "bg0.1" . 52:54:00:1e:00:03 . 172.30.0.3, "bg0.2" . 52:54:00:1e:00:04 . 172.30.0.4 }',
    ),
    text,
  );
  assert.ok(lines.includes('elements = { "bg0.0", "bg0.1" }'), 'NAT is decided by the TAP');
  const guest = lines.slice(lines.indexOf('chain guest {'));
  assert.equal(guest[1], 'iifname . ether saddr != @macs drop');
  assert.equal(guest[6], 'drop');
  assert.ok(guest.includes('ether type ip ip daddr { 172.30.0.0/24, 224.0.0.0/4, 255.255.255.255 } accept'));
});

test('buildNftRuleset: no VMs: empty sets, forwarding from the bridge still dropped, every TAP still dropped', () => {
  const text = buildNftRuleset({ bridge: 'banger0', cidr: '172.30.0.0/24', pins: [] });
  assert.doesNotMatch(text, /elements/);
  assert.match(text, /iifname "banger0" oifname != "banger0" drop/);
  assert.match(text, /iifname \. ether saddr != @macs drop/);
  assert.equal(buildNftRuleset({ bridge: 'banger0', cidr: '172.30.0.0/24', pins: [] }), text);
});

test("iptables rules: tagged per bridge, per-IP masquerade and accept, final drop; restore script flushes only this bridge's chains", () => {
  const rules = buildIptablesRules({
    bridge: 'banger0',
    cidr: '172.30.0.0/24',
    pins: [{ tap: 'bg0.0', mac: macForIp('172.30.0.2'), ip: '172.30.0.2', nat: true }],
  });
  for (const r of [...rules, ...iptablesJumps('banger0')]) assert.ok(r.args.join(' ').includes('-m comment --comment banger:banger0'), r.args.join(' '));
  const nat = rules.filter((r) => r.table === 'nat');
  assert.deepEqual(
    nat.map((r) => `${r.chain} ${r.args.join(' ')}`),
    ['BGNAT-banger0 -s 172.30.0.2/32 ! -o banger0 -m comment --comment banger:banger0 -j MASQUERADE'],
  );
  const fwd = rules.filter((r) => r.table === 'filter').map((r) => r.args.join(' '));
  assert.match(fwd[0] ?? '', /--ctstate RELATED,ESTABLISHED .* -j ACCEPT$/);
  assert.equal(fwd[1], '-i banger0 ! -o banger0 -s 172.30.0.2/32 -m comment --comment banger:banger0 -j ACCEPT');
  assert.equal(fwd.at(-1), '-i banger0 ! -o banger0 -m comment --comment banger:banger0 -j DROP');
  const script = iptablesRestoreScript('banger0', rules);
  assert.match(script, /^\*nat\n:BGNAT-banger0 - \[0:0\]\n:BGDNS-banger0 - \[0:0\]\n-A BGNAT-banger0 -s 172\.30\.0\.2\/32 /);
  assert.match(script, /\*filter\n:BGFWD-banger0 - \[0:0\]\n/);
  assert.equal(script.match(/^COMMIT$/gm)?.length, 2);
  assert.doesNotMatch(script, /POSTROUTING ACCEPT|:FORWARD/);
  assert.deepEqual(
    iptablesJumps('banger0').map((j) => `${j.table} ${j.chain}`),
    ['nat POSTROUTING', 'nat PREROUTING', 'nat OUTPUT', 'filter FORWARD'],
  );
  // Only packets arriving on the bridge enter its DNS chain from PREROUTING; OUTPUT has no input interface.
  const jumps = iptablesJumps('banger0').map((j) => `${j.chain} ${j.args.join(' ')}`);
  assert.ok(jumps.includes('PREROUTING -i banger0 -m comment --comment banger:banger0 -j BGDNS-banger0'), jumps.join('\n'));
  assert.ok(jumps.includes('OUTPUT -m comment --comment banger:banger0 -j BGDNS-banger0'), jumps.join('\n'));
  // The unrestricted PREROUTING jump of earlier versions is deleted on apply/remove, and is not a current jump.
  assert.deepEqual(
    iptablesStaleJumps('banger0').map((j) => `${j.chain} ${j.args.join(' ')}`),
    ['PREROUTING -m comment --comment banger:banger0 -j BGDNS-banger0'],
  );
});

test("ebtables rules: the bridge's TAPs dispatched to a pin chain; non-NAT TAPs limited to the VM network", () => {
  const { dispatch, pin } = buildEbtablesRules({
    ...POLICY,
    pins: [...POLICY.pins, { tap: 'bgtap7', mac: macForIp('172.30.0.7'), ip: '172.30.0.7', nat: false }],
  });
  assert.deepEqual(
    dispatch.map((r) => r.args.join(' ')),
    ['-i bg0.+ -j BGPIN-banger0', '-i bgtap7 -j BGPIN-banger0'],
  );
  const of = (tap: string) => pin.filter((r) => r.args[1] === tap).map((r) => r.args.join(' '));
  assert.deepEqual(of('bg0.0'), [
    '-i bg0.0 -s 52:54:00:1e:00:02 -p 0x0806 --arp-htype 1 --arp-ptype 0x0800 --arp-ip-src 172.30.0.2 --arp-mac-src 52:54:00:1e:00:02 -j ACCEPT',
    '-i bg0.0 -s 52:54:00:1e:00:02 -p 0x0800 --ip-src 172.30.0.2 -j ACCEPT',
  ]);
  assert.deepEqual(of('bg0.2').slice(1), [
    '-i bg0.2 -s 52:54:00:1e:00:04 -p 0x0800 --ip-src 172.30.0.4 --ip-dst 172.30.0.0/24 -j ACCEPT',
    '-i bg0.2 -s 52:54:00:1e:00:04 -p 0x0800 --ip-src 172.30.0.4 --ip-dst 224.0.0.0/4 -j ACCEPT',
    '-i bg0.2 -s 52:54:00:1e:00:04 -p 0x0800 --ip-src 172.30.0.4 --ip-dst 255.255.255.255 -j ACCEPT',
  ]);
});

test('DNS redirect: port 53 on the bridge address to the unprivileged port (nft prerouting + output, iptables chain); bad values refused', () => {
  const base = { bridge: 'banger0', cidr: '172.30.0.0/24', pins: [] };
  const nft = buildNftRuleset({ ...base, dns: { ip: '172.30.0.1', port: 42053 } });
  assert.equal(nft.match(/ip daddr 172\.30\.0\.1 meta l4proto \{ udp, tcp \} th dport 53 dnat ip to 172\.30\.0\.1:42053/g)?.length, 2, nft);
  // Prerouting only redirects what arrives on the bridge.
  assert.match(nft, /chain dns_prerouting \{\n.*\n\s+iifname "banger0" ip daddr 172\.30\.0\.1 meta l4proto/);
  assert.match(nft, /chain dns_output \{\n.*\n\s+ip daddr 172\.30\.0\.1 meta l4proto/);
  assert.match(nft, /type nat hook prerouting priority dstnat/);
  assert.match(nft, /type nat hook output priority -100/);
  assert.doesNotMatch(buildNftRuleset(base), /dnat/, 'no redirect without a DNS spec');

  const rules = buildIptablesRules({ ...base, dns: { ip: '172.30.0.1', port: 42053 } }).filter((r) => r.chain === 'BGDNS-banger0');
  assert.deepEqual(
    rules.map((r) => [r.table, r.args.join(' ')]),
    ['udp', 'tcp'].map((p) => ['nat', `-d 172.30.0.1/32 -p ${p} --dport 53 -m comment --comment banger:banger0 -j DNAT --to-destination 172.30.0.1:42053`]),
  );
  assert.match(iptablesRestoreScript('banger0', rules), /^\*nat\n:BGNAT-banger0 - \[0:0\]\n:BGDNS-banger0 - \[0:0\]\n/);

  for (const dns of [
    { ip: '10.0.0.1', port: 42053 },
    { ip: '172.30.0.255', port: 42053 },
    { ip: '172.30.0.1', port: 0 },
    { ip: '172.30.0.1', port: 70_000 },
    { ip: '172.30.0.1; flush ruleset', port: 42053 },
  ]) {
    assert.throws(() => buildNftRuleset({ ...base, dns }), /DNS (address|port)|IPv4|not a/, JSON.stringify(dns));
  }
});

// A real /proc/net/udp (little-endian host): 10.77.0.1:42053 of uid 1000, 127.0.0.53:53 of uid 101, 0.0.0.0:68 of root.
const PROC_UDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 01004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 55512 2 0000000000000000 0
  456: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 20001 2 0000000000000000 0
  789: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 20002 2 0000000000000000 0
`;

test('parseProcNetIpv4: address (host byte order), port, state and uid of each socket; garbled lines skipped', () => {
  assert.deepEqual(parseProcNetIpv4(PROC_UDP), [
    { ip: '10.77.0.1', port: 42053, state: 7, uid: 1000 },
    { ip: '127.0.0.53', port: 53, state: 7, uid: 101 },
    { ip: '0.0.0.0', port: 68, state: 7, uid: 0 },
  ]);
  // A big-endian host prints the address in network order.
  assert.equal(parseProcNetIpv4('  0: 0A4D0001:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 1\n', false)[0]?.ip, '10.77.0.1');
  const hostile = [
    '',
    'garbage',
    '  1: 01004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  -5        0 1',
    '  1: 01004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  99999999999 0 1',
    '  1: 01004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000',
    '  1: 01004d0a:a445 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 1',
    '  1: 1004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 1',
    '  1: 01004D0A:A4450 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 1',
    '  1: 00000000000000000000000001004D0A:A445 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000 0 1',
    '  1: 01004D0A:A445 00000000:0000 07 00000000:00000000 00:00000000 00000000  4294967296 0 1',
  ];
  assert.deepEqual(parseProcNetIpv4(hostile.join('\n')), [], 'negative, oversized, truncated, lower-case, IPv6-shaped lines are skipped');
  assert.deepEqual(parseProcNetIpv4(undefined as unknown as string), []);
});

test('assertDnsPortHeld: the DNS port must be bound by the expected uid, and by nobody else', () => {
  const dns = { ip: '10.77.0.1', port: 42053 };
  const sock = (ip: string, uid: number, state = 7) => ({ ip, port: 42053, state, uid });
  assert.doesNotThrow(() => assertDnsPortHeld(dns, 1000, parseProcNetIpv4(PROC_UDP), []));
  assert.doesNotThrow(() => assertDnsPortHeld(dns, 1000, [sock('0.0.0.0', 1000)], []), 'the wildcard of the right uid');
  assert.doesNotThrow(() => assertDnsPortHeld(dns, 1000, [sock('10.77.0.1', 1000), sock('10.77.0.9', 4242), { ...sock('10.77.0.1', 4242), port: 42054 }], []));
  // Another uid holds the port: on the address, on the wildcard, or as a TCP listener.
  for (const [udp, tcp] of [
    [[sock('10.77.0.1', 4242)], []],
    [[sock('10.77.0.1', 1000), sock('0.0.0.0', 4242)], []],
    [[sock('10.77.0.1', 1000)], [sock('10.77.0.1', 4242, 0x0a)]],
  ] as const) {
    assert.throws(
      () => assertDnsPortHeld(dns, 1000, udp, tcp),
      (e) =>
        isCode('conflict', /port 42053: (udp|tcp) (10\.77\.0\.1|0\.0\.0\.0):42053 is held by uid 4242, not by bangerd's user \(uid 1000\)/)(e) &&
        /bridge_dns_port/.test((e as BangerError).fix ?? ''),
      JSON.stringify({ udp, tcp }),
    );
  }
  // A TCP connection (not a listener) of another uid does not hold the port.
  assert.doesNotThrow(() => assertDnsPortHeld(dns, 1000, [sock('10.77.0.1', 1000)], [sock('10.77.0.1', 4242, 1)]));
  // Nobody holds it: refused too (the redirect would go to whoever binds it next).
  assert.throws(() => assertDnsPortHeld(dns, 0, parseProcNetIpv4(PROC_UDP), []), isCode('conflict', /held by uid 1000, not by bangerd's user \(uid 0\)/));
  const others = parseProcNetIpv4(PROC_UDP).filter((x) => x.port !== 42053);
  assert.throws(() => assertDnsPortHeld(dns, 0, others, []), isCode('precondition_failed', /no UDP socket of uid 0 is bound to 10\.77\.0\.1:42053/));
  assert.throws(() => assertDnsPortHeld(dns, 1000, [], []), isCode('precondition_failed'));
});
