import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { parseArgs, resolveOwner } from '../../src/helper/args.js';
import { parsePeercred } from '../../src/helper/peercred.js';
import { checkScope, execute, type HelperRequest, parseRequest } from '../../src/helper/protocol.js';
import { clean } from '../../src/helper/server.js';
import { HELPER_OPS } from '../../src/host/helper-wire.js';
import type { NetPolicy } from '../../src/host/netplan.js';
import { RecordingOps } from '../helpers/fake-host-net-ops.js';

const isCode = (code: string, re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, String(e));
  assert.equal(e.code, code, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

const line = (op: string, args: unknown) => JSON.stringify({ op, args });
const policy: NetPolicy = { bridge: 'banger0', cidr: '172.30.0.0/24', pins: [{ tap: 'bg0.3', mac: '52:54:00:1e:00:02', ip: '172.30.0.2', nat: true }] };

/** One valid request per operation, as HelperOps sends them. */
const VALID: Record<string, unknown> = {
  doctorInfo: {},
  pinning: {},
  ensureBridge: { name: 'banger0', addressCidr: '172.30.0.1/24' },
  deleteBridge: { name: 'banger0' },
  createTap: { name: 'bg0.3', bridge: 'banger0' },
  deleteTap: { name: 'bg0.3', bridge: 'banger0' },
  listTaps: { bridge: 'banger0' },
  routeVmDomain: { bridge: 'banger0', dnsIp: '172.30.0.1' },
  unrouteVmDomain: { bridge: 'banger0' },
  applyPolicy: { policy },
  removePolicy: { bridge: 'banger0' },
  currentNatIps: { bridge: 'banger0' },
};

test('parseRequest accepts one valid request per operation, and every operation has one', () => {
  assert.deepEqual(Object.keys(VALID).sort(), [...HELPER_OPS].sort());
  for (const [op, args] of Object.entries(VALID)) {
    const req = parseRequest(line(op, args));
    assert.equal(req.op, op);
    assert.deepEqual(req.args, args);
    checkScope(req, {});
  }
});

test('parseRequest refuses malformed JSON, unknown ops, missing, extra and mistyped fields', () => {
  assert.throws(() => parseRequest('{"op":"listTaps",'), isCode('bad_request', /not JSON/));
  assert.throws(() => parseRequest('[]'), isCode('bad_request', /malformed request/));
  assert.throws(() => parseRequest('"listTaps"'), isCode('bad_request', /malformed request/));
  assert.throws(() => parseRequest(line('exec', { cmd: 'id' })), isCode('bad_request', /unknown operation "exec"/));
  assert.throws(() => parseRequest(line('constructor', {})), isCode('bad_request', /unknown operation/));
  assert.throws(() => parseRequest(line('__proto__', {})), isCode('bad_request', /unknown operation/));
  assert.throws(() => parseRequest(JSON.stringify({ op: 'listTaps', args: { bridge: 'banger0' }, extra: 1 })), isCode('bad_request', /malformed/));
  assert.throws(() => parseRequest(JSON.stringify({ op: 'listTaps' })), isCode('bad_request', /malformed/));
  assert.throws(() => parseRequest(line('listTaps', { bridge: 'banger0', netns: 'x' })), isCode('bad_request', /invalid arguments for listTaps/));
  assert.throws(() => parseRequest(line('listTaps', {})), isCode('bad_request', /invalid arguments/));
  assert.throws(() => parseRequest(line('listTaps', { bridge: 7 })), isCode('bad_request', /invalid arguments/));
  assert.throws(() => parseRequest(line('listTaps', { bridge: 'b'.repeat(65) })), isCode('bad_request', /invalid arguments/));
  assert.throws(() => parseRequest(line('doctorInfo', { verbose: true })), isCode('bad_request', /invalid arguments/));
  assert.throws(() => parseRequest(line('applyPolicy', policy)), isCode('bad_request', /invalid arguments/), 'the policy travels under args.policy');
  const extraPin = { policy: { ...policy, pins: [{ ...policy.pins[0], vlan: 3 }] } };
  assert.throws(() => parseRequest(line('applyPolicy', extraPin)), isCode('bad_request', /invalid arguments/));
  const extraPolicy = { policy: { ...policy, iface: 'eth0' } };
  assert.throws(() => parseRequest(line('applyPolicy', extraPolicy)), isCode('bad_request', /invalid arguments/));
  const natString = { policy: { ...policy, pins: [{ ...policy.pins[0], nat: 'yes' }] } };
  assert.throws(() => parseRequest(line('applyPolicy', natString)), isCode('bad_request', /invalid arguments/));
});

test("checkScope refuses names and networks that are not banger's, before anything runs", () => {
  const scope =
    (op: string, args: unknown, s = {}) =>
    () =>
      checkScope(parseRequest(line(op, args)), s);
  assert.throws(scope('ensureBridge', { name: 'br0', addressCidr: '172.30.0.1/24' }), isCode('bad_request', /banger only manages bridges/));
  assert.throws(scope('deleteBridge', { name: 'docker0' }), isCode('bad_request'));
  assert.throws(scope('ensureBridge', { name: 'banger0', addressCidr: '8.8.8.1/24' }), isCode('bad_request', /private networks/));
  assert.throws(scope('ensureBridge', { name: 'banger0', addressCidr: '172.15.255.1/24' }), isCode('bad_request', /private networks/));
  assert.throws(scope('ensureBridge', { name: 'banger0', addressCidr: '10.0.0.1/7' }), isCode('bad_request'));
  scope('ensureBridge', { name: 'banger0', addressCidr: '100.64.3.1/24' })();
  assert.throws(scope('createTap', { name: 'eth0', bridge: 'banger0' }), isCode('bad_request', /TAP name/));
  assert.throws(scope('createTap', { name: 'bg1.0', bridge: 'banger0' }), isCode('bad_request', /TAP name/), "another bridge's TAP");
  assert.throws(scope('createTap', { name: 'bgtap3', bridge: 'banger0' }), isCode('bad_request'), 'legacy TAPs are never created');
  scope('deleteTap', { name: 'bgtap3', bridge: 'banger0' })();
  assert.throws(scope('deleteTap', { name: 'vethabc', bridge: 'banger0' }), isCode('bad_request'));
  assert.throws(scope('routeVmDomain', { bridge: 'banger0', dnsIp: '1.1.1.1' }), isCode('bad_request', /private/));
  assert.throws(scope('routeVmDomain', { bridge: 'banger0', dnsIp: '172.30.0.01' }), isCode('bad_request'));
  assert.throws(scope('applyPolicy', { policy: { ...policy, cidr: '9.9.9.0/24', pins: [] } }), isCode('bad_request', /private/));
  assert.throws(
    scope('applyPolicy', { policy: { ...policy, pins: [{ ...policy.pins[0], tap: 'bgtap3' }] } }),
    isCode('bad_request', /legacy TAP name bgtap3/),
    "a legacy name says no bridge: nft would pin it on any bridge's port",
  );
  const foreignTap = { policy: { ...policy, pins: [{ ...policy.pins[0], tap: 'eth0' }] } };
  assert.throws(scope('applyPolicy', foreignTap), isCode('bad_request', /TAP name/));
  const badMac = { policy: { ...policy, pins: [{ ...policy.pins[0], mac: 'ff:ff:ff:ff:ff:ff' }] } };
  assert.throws(scope('applyPolicy', badMac), isCode('bad_request', /MAC/));
  for (const op of ['listTaps', 'unrouteVmDomain', 'removePolicy', 'currentNatIps']) {
    assert.throws(scope(op, { bridge: 'lo' }), isCode('bad_request'), op);
  }
});

test('checkScope with a bridge allowlist (--bridge) refuses every other banger bridge', () => {
  const only = { bridges: new Set(['banger0']) };
  for (const [op, args] of Object.entries(VALID)) checkScope(parseRequest(line(op, args)), only);
  const other = (op: string, args: unknown) => () => checkScope(parseRequest(line(op, args)), only);
  assert.throws(other('ensureBridge', { name: 'banger1', addressCidr: '172.31.0.1/24' }), isCode('conflict', /only manages banger0/));
  assert.throws(other('deleteBridge', { name: 'banger1' }), isCode('conflict'));
  assert.throws(other('createTap', { name: 'bg1.0', bridge: 'banger1' }), isCode('conflict'));
  assert.throws(other('applyPolicy', { policy: { ...policy, bridge: 'banger1', pins: [] } }), isCode('conflict'));
  assert.throws(other('removePolicy', { bridge: 'banger1' }), isCode('conflict'));
});

test('execute sends each request to the one method of its name, with its arguments', async () => {
  for (const [op, args] of Object.entries(VALID)) {
    const ops = new RecordingOps();
    const result = await execute(parseRequest(line(op, args)) as HelperRequest, ops);
    assert.equal(ops.calls.length, 1, op);
    assert.equal(ops.calls[0]?.[0], op);
    assert.deepEqual(ops.calls[0]?.slice(1), op === 'applyPolicy' ? [policy] : Object.values(args as object), op);
    if (op === 'listTaps') assert.deepEqual(result, ['bg0.0']);
    if (op === 'ensureBridge') assert.equal(result, null);
  }
});

test('parsePeercred reads exactly "<pid> <uid> <gid>\\n" and nothing else', () => {
  assert.deepEqual(parsePeercred('1234 1000 1000\n'), { pid: 1234, uid: 1000, gid: 1000 });
  assert.deepEqual(parsePeercred('0 0 0\n'), { pid: 0, uid: 0, gid: 0 });
  assert.deepEqual(parsePeercred('7 4294967294 65534\n'), { pid: 7, uid: 4294967294, gid: 65534 });
  for (const bad of [
    '',
    '1234 1000 1000',
    '1234 1000\n',
    '1234 1000 1000 5\n',
    '1234  1000 1000\n',
    ' 1234 1000 1000\n',
    '1234 1000 1000\n\n',
    '1234 1000 1000\nextra',
    '-1 1000 1000\n',
    '1234 -1 1000\n',
    '1234 01000 1000\n',
    '1234 4294967295 1000\n',
    '1234 1000 4294967295\n',
    '2147483648 1000 1000\n',
    '1234 1e3 1000\n',
    '1234 0x10 1000\n',
    '12a4 1000 1000\n',
  ]) {
    assert.throws(() => parsePeercred(bad), isCode('internal'), JSON.stringify(bad));
  }
});

test('parseArgs: --owner is required; --socket absolute; --bridge validated and repeatable; anything else refused', () => {
  assert.deepEqual(parseArgs(['--owner', 'banger']), { owner: 'banger', socket: '/run/banger-root/helper.sock', bridges: [] });
  assert.deepEqual(parseArgs(['--owner=1000', '--socket', '/run/x/h.sock', '--bridge', 'banger0', '--bridge=banger1']), {
    owner: '1000',
    socket: '/run/x/h.sock',
    bridges: ['banger0', 'banger1'],
  });
  assert.equal(parseArgs(['--help']), 'help');
  assert.throws(() => parseArgs([]), isCode('bad_request', /--owner is required/));
  assert.throws(() => parseArgs(['--owner']), isCode('bad_request', /needs a value/));
  assert.throws(() => parseArgs(['--owner', 'x', '--socket', 'rel/h.sock']), isCode('bad_request', /absolute/));
  assert.throws(() => parseArgs(['--owner', 'x', '--bridge', 'eth0']), isCode('bad_request'));
  assert.throws(() => parseArgs(['--owner', 'x', '--netns', 'n']), isCode('bad_request', /unknown argument/));
  assert.throws(() => parseArgs(['--owner', 'x', '--socket-mode', '0666']), isCode('bad_request', /unknown argument/));
});

test('resolveOwner: a uid or a user name; root and malformed names are refused', () => {
  assert.equal(resolveOwner('65534'), 65534);
  assert.equal(resolveOwner('nobody'), 65534);
  assert.throws(() => resolveOwner('0'), isCode('bad_request', /cannot be root/));
  assert.throws(() => resolveOwner('root'), isCode('bad_request', /cannot be root/));
  assert.throws(() => resolveOwner('4294967295'), isCode('bad_request'));
  assert.throws(() => resolveOwner('-x'), isCode('bad_request'));
  assert.throws(() => resolveOwner('a b'), isCode('bad_request'));
  assert.throws(() => resolveOwner('no-such-user-banger-t'), isCode('not_found'));
});

test('clean strips control characters (C0, DEL, C1) and bounds the length of logged text', () => {
  assert.equal(clean('op\n\u001b[31mred\u0007\u007f\u009b'), 'op??[31mred???');
  assert.equal(clean('x'.repeat(300)).length, 201);
});

test("applyPolicy carries NetPolicy's optional DNS redirect, strictly, and in scope", () => {
  const withDns = { policy: { ...policy, dns: { ip: '172.30.0.1', port: 5353 } } };
  const req = parseRequest(line('applyPolicy', withDns));
  assert.deepEqual(req.args, withDns);
  checkScope(req, {});
  const extra = { policy: { ...policy, dns: { ip: '172.30.0.1', port: 5353, to: '8.8.8.8' } } };
  assert.throws(() => parseRequest(line('applyPolicy', extra)), isCode('bad_request', /invalid arguments/));
  const badPort = { policy: { ...policy, dns: { ip: '172.30.0.1', port: 70000 } } };
  assert.throws(() => parseRequest(line('applyPolicy', badPort)), isCode('bad_request', /invalid arguments/));
  const outside = { policy: { ...policy, dns: { ip: '10.9.9.9', port: 5353 } } };
  assert.throws(() => checkScope(parseRequest(line('applyPolicy', outside)), {}), isCode('bad_request', /DNS address/));
});
