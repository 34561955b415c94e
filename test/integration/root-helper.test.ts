import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { OWNER_ALIAS } from '../../src/host/privileged.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { ROOT } from '../helpers/banger.js';
import { netnsUnavailable, sbin } from '../helpers/netns.js';
import { requires } from '../helpers/prereq.js';
import { waitFor } from './harness.js';

/*
 * The real `bangerd-root`, started as root inside a network namespace this file creates
 * (`ip netns exec`), serving OWNER = uid 65534 (`nobody`, present on every Debian host; no user is
 * created). Its callers are real processes running as that uid (and as OTHER = 65533, a uid with no
 * account: setpriv needs none), started with `setpriv --reuid --regid --clear-groups`; they import
 * a copy of dist/src in a temporary directory every uid can read, whatever the checkout's
 * permissions. Every refusal is checked on the host: the namespace's links and nft ruleset are the
 * same before and after. Nothing touches the root namespace's links, routes or firewall.
 */

const runner = new ProcessRunner();
const RUN_ID = randomBytes(3).toString('hex');
const OWNER = 65534;
const OTHER = 65533;

const skip =
  (await netnsUnavailable('the helper runs as root and the test creates network namespaces', `banger-t-${RUN_ID}-probe`)) ||
  requires(sbin('nft'), 'requires nftables (`nft`)') ||
  requires(sbin('setpriv'), 'requires setpriv (util-linux)') ||
  requires(existsSync(join(ROOT, 'native/build/banger-peercred')), 'requires native/build/banger-peercred (npm run build)');

const ns = `banger-t-${RUN_ID}-helper`;
let tmp = '';
let sock = '';
let clientJs = '';
/** A node the callers' uids can execute: this one, or a copy when it lives under a private home (Node 24 run). */
let clientNode = process.execPath;
let helper: ChildProcess | undefined;
let helperLog = '';

const inNs = (cmd: string, args: string[]) => runner.run('ip', ['netns', 'exec', ns, cmd, ...args]);

async function startHelper(): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, join(ROOT, 'bin/bangerd-root.js'), '--owner', String(OWNER), '--socket', sock], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    helperLog += c;
  });
  helper = child;
  const mark = helperLog.length;
  await waitFor('bangerd-root to listen', () => helperLog.indexOf('listening on', mark) >= 0 || child.exitCode !== null);
  assert.equal(child.exitCode, null, `bangerd-root exited: ${helperLog}`);
}

