import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { type ReadyCheck, VmCreateRequestSchema } from '../../src/api/schemas.js';
import { addVmSpecOptions, type VmSpecOptions, vmCreateRequest } from '../../src/cli/args.js';
import { Command } from '../../src/cli/commander.js';
import { guestLine, lastLine, waitUntilReady } from '../../src/daemon/services/readiness.js';
import type { CreateVmOptions } from '../../src/sdk/index.js';
import type { OpContext } from '../../src/util/op-context.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** The flags of `vm create` as commander parses them (usage errors thrown, not exited). */
function parse(args: string[]): VmSpecOptions {
  const cmd = addVmSpecOptions(new Command('create'), 'image')
    .exitOverride()
    .configureOutput({ writeErr: () => {} });
  cmd.parse(args, { from: 'user' });
  return cmd.opts<VmSpecOptions>();
}
const usageError = (re: RegExp) => (e: unknown) => (e as { code?: string }).code === 'commander.invalidArgument' && re.test((e as Error).message);

test('--wait-for: ssh/agent set the base wait; port:N and commands become readyWhen, repeatable, in order; cmd: is the escape', () => {
  assert.deepEqual(vmCreateRequest(parse([]), true), { nat: false, start: true }, 'nothing given: the daemon’s defaults');
  assert.deepEqual(vmCreateRequest(parse(['--wait-for', 'agent']), true), { nat: false, start: true, waitFor: 'agent' });
  const r = vmCreateRequest(
    parse(['--wait-for', 'port:8080', '--wait-for', 'curl -sf localhost:3000/health', '--wait-for', 'cmd:ssh', '--wait-for', 'agent', '--wait-timeout', '90s']),
    true,
  );
  assert.deepEqual(r, {
    nat: false,
    start: true,
    waitFor: 'agent',
    readyWhen: [
      { kind: 'port', port: 8080 },
      { kind: 'command', command: 'curl -sf localhost:3000/health' },
      { kind: 'command', command: 'ssh' },
    ],
    readyTimeoutMs: 90_000,
  });
  assert.equal(vmCreateRequest(parse(['--wait-for', 'agent', '--wait-for', 'ssh']), true).waitFor, 'ssh', 'ssh needs the agent too: it wins');
  assert.deepEqual(vmCreateRequest(parse(['--wait-for', 'cmd:port:80']), true).readyWhen, [{ kind: 'command', command: 'port:80' }]);
  // What the CLI sends, the daemon takes.
  assert.ok(VmCreateRequestSchema.safeParse(r).success);
});

test('--wait-for port:N takes 1..65535 only; an empty command and a bad --wait-timeout are usage errors', () => {
  assert.deepEqual(vmCreateRequest(parse(['--wait-for', 'port:1', '--wait-for', 'port:65535']), true).readyWhen, [
    { kind: 'port', port: 1 },
    { kind: 'port', port: 65535 },
  ]);
  for (const bad of ['port:0', 'port:65536', 'port:', 'port:80x', 'port:-1', 'port:1e3', 'port:99999999']) {
    assert.throws(() => parse(['--wait-for', bad]), usageError(/port:N takes a TCP port from 1 to 65535/), bad);
  }
  for (const bad of ['', '   ', 'cmd:', 'cmd:  '])
    assert.throws(() => parse(['--wait-for', bad]), usageError(/expected ssh, agent, port:N or a command/), JSON.stringify(bad));
  assert.throws(() => parse(['--wait-for', 'x'.repeat(4097)]), usageError(/at most 4096 characters/));
  for (const bad of ['soon', '0', '500ms', '25h', '']) assert.throws(() => parse(['--wait-timeout', bad]), usageError(/--wait-timeout takes a duration/), bad);
});

test('--wait-for checks: at most 8, not with --no-start, and --wait-timeout needs one', () => {
  const nine = Array.from({ length: 9 }, (_, i) => ['--wait-for', `port:${i + 1}`]).flat();
  assert.throws(
    () => vmCreateRequest(parse(nine), true),
    (e: unknown) => e instanceof BangerError && e.details === 'usage' && /9 --wait-for checks: at most 8/.test(e.message),
  );
  assert.equal(vmCreateRequest(parse(nine.slice(2)), true).readyWhen?.length, 8);
  assert.throws(
    () => vmCreateRequest(parse(['--wait-for', 'port:80']), false),
    (e: unknown) => e instanceof BangerError && /--no-start/.test(e.message),
  );
  assert.deepEqual(vmCreateRequest(parse(['--wait-for', 'agent']), false).waitFor, 'agent', 'the base wait is harmless without a start');
  assert.throws(
    () => vmCreateRequest(parse(['--wait-timeout', '5m']), true),
    (e: unknown) => e instanceof BangerError && /none was given/.test(e.message),
  );
});

