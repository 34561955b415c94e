import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { sshArgv } from '../../src/cli/commands/ssh.js';
import { BANGER, runProcess } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * Issue #9 hole 6: the CLI must not trust whatever listens on its socket path. A FAKE daemon (a
 * small HTTP server on a unix socket, nothing of banger's) answers in a squatted runtime dir and
 * in a legitimately owned one with a hostile VM name. `ssh` on PATH is a FAKE too (a shim that
 * records its argv); the `--` layout is also checked against the real ssh, inside a fresh
 * network namespace so nothing can leave the host.
 */

const NOBODY = 65534;
let fixtures: string;
let canary: string;
let shimDir: string;
let shimLog: string;
const servers: Server[] = [];

before(async () => {
  fixtures = await mkdtemp(join(tmpdir(), 'socktrust-'));
  canary = join(fixtures, 'CANARY');
  shimDir = join(fixtures, 'bin');
  shimLog = join(fixtures, 'ssh-argv.log');
  await mkdir(shimDir);
  // The FAKE ssh: records each argument on its own line and succeeds.
  await writeFile(join(shimDir, 'ssh'), `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a" >> '${shimLog}'; done\nexit 0\n`, { mode: 0o755 });
});

after(async () => {
  for (const s of servers) s.close();
  await rm(fixtures, { recursive: true, force: true });
});

function vmRecord(name: string) {
  return {
    id: 'f'.repeat(32),
    name,
    imageId: 'e'.repeat(32),
    imageName: 'img',
    kernelName: 'k',
    state: 'running',
    vcpus: 1,
    memoryMib: 512,
    diskSizeBytes: 1 << 30,
    vmm: 'qemu',
    accel: 'kvm',
    pid: 1,
    ip: '10.0.0.2',
    nat: false,
    tap: 'bgtap0',
    lastError: null,
    dir: '/nonexistent',
    createdAt: new Date(0).toISOString(),
    startedAt: new Date(0).toISOString(),
    touchedAt: new Date(0).toISOString(),
  };
}

/** A FAKE bangerd: answers the routes `vm ssh` and `vm run` use, with `vmName` as the VM's name. */
async function fakeDaemon(socketPath: string, vmName: string): Promise<{ requests: string[] }> {
  const requests: string[] = [];
  const op = (state: string, result?: unknown) => ({
    id: 'op-000001',
    kind: 'vm.create',
    state,
    stages: [],
    createdAt: new Date(0).toISOString(),
    ...(result ? { result } : {}),
  });
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const json = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (req.url?.startsWith('/v1/vms/')) return json(200, vmRecord(vmName));
    if (req.url?.startsWith('/v1/images/')) return json(200, { name: 'img', hasSshd: true });
    if (req.method === 'POST' && req.url === '/v1/vms') return json(202, { operation: op('running') });
    if (req.url?.startsWith('/v1/operations/op-000001/events')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`data: ${JSON.stringify({ type: 'done', operation: op('succeeded', vmRecord(vmName)) })}\n\n`);
      return;
    }
    if (req.url === '/v1/daemon') return json(200, { version: 'fake', pid: process.pid });
    json(404, { error: { code: 'not_found', message: `fake daemon: no ${req.url}` } });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(socketPath, r));
  return { requests };
}

/** A BANGER_HOME whose run/ dir is prepared by `setup`; returns the home and its socket path. */
async function homeWith(setup: (run: string) => Promise<void>): Promise<{ home: string; socket: string }> {
  const home = await mkdtemp(join(fixtures, 'h-'));
  const run = join(home, 'run');
  await setup(run);
  return { home, socket: join(run, 'bangerd.sock') };
}

function cli(home: string, args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home, PATH: `${shimDir}:${process.env.PATH ?? '/usr/bin:/bin'}` };
  delete env.BANGER_CONFIG;
  return runProcess(process.execPath, [BANGER, ...args], { env }, 60_000);
}

const assertNothingRan = () => {
  assert.equal(existsSync(canary), false, 'the ProxyCommand never ran');
  assert.equal(existsSync(shimLog), false, 'ssh was never started');
};

test('a fake daemon in a runtime dir squatted by another user is refused before any request', async () => {
  const { home, socket } = await homeWith(async (run) => {
    await mkdir(run, { mode: 0o700 });
  });
  const fake = await fakeDaemon(socket, 'dev');
  // The other user owns the dir and the socket (as when they created /tmp/banger-<uid> first).
  chownSync(socket, NOBODY, NOBODY);
  chownSync(join(home, 'run'), NOBODY, NOBODY);
  const r = await cli(home, ['vm', 'ssh', 'dev', '--', 'true']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /refusing to talk to .*bangerd\.sock: .*run is owned by uid 65534, not by you/);
  assert.match(r.stderr, /fix: remove .*run/);
  assert.deepEqual(fake.requests, [], 'the fake daemon got no request');
  assert.equal(existsSync(join(home, 'state')), false, 'no daemon was started in its place');
  assertNothingRan();
});