async function stopHelper(): Promise<void> {
  const child = helper;
  helper = undefined;
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

before(async () => {
  if (skip) return;
  await runner.run('ip', ['netns', 'add', ns]);
  await runner.run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  tmp = mkdtempSync('/tmp/banger-helper-it-');
  chmodSync(tmp, 0o755);
  // The callers run as OWNER/OTHER: they import this copy, readable by every uid.
  cpSync(join(ROOT, 'dist/src'), join(tmp, 'dist/src'), { recursive: true });
  const canExec = await runner.run('setpriv', [`--reuid=${OWNER}`, `--regid=${OWNER}`, '--clear-groups', 'test', '-x', process.execPath], {
    allowFailure: true,
  });
  if (canExec.code !== 0) {
    clientNode = join(tmp, 'node');
    cpSync(process.execPath, clientNode);
    chmodSync(clientNode, 0o755);
  }
  clientJs = join(tmp, 'client.mjs');
  writeFileSync(clientJs, CLIENT);
  chmodSync(clientJs, 0o644);
  sock = join(tmp, 'run', 'helper.sock');
  await startHelper();
});

after(async () => {
  await stopHelper();
  if (!skip) await runner.run('ip', ['netns', 'del', ns], { allowFailure: true });
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/**
 * The caller, run as another uid. stdin: {socket, calls: [[method, ...args]]} (HelperOps) or
 * {socket, raw} (bytes on a plain connection, then EOF). stdout: what happened, as JSON.
 */
const CLIENT = `
import { connect } from 'node:net';
import { HelperOps } from './dist/src/host/helper-client.js';
let input = '';
for await (const c of process.stdin) input += c;
const spec = JSON.parse(input);
if (spec.raw !== undefined) {
  const out = await new Promise((resolve) => {
    let answer = '';
    const s = connect(spec.socket);
    s.on('connect', () => s.end(spec.raw));
    s.on('data', (c) => { answer += c; });
    s.on('error', (e) => resolve({ answer, error: e.code }));
    s.on('close', () => resolve({ answer }));
  });
  process.stdout.write(JSON.stringify(out));
} else {
  const h = new HelperOps({ socketPath: spec.socket });
  const results = [];
  for (const [method, ...args] of spec.calls) {
    try {
      results.push({ ok: true, value: (await h[method](...args)) ?? null });
    } catch (e) {
      results.push({ ok: false, code: e.code, message: e.message });
    }
  }
  process.stdout.write(JSON.stringify(results));
}
`;

interface CallResult {
  ok: boolean;
  value?: unknown;
  code?: string;
  message?: string;
}

async function as(uid: number, spec: object): Promise<unknown> {
  const r = await runner.run('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', clientNode, clientJs], {
    input: JSON.stringify({ socket: sock, ...spec }),
    cwd: tmp,
    timeoutMs: 60_000,
  });
  return JSON.parse(r.stdout);
}

/** HelperOps calls made by the owner, in order; each result or error code. */
const owner = (...calls: unknown[][]) => as(OWNER, { calls }) as Promise<CallResult[]>;
/** Raw bytes from `uid` on one connection; the helper's answer parsed ('' when it closed without one). */
async function raw(uid: number, bytes: string): Promise<{ answer: string; error?: string; res?: { ok: boolean; error?: { code: string; message: string } } }> {
  const out = (await as(uid, { raw: bytes })) as { answer: string; error?: string };
  return { ...out, ...(out.answer ? { res: JSON.parse(out.answer) } : {}) };
}

interface LinkState {
  ifname: string;
  flags: string[];
  master?: string;
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { user?: string } };
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

/**
 * The namespace's links (name, kind, up or not, master, alias, TAP owner, IPv4 addresses: not the
 * kernel's timers and IPv6 duplicate-address state, which move on their own) and its whole nft ruleset.
 */
async function hostState(): Promise<string> {
  const links = JSON.parse((await runner.run('ip', ['-n', ns, '-d', '-j', 'addr', 'show'])).stdout) as LinkState[];
  const stable = links.map((l) => ({
    name: l.ifname,
    kind: l.linkinfo?.info_kind,
    up: l.flags.includes('UP'),
    master: l.master,
    alias: l.ifalias,
    owner: l.linkinfo?.info_data?.user,
    inet: (l.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
  }));
  const rules = (await inNs('nft', ['list', 'ruleset'])).stdout;
  return `${JSON.stringify(stable, null, 1)}\n${rules}`;
}

/** A plain non-banger link: a dummy where the kernel has it, else one end of a veth pair. */
async function plainLink(name: string): Promise<void> {
  const r = await runner.run('ip', ['-n', ns, 'link', 'add', name, 'type', 'dummy'], { allowFailure: true });
  if (r.code !== 0) await runner.run('ip', ['-n', ns, 'link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`]);
}

const linkOf = async (dev: string) => {
  const r = await runner.run('ip', ['-n', ns, '-j', '-d', 'link', 'show', 'dev', dev], { allowFailure: true });
  return r.code === 0 ? (JSON.parse(r.stdout)[0] as { ifalias?: string; master?: string; flags: string[]; linkinfo?: { info_kind?: string } }) : undefined;
};

const POLICY = { bridge: 'banger0', cidr: '10.77.0.0/24', pins: [{ tap: 'bg0.0', mac: '52:54:00:4d:00:02', ip: '10.77.0.2', nat: true }] };

test('the owner: ensureBridge + createTap make an enslaved TAP owned by the owner uid; applyPolicy pins it; deletes undo it', { skip }, async () => {
  const r = await owner(['doctorInfo'], ['ensureBridge', 'banger0', '10.77.0.1/24'], ['createTap', 'bg0.0', 'banger0'], ['listTaps', 'banger0']);
  assert.deepEqual(
    r.map((x) => x.ok),
    [true, true, true, true],
    JSON.stringify(r),
  );
  assert.equal((r[0]?.value as { mode?: string } | undefined)?.mode, 'helper');
  assert.deepEqual(r[3]?.value, ['bg0.0']);
  const tap = await linkOf('bg0.0');
  assert.equal(tap?.linkinfo?.info_kind, 'tun');
  assert.equal(tap?.master, 'banger0');
  assert.equal(tap?.ifalias, OWNER_ALIAS);
  assert.equal((await inNs('cat', ['/sys/class/net/bg0.0/owner'])).stdout.trim(), String(OWNER), "the owner's QEMU can open it");
  assert.equal((await linkOf('banger0'))?.ifalias, OWNER_ALIAS);

  const p = await owner(['applyPolicy', POLICY], ['currentNatIps', 'banger0'], ['pinning']);
  assert.deepEqual(
    p.map((x) => x.ok),
    [true, true, true],
    JSON.stringify(p),
  );
  assert.deepEqual(p[1]?.value, ['10.77.0.2']);
  const pins = (await inNs('nft', ['list', 'table', 'bridge', 'banger0'])).stdout;
  assert.match(pins, /bg0\.0/);
  assert.match(pins, /52:54:00:4d:00:02/);
  assert.match(helperLog, new RegExp(`op=applyPolicy peer uid=${OWNER} pid=\\d+ ok`));

  const d = await owner(['removePolicy', 'banger0'], ['deleteTap', 'bg0.0', 'banger0'], ['deleteBridge', 'banger0']);
  assert.deepEqual(
    d.map((x) => x.ok),
    [true, true, true],
    JSON.stringify(d),
  );
  assert.equal(await linkOf('bg0.0'), undefined);
  assert.equal(await linkOf('banger0'), undefined);
  assert.doesNotMatch((await inNs('nft', ['list', 'tables'])).stdout, /banger0/);
});

test('with the default socket mode (0600) another uid cannot even connect', { skip }, async () => {
  const before = await hostState();
  const logBefore = helperLog.length;
  const r = await raw(OTHER, '{"op":"ensureBridge","args":{"name":"banger7","addressCidr":"10.17.0.1/24"}}\n');
  assert.equal(r.error, 'EACCES');
  assert.equal(r.answer, '');
  assert.equal(await hostState(), before);
  assert.equal(helperLog.slice(logBefore), '', 'nothing reached the helper');
  // HelperOps itself refuses a socket that is not its own before connecting.
  const viaOps = (await as(OTHER, { calls: [['ensureBridge', 'banger7', '10.17.0.1/24']] })) as CallResult[];
  assert.equal(viaOps[0]?.code, 'precondition_failed');
  assert.equal(await linkOf('banger7'), undefined);
});

test('SO_PEERCRED: another uid (and root) is refused even when the socket is reachable; nothing runs', { skip }, async () => {
  assert.deepEqual(
    (await owner(['ensureBridge', 'banger0', '10.77.0.1/24'])).map((x) => x.ok),
    [true],
  );
  const before = await hostState();
  chmodSync(sock, 0o666); // past the file mode: the refusal below is the peer check's
  try {
    const r = await raw(OTHER, '{"op":"createTap","args":{"name":"bg0.5","bridge":"banger0"}}\n');
    assert.equal(r.answer, '', 'closed without an answer');
    assert.match(helperLog, new RegExp(`refused peer uid=${OTHER} pid=\\d+: only uid ${OWNER} may use this helper`));
    const fromRoot = await new Promise<string>((resolve) => {
      const c = spawn(process.execPath, [
        '-e',
        `const s=require('net').connect(${JSON.stringify(sock)});let a='';s.on('connect',()=>s.end('{"op":"deleteBridge","args":{"name":"banger0"}}\\n'));s.on('data',d=>a+=d);s.on('close',()=>{process.stdout.write(a)});s.on('error',()=>{})`,
      ]);
      let out = '';
      c.stdout.on('data', (d) => {
        out += d;
      });
      c.on('close', () => resolve(out));
    });
    assert.equal(fromRoot, '', 'root is not the owner either: a root daemon does its networking itself');
    assert.match(helperLog, /refused peer uid=0 pid=\d+/);
  } finally {
    chmodSync(sock, 0o600);
  }
  assert.equal(await hostState(), before);
  assert.equal(await linkOf('bg0.5'), undefined);
});

test("names and networks that are not banger's are refused, the host unchanged", { skip }, async () => {
  await owner(['ensureBridge', 'banger0', '10.77.0.1/24']);
  // A foreign bridge named like banger's (no banger-managed alias), a plain link, a used network.
  await runner.run('ip', ['-n', ns, 'link', 'add', 'bangerf', 'type', 'bridge']);
  await plainLink('dum0');
  await runner.run('ip', ['-n', ns, 'addr', 'add', '10.66.0.5/16', 'dev', 'dum0']);
  await runner.run('ip', ['-n', ns, 'link', 'set', 'dum0', 'up']);
  const before = await hostState();
  const r = await owner(
    ['ensureBridge', 'bangerf', '10.55.0.1/24'],
    ['createTap', 'bgf.0', 'bangerf'],
    ['deleteBridge', 'bangerf'],
    ['applyPolicy', { bridge: 'bangerf', cidr: '10.55.0.0/24', pins: [] }],
    ['ensureBridge', 'br0', '10.56.0.1/24'],
    ['createTap', 'eth9', 'banger0'],
    ['deleteTap', 'dum0', 'banger0'],
    ['deleteBridge', 'dum0'],
    ['ensureBridge', 'banger2', '10.66.1.1/24'],
    ['ensureBridge', 'banger3', '8.8.8.1/24'],
    ['applyPolicy', { ...POLICY, pins: [{ ...POLICY.pins[0], tap: 'dum0' }] }],
  );
  assert.deepEqual(
    r.map((x) => x.code),
    ['conflict', 'conflict', 'conflict', 'conflict', 'bad_request', 'bad_request', 'bad_request', 'bad_request', 'conflict', 'bad_request', 'bad_request'],
    JSON.stringify(r),
  );
  assert.match(r[0]?.message ?? '', /not a banger-managed bridge/);
  assert.match(r[8]?.message ?? '', /overlaps 10\.66\.0\.5\/16 on dum0/);
  assert.equal(await hostState(), before);
  assert.ok(await linkOf('bangerf'));
  assert.ok(await linkOf('dum0'));
  for (const absent of ['bgf.0', 'br0', 'eth9', 'banger2', 'banger3']) assert.equal(await linkOf(absent), undefined, absent);
});

test('malformed JSON, unknown ops, extra fields, oversized and second requests execute nothing', { skip }, async () => {
  await owner(['ensureBridge', 'banger0', '10.77.0.1/24']);
  const before = await hostState();
  const ensure = (name: string, cidr: string) => JSON.stringify({ op: 'ensureBridge', args: { name, addressCidr: cidr } });
  const cases: Array<[string, string, string, RegExp]> = [
    ['malformed JSON', '{"op":"ensureBridge","args":{"name":"banger4",\n', 'bad_request', /not JSON/],
    ['unknown op', '{"op":"exec","args":{"argv":["touch","/tmp/x"]}}\n', 'bad_request', /unknown operation "exec"/],
    ['extra field in args', '{"op":"ensureBridge","args":{"name":"banger4","addressCidr":"10.44.0.1/24","netns":"x"}}\n', 'bad_request', /invalid arguments/],
    ['extra field beside op', '{"op":"ensureBridge","args":{"name":"banger4","addressCidr":"10.44.0.1/24"},"as":"root"}\n', 'bad_request', /malformed/],
    // Valid JSON after the padding: without the bound it would create banger4.
    ['oversized', `${ensure('banger4', '10.44.0.1/24').slice(0, -1)}${' '.repeat(1100 * 1024)}}\n`, 'payload_too_large', /larger than/],
    ['second request', `${ensure('banger4', '10.44.0.1/24')}\n${ensure('banger5', '10.45.0.1/24')}\n`, 'bad_request', /one request per connection/],
    ['no newline', ensure('banger4', '10.44.0.1/24'), 'bad_request', /newline/],
  ];
  for (const [what, bytes, code, re] of cases) {
    const r = await raw(OWNER, bytes);
    assert.equal(r.res?.ok, false, `${what}: ${r.answer}`);
    assert.equal(r.res?.error?.code, code, what);
    assert.match(r.res?.error?.message ?? '', re, what);
  }
  assert.equal(await hostState(), before);
  assert.equal(await linkOf('banger4'), undefined);
  assert.equal(await linkOf('banger5'), undefined);
  // The same request, well-formed and alone, does run: the refusals above were the framing's.
  const ok = await raw(OWNER, `${ensure('banger4', '10.44.0.1/24')}\n`);
  assert.deepEqual(ok.res, { ok: true, result: null });
  assert.equal((await linkOf('banger4'))?.ifalias, OWNER_ALIAS);
  await owner(['deleteBridge', 'banger4']);
});

/** A UDP socket bound to `addr:port` in the namespace by `uid`; resolves once bound, with the process to kill. */
async function udpHolder(uid: number, addr: string, port: number): Promise<ChildProcess> {
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      'setpriv',
      `--reuid=${uid}`,
      `--regid=${uid}`,
      '--clear-groups',
      clientNode,
      '-e',
      `require('node:dgram').createSocket('udp4').bind(${port}, '${addr}', () => console.log('listening'));`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (b: Buffer) => b.toString().includes('listening') && resolve());
    child.once('exit', (code) => reject(new Error(`UDP holder exited with ${code}`)));
  });
  return child;
}

const stop = async (child: ChildProcess) => {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
};

test("the owner's DNS redirect: only to the bridge's address, only to a port the owner holds; refusals leave the host unchanged", { skip }, async () => {
  const r = await owner(['ensureBridge', 'banger0', '10.77.0.1/24'], ['createTap', 'bg0.0', 'banger0'], ['applyPolicy', POLICY]);
  assert.deepEqual(
    r.map((x) => x.ok),
    [true, true, true],
    JSON.stringify(r),
  );
  const dns = { ip: '10.77.0.1', port: 42053 };
  const before = await hostState();
  // Root (the helper's own uid, not the owner) holds the port: the owner may not redirect guests' DNS to it.
  const rootHeld = await udpHolder(0, '10.77.0.1', 42053);
  try {
    const refused = await owner(
      ['applyPolicy', { ...POLICY, dns }],
      ['applyPolicy', { ...POLICY, cidr: '10.66.0.0/24', pins: [], dns: { ip: '10.66.0.1', port: 42053 } }],
      ['applyPolicy', { ...POLICY, dns: { ip: '10.77.0.9', port: 42053 } }],
    );
    assert.deepEqual(
      refused.map((x) => [x.ok, x.code]),
      [
        [false, 'conflict'],
        [false, 'conflict'],
        [false, 'conflict'],
      ],
      JSON.stringify(refused),
    );
    assert.match(refused[0]?.message ?? '', new RegExp(`held by uid 0, not by bangerd's user \\(uid ${OWNER}\\)`));
    assert.match(refused[1]?.message ?? '', /10\.66\.0\.0\/24 is not the network of the bridge's address/);
    assert.match(refused[2]?.message ?? '', /10\.77\.0\.9: it is not banger0's address/);
    assert.equal(await hostState(), before, 'no refused policy changed the host');
  } finally {
    await stop(rootHeld);
  }
  // The owner holds it: accepted.
  const ownerHeld = await udpHolder(OWNER, '10.77.0.1', 42053);
  try {
    const ok = await owner(['applyPolicy', { ...POLICY, dns }]);
    assert.equal(ok[0]?.ok, true, JSON.stringify(ok));
    assert.match((await inNs('nft', ['list', 'table', 'inet', 'banger0'])).stdout, /iifname "banger0" ip daddr 10\.77\.0\.1 .*dnat ip to 10\.77\.0\.1:42053/);
  } finally {
    await stop(ownerHeld);
  }
  const d = await owner(['removePolicy', 'banger0'], ['deleteTap', 'bg0.0', 'banger0'], ['deleteBridge', 'banger0']);
  assert.ok(
    d.every((x) => x.ok),
    JSON.stringify(d),
  );
});

test('restarting the helper leaves bridges, TAPs and rules as they are', { skip }, async () => {
  const r = await owner(['ensureBridge', 'banger0', '10.77.0.1/24'], ['createTap', 'bg0.0', 'banger0'], ['applyPolicy', POLICY]);
  assert.deepEqual(
    r.map((x) => x.ok),
    [true, true, true],
    JSON.stringify(r),
  );
  const before = await hostState();
  await stopHelper();
  assert.match(helperLog, /SIGTERM: stopping/);
  assert.equal(existsSync(sock), false, 'its socket is gone');
  assert.equal(await hostState(), before, 'stopping touched nothing');
  const down = await owner(['listTaps', 'banger0']);
  assert.equal(down[0]?.code, 'unavailable');
  await startHelper();
  assert.equal(await hostState(), before, 'starting touched nothing');
  assert.deepEqual((await owner(['listTaps', 'banger0']))[0]?.value, ['bg0.0']);
});

test('bangerd-root refuses to start as a user other than root, and without --owner', { skip }, async (t) => {
  // The helper's own modules (zod) are read from the checkout's node_modules, as the uid.
  const readable = await runner.run(
    'setpriv',
    [`--reuid=${OWNER}`, `--regid=${OWNER}`, '--clear-groups', 'test', '-r', join(ROOT, 'node_modules/zod/package.json')],
    {
      allowFailure: true,
    },
  );
  if (readable.code !== 0) {
    t.skip(`uid ${OWNER} cannot read the checkout (${ROOT}): the helper must be started from it`);
    return;
  }
  const dir = join(tmp, 'not-root');
  const asOwner = await runner.run(
    'setpriv',
    [
      `--reuid=${OWNER}`,
      `--regid=${OWNER}`,
      '--clear-groups',
      clientNode,
      join(ROOT, 'bin/bangerd-root.js'),
      '--owner',
      String(OWNER),
      '--socket',
      join(dir, 'h.sock'),
    ],
    { allowFailure: true, cwd: tmp },
  );
  assert.equal(asOwner.code, 1);
  assert.match(asOwner.stderr, /bangerd-root must run as root/);
  assert.equal(existsSync(dir), false, 'nothing was created');
  const noOwner = await runner.run(process.execPath, [join(ROOT, 'bin/bangerd-root.js'), '--socket', join(dir, 'h.sock')], { allowFailure: true });
  assert.equal(noOwner.code, 2);
  assert.match(noOwner.stderr, /--owner is required/);
  const rootOwner = await runner.run(process.execPath, [join(ROOT, 'bin/bangerd-root.js'), '--owner', 'root', '--socket', join(dir, 'h.sock')], {
    allowFailure: true,
  });
  assert.equal(rootOwner.code, 1);
  assert.match(rootOwner.stderr, /the owner cannot be root/);
  assert.equal(existsSync(dir), false, 'nothing was created');
});