test('VmCreateRequestSchema: readyWhen and readyTimeoutMs are validated strictly', () => {
  const ok = (body: object) => VmCreateRequestSchema.safeParse(body).success;
  assert.ok(
    ok({
      readyWhen: [
        { kind: 'port', port: 22 },
        { kind: 'command', command: 'true' },
      ],
      readyTimeoutMs: 24 * 3_600_000,
    }),
  );
  assert.ok(ok({ readyWhen: [] }));
  assert.ok(ok({ readyWhen: [{ kind: 'command', command: 'x'.repeat(4096) }] }));
  const bad: Array<[string, object]> = [
    ['port 0', { readyWhen: [{ kind: 'port', port: 0 }] }],
    ['port 65536', { readyWhen: [{ kind: 'port', port: 65536 }] }],
    ['port 80.5', { readyWhen: [{ kind: 'port', port: 80.5 }] }],
    ['port as text', { readyWhen: [{ kind: 'port', port: '80' }] }],
    ['unknown kind', { readyWhen: [{ kind: 'http', url: 'http://x' }] }],
    ['extra field', { readyWhen: [{ kind: 'port', port: 80, host: 'x' }] }],
    ['command with a port', { readyWhen: [{ kind: 'command', command: 'true', port: 1 }] }],
    ['empty command', { readyWhen: [{ kind: 'command', command: ' ' }] }],
    ['NUL in a command', { readyWhen: [{ kind: 'command', command: 'true\0false' }] }],
    ['4097 characters', { readyWhen: [{ kind: 'command', command: 'x'.repeat(4097) }] }],
    ['nine checks', { readyWhen: Array.from({ length: 9 }, () => ({ kind: 'port', port: 80 })) }],
    ['timeout under 1 s', { readyWhen: [{ kind: 'port', port: 80 }], readyTimeoutMs: 999 }],
    ['timeout over 24 h', { readyWhen: [{ kind: 'port', port: 80 }], readyTimeoutMs: 24 * 3_600_000 + 1 }],
    ['checks without a start', { start: false, readyWhen: [{ kind: 'port', port: 80 }] }],
    ['a timeout without a start', { start: false, readyTimeoutMs: 5000 }],
  ];
  for (const [why, body] of bad) assert.equal(ok(body), false, why);
});

test('guest text in logs and errors: one line, control and format characters replaced, bounded', () => {
  assert.equal(guestLine('a\x1b[31mb\u202ec\u0085d'), 'a?[31mb?c?d');
  assert.equal(guestLine('x'.repeat(500)).length, 200);
  assert.equal(lastLine('first\nsecond\r\n\n  \n'), 'second');
  assert.equal(lastLine('progress 1\rprogress 2'), 'progress 2');
  assert.equal(lastLine(''), '');
});

const quietCtx = (): OpContext & { logs: string[] } => {
  const logs: string[] = [];
  return {
    id: 'op-test',
    signal: new AbortController().signal,
    stage: () => {},
    progress: () => {},
    log: (l) => logs.push(l),
    setTarget: () => {},
    checkCancelled: () => {},
    logs,
  };
};

test('a command attempt that outlives its own bound is killed by the guest (its whole group), and the wait retries', async () => {
  const dir = await mkdtemp('/tmp/bg-ready-');
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const marker = join(dir, 'ran');
  const guest = new HostFakeGuest();
  const c = quietCtx();
  // First attempt: hangs (a child in its group keeps the output open); the next: succeeds.
  const command = `if [ -e ${marker} ]; then exit 0; fi; touch ${marker}; (sleep 600) & sleep 600`;
  const checks: ReadyCheck[] = [{ kind: 'command', command }];
  await waitUntilReady({
    vmName: 'vm',
    checks,
    timeoutMs: 60_000,
    ctx: c,
    guest: () => ({ ports: async () => [], guest }),
    attemptTimeoutMs: 300,
    commandRetryMs: 5,
  });
  assert.equal(guest.started.length, 2);
  assert.equal(guest.started[0]?.timeoutMs, 300);
  assert.match(c.logs[0] ?? '', /attempt 1: killed after 300 ms \(its bound per attempt\), no output$/);
  assert.ok(await readFile(marker).then(() => true));
});

test('a guest that stops answering its port listing is retried; the timeout names the last failure', async () => {
  let polls = 0;
  const c = quietCtx();
  await assert.rejects(
    waitUntilReady({
      vmName: 'vm',
      checks: [{ kind: 'port', port: 5432 }],
      timeoutMs: 200,
      ctx: c,
      guest: () => ({
        ports: async () => {
          polls++;
          throw new Error('agent timed out\x1b[2J');
        },
        guest: new HostFakeGuest(),
      }),
      portPollMs: 5,
    }),
    (e: BangerError) =>
      e.code === 'timeout' &&
      /port 5432 did not hold within 200 ms \(\d+ attempts; last: the agent did not list the ports: agent timed out\?\[2J\)/.test(e.message),
  );
  assert.ok(polls >= 2, 'retried');
});

test('SDK: banger.vms.create takes readyWhen and readyTimeoutMs, typed (a wrong kind does not compile)', () => {
  const ok: CreateVmOptions = {
    image: 'img',
    readyWhen: [
      { kind: 'port', port: 8080 },
      { kind: 'command', command: 'test -e /root/go' },
    ],
    readyTimeoutMs: 60_000,
  };
  // @ts-expect-error: no such check
  const bad: CreateVmOptions = { readyWhen: [{ kind: 'http', url: 'http://localhost' }] };
  assert.ok(VmCreateRequestSchema.safeParse({ image: ok.image, readyWhen: ok.readyWhen, readyTimeoutMs: ok.readyTimeoutMs }).success);
  assert.equal(VmCreateRequestSchema.safeParse({ readyWhen: bad.readyWhen }).success, false);
});