test('a runtime dir others may enter, a symlinked one, or a socket owned by someone else is refused too', async () => {
  const cases: Array<{ why: RegExp; setup: (run: string) => Promise<void>; after?: (socket: string) => void }> = [
    { why: /has mode 755: others may use it/, setup: (run) => mkdir(run, { mode: 0o700 }).then(() => chmod(run, 0o755)) },
    {
      why: /run is a symlink/,
      setup: async (run) => {
        await mkdir(`${run}-real`, { mode: 0o700 });
        await symlink(`${run}-real`, run);
      },
    },
    { why: /the socket is owned by uid 65534/, setup: (run) => mkdir(run, { mode: 0o700 }), after: (socket) => chownSync(socket, NOBODY, NOBODY) },
  ];
  for (const c of cases) {
    const { home, socket } = await homeWith(c.setup);
    const fake = await fakeDaemon(socket, 'dev');
    c.after?.(socket);
    const r = await cli(home, ['vm', 'ssh', 'dev', '--', 'true']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, c.why);
    assert.deepEqual(fake.requests, [], `${c.why}: the fake daemon got no request`);
    assertNothingRan();
  }
});

test('a parent dir another user can rewrite is refused (they could swap the runtime dir)', async () => {
  const parent = await mkdtemp(join(fixtures, 'p-'));
  chmodSync(parent, 0o777); // world-writable, not sticky
  const home = join(parent, 'home');
  await mkdir(join(home, 'run'), { recursive: true, mode: 0o700 });
  const fake = await fakeDaemon(join(home, 'run', 'bangerd.sock'), 'dev');
  const r = await cli(home, ['vm', 'ssh', 'dev']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /writable by others and not sticky/);
  assert.deepEqual(fake.requests, []);
});

test('a hostile VM name from a (fake) daemon in a legitimately owned dir never reaches ssh', async () => {
  for (const args of [
    ['vm', 'ssh', 'dev', '--', 'true'],
    ['vm', 'ssh', 'dev'],
    ['vm', 'run', '--', 'true'],
  ]) {
    const { home, socket } = await homeWith((run) => mkdir(run, { mode: 0o700 }));
    const fake = await fakeDaemon(socket, `-oProxyCommand=touch ${canary}`);
    const r = await cli(home, args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /the daemon returned a VM name "-oProxyCommand=touch .*" that (contains uppercase letters|may contain only)/);
    assert.ok(fake.requests.length > 0, 'the fake daemon was asked (the dir is legitimately owned)');
    assertNothingRan();
  }
});

test('a well-formed name reaches the (fake) ssh with `--` before the host', async () => {
  const { home, socket } = await homeWith((run) => mkdir(run, { mode: 0o700 }));
  await fakeDaemon(socket, 'dev');
  const r = await cli(home, ['vm', 'ssh', 'dev', '--', 'echo', 'hi there']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const argv = readFileSync(shimLog, 'utf8').trimEnd().split('\n');
  await rm(shimLog);
  assert.deepEqual(argv.slice(-3), ['--', 'dev.vm', "echo 'hi there'"]);
  assert.equal(argv.filter((a) => a === '--').length, 1);
});

test('with the real ssh, `--` keeps a hostile host from being read as an option (positive control: without it, it runs)', {
  skip: requires(spawnSync('ssh', ['-V']).status === 0, 'ssh is not installed'),
}, async (t) => {
  if (spawnSync('unshare', ['-n', 'true']).status !== 0) return t.skip('cannot create a network namespace (unshare -n)');
  const cfg = join(fixtures, 'ssh_config');
  // Any host that gets as far as connecting goes through /bin/false: no DNS, no traffic.
  await writeFile(cfg, 'Host *\n  ProxyCommand /bin/false\n  BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile /dev/null\n');
  const realSsh = (argv: string[]) => spawnSync('unshare', ['-n', '/usr/bin/ssh', ...argv], { timeout: 30_000, encoding: 'utf8' });
  const hostile = `-oProxyCommand=touch ${canary}`;

  // Positive control: the old layout (`ssh [opts] HOST -- CMD`) with this host runs the attacker's command.
  const old = ['-F', cfg, '-o', 'ConnectTimeout=5', '-o', 'ConnectionAttempts=1', `${hostile}.vm`, '--', 'true'];
  realSsh(old);
  assert.equal(existsSync(`${canary}.vm`), true, 'the hostile name is a working exploit against the old argv');
  await rm(`${canary}.vm`);

  const now = sshArgv({ config: cfg, attempts: 1, tty: false, host: `${hostile}.vm`, command: ['true'] });
  assert.equal(now[now.indexOf(`${hostile}.vm`) - 1], '--');
  const r = realSsh(now);
  assert.notEqual(r.status, 0);
  assert.equal(existsSync(`${canary}.vm`), false, 'the ProxyCommand in the host name did not run');
});
