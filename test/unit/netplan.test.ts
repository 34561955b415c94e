import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import {
  allocateIp,
  buildIptablesRules,
  buildNftRuleset,
  cidrContains,
  cidrsOverlap,
  formatIpv4,
  iptablesJumps,
  iptablesRestoreScript,
  macForIp,
  normaliseNat,
  nthHost,
  parseCidr,
  parseIpv4,
  validateBridgeName,
  validateTapName,
} from '../../src/host/netplan.js';

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

test('name validation: only banger* bridges and bgtap<N> TAPs', () => {
  for (const ok of ['banger', 'banger0', 'banger-test_1', 'bangerabcdefghi']) assert.equal(validateBridgeName(ok), ok);
  for (const bad of ['eth0', 'docker0', 'br0', 'Banger0', 'banger0123456789', 'banger 0', 'banger/0', '']) {
    assert.throws(() => validateBridgeName(bad), isCode('bad_request', /refusing bridge name/));
  }
  for (const ok of ['bgtap0', 'bgtap123456']) assert.equal(validateTapName(ok), ok);
  for (const bad of ['tap0', 'bgtap', 'bgtap1234567', 'bgtapx', 'eth0']) assert.throws(() => validateTapName(bad), isCode('bad_request'));
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

test('buildNftRuleset: one self-replacing table with masquerade, accept and drop', () => {
  const text = buildNftRuleset({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: ['172.30.0.3', '172.30.0.2'] });
  const lines = text.split('\n').map((l) => l.trim());
  // Replacement preamble: create-if-missing then delete, so the new table never merges with an old one.
  assert.deepEqual(lines.slice(0, 3), ['table inet banger', 'delete table inet banger', 'table inet banger {']);
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
});

test('buildNftRuleset: an empty NAT list has an empty set and still drops forwarding', () => {
  const text = buildNftRuleset({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: [] });
  assert.doesNotMatch(text, /elements/);
  assert.match(text, /iifname "banger0" oifname != "banger0" drop/);
  assert.equal(buildNftRuleset({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: [] }), text);
});

test('iptables rules: tagged, per-IP masquerade and accept, final drop; restore script flushes only banger chains', () => {
  const rules = buildIptablesRules({ bridge: 'banger0', cidr: '172.30.0.0/24', natIps: ['172.30.0.2'] });
  for (const r of [...rules, ...iptablesJumps()]) assert.ok(r.args.join(' ').includes('-m comment --comment banger'), r.args.join(' '));
  const nat = rules.filter((r) => r.table === 'nat');
  assert.deepEqual(nat.map((r) => r.args.join(' ')), ['-s 172.30.0.2/32 ! -o banger0 -m comment --comment banger -j MASQUERADE']);
  const fwd = rules.filter((r) => r.table === 'filter').map((r) => r.args.join(' '));
  assert.match(fwd[0] ?? '', /--ctstate RELATED,ESTABLISHED .* -j ACCEPT$/);
  assert.equal(fwd[1], '-i banger0 ! -o banger0 -s 172.30.0.2/32 -m comment --comment banger -j ACCEPT');
  assert.equal(fwd.at(-1), '-i banger0 ! -o banger0 -m comment --comment banger -j DROP');
  const script = iptablesRestoreScript(rules);
  assert.match(script, /^\*nat\n:BANGER-POSTROUTING - \[0:0\]\n-A BANGER-POSTROUTING -s 172\.30\.0\.2\/32 /);
  assert.match(script, /\*filter\n:BANGER-FORWARD - \[0:0\]\n/);
  assert.equal(script.match(/^COMMIT$/gm)?.length, 2);
  assert.doesNotMatch(script, /POSTROUTING ACCEPT|:FORWARD/);
  assert.deepEqual(
    iptablesJumps().map((j) => `${j.table} ${j.chain}`),
    ['nat POSTROUTING', 'filter FORWARD'],
  );
});
