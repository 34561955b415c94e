import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { Proc } from '../../src/api/proc-schemas.js';
import { encodeFrame, FrameDecoder } from '../../src/util/frames.js';
import { BANGER } from '../helpers/banger.js';
import { baseProc, readBody, sse } from '../helpers/fake-daemon-fixtures.js';
import { requires } from '../helpers/prereq.js';

/**
 * The process CLI against a FAKE bangerd (a small HTTP server on the home's socket, nothing of
 * banger's daemon): what `vm exec`, `vm proc …` and `vm session …` send, and what they make of the
 * answers — raw program bytes to the right stream, exit statuses as a shell reports them, sanitised
 * metadata, stdin through the attach frames. The real daemon and agent are exercised by
 * test/e2e/vm-exec.test.ts on a real VM.
 */

interface Seen {
  method: string;
  url: string;
  body: unknown;
}

/** How the fake guest "ends" a command, by its argv[0]. */
const ENDINGS: Record<string, Partial<Proc>> = {
  ok: { exitCode: 0 },
  exit3: { exitCode: 3 },
  nosuch: { exitCode: 127, code: 'command_not_found' },
  killed: { exitCode: null, signal: 'KILL' },
  slow: { exitCode: null, signal: 'KILL', timedOut: true },
};

/** Every byte value, escape sequences included: program output must reach stdout untouched. */
const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const HOSTILE = '\x1b]0;pwned\x07\x1b[2J';

let dir: string;
let home: string;
let repo: string;
let server: Server;
let seen: Seen[] = [];
let workspace: { hostPath: string; guestPath: string; baseCommit: string } | null = null;

function vmRecord() {
  return {
    id: 'f'.repeat(32),
    name: 'dev',
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
    workspace,
  };
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

/** The fake's attach: echoes what the client writes on stdin to stdout, ends at the client's EOF (or at once for a PTY `tty`). */
function attach(socket: Socket, url: string): void {
  socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-attach\r\n\r\n');
  const procId = /\/procs\/([^/?]+)\/attach/.exec(url)?.[1] ?? '?';
  const end = (over: Partial<Proc>) => socket.end(encodeFrame('R', JSON.stringify({ ok: true, proc: baseProc({ id: procId, ...over }) })));
  if (procId === 'pty-tty') {
    socket.write(encodeFrame('D', '/dev/pts/0\r\n', 1));
    end({ pty: true });
    return;
  }
  // An interactive PTY process: says it is there, then echoes.
  if (procId.startsWith('pty-')) socket.write(encodeFrame('D', 'ready\r\n', 1));
  const decoder = new FrameDecoder();
  socket.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) {
      if (f.type === 'D' && f.stream === 0) socket.write(encodeFrame('D', f.payload, 1));
      if (f.type === 'E') end({ exitCode: 0 });
    }
  });
}

before(async () => {
  dir = await mkdtemp('/tmp/bg-fakeexec-');
  home = join(dir, 'home');
  await mkdir(join(home, 'run'), { recursive: true, mode: 0o700 });
  repo = join(dir, 'repo');
  await mkdir(repo);
  const git = (...args: string[]) => spawnSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@e', ...args], { encoding: 'utf8' });
  git('init', '-q');
  await writeFile(join(repo, 'f'), 'x');
  git('add', 'f');
  git('commit', '-qm', 'one');

  // The FAKE ssh `vm run` starts for a shell: records its argv, exits 5.
  await mkdir(join(dir, 'bin'));
  await writeFile(join(dir, 'bin', 'ssh'), `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a" >> '${join(dir, 'ssh-argv')}'; done\nexit 5\n`, { mode: 0o755 });

  server = createServer(async (req, res) => {
    const body = await readBody(req);
    const url = req.url ?? '';
    seen.push({ method: req.method ?? '', url, body });
    const json = (status: number, b: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(b));
    const procs = `/v1/vms/${'f'.repeat(32)}/procs`;
    if (req.method === 'GET' && url === '/v1/vms/dev') return json(200, vmRecord());
    // vm run: create (an operation), prepare (another), the image (for ssh), delete.
    const op = (id: string, kind: string, result?: unknown) => ({
      id,
      kind,
      target: 'dev',
      state: result ? 'succeeded' : 'running',
      stages: [],
      createdAt: new Date(0).toISOString(),
      ...(result ? { result } : {}),
    });
    const prepared = {
      workspace: { hostPath: repo, guestPath: '/root/repo', baseCommit: '0'.repeat(40), mode: 'full', branch: null, preparedAt: new Date(0).toISOString() },
      untrackedSkipped: 2,
      files: 3,
      bytes: 10,
    };
    if (req.method === 'POST' && url === '/v1/vms') return json(202, { operation: op('op-create', 'vm.create') });
    if (req.method === 'POST' && url === `/v1/vms/${'f'.repeat(32)}/workspace`) return json(202, { operation: op('op-prepare', 'vm.workspace') });
    if (req.method === 'GET' && url.startsWith('/v1/operations/op-')) {
      const id = url.includes('op-create') ? 'op-create' : 'op-prepare';
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      return res.end(sse([{ type: 'done', operation: op(id, id, id === 'op-create' ? vmRecord() : prepared) }]));
    }
    if (req.method === 'GET' && url === '/v1/images/img') return json(200, { name: 'img', hasSshd: true });
    if (req.method === 'POST' && url === '/v1/vms/actions') return json(200, { results: [{ ref: 'dev', ok: true, name: 'dev' }] });
    if (req.method === 'POST' && url === procs) {
      const b = body as { argv: string[]; mode: string; name?: string; pty?: unknown };
      const argv0 = b.argv[0] as string;
      // A name with escape sequences (as a hostile guest might answer): the CLI must print it inert.
      const name = b.name === 'evil' ? `evil${HOSTILE}` : (b.name ?? null);
      if (b.mode === 'detach') return json(201, baseProc({ id: b.pty ? `pty-${argv0}` : 'p9', name, state: 'running', exitCode: null, argv: b.argv }));
      const start = baseProc({ state: 'running', exitCode: null, argv: b.argv });
      const events: unknown[] = [{ type: 'start', proc: start }];
      if (argv0 === 'greet') events.push({ type: 'stdout', offset: 0, data: b64('out\n') }, { type: 'stderr', offset: 0, data: b64('err\n') });
      if (argv0 === 'bytes') events.push({ type: 'stdout', offset: 0, data: b64(ALL_BYTES) });
      events.push({ type: 'exit', proc: baseProc({ argv: b.argv, ...(ENDINGS[argv0] ?? {}) }) });
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      return res.end(sse(events));
    }
    if (req.method === 'GET' && url === procs) {
      return json(200, {
        procs: [
          baseProc({ id: 'p1', name: 'web', state: 'running', exitCode: null, argv: ['python3', HOSTILE] }),
          baseProc({ id: 'p2', argv: ['make'], exitCode: 2 }),
        ],
      });
    }
    if (req.method === 'GET' && url.startsWith(`${procs}/p1/output`)) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      return res.end(
        sse([
          { type: 'stdout', offset: 10, data: b64('later out\n') },
          { type: 'stderr', offset: 2, data: b64('later err\n') },
          { type: 'exit', proc: baseProc({}) },
        ]),
      );
    }
    if (req.method === 'GET' && (url === `${procs}/p9` || url.startsWith(`${procs}/pty-`))) {
      return json(200, baseProc({ id: url.slice(procs.length + 1), state: 'running', exitCode: null, stdin: 'open' }));
    }
    if (req.method === 'GET' && url === `${procs}/cat`) return json(200, baseProc({ id: 'p7', name: 'cat', state: 'running', stdin: 'open', stdinBytes: 5 }));
    if (req.method === 'GET' && url === `${procs}/done`) return json(200, baseProc({ id: 'p8', stdin: 'closed' }));
    if (req.method === 'POST' && url === `${procs}/p7/stdin`) return json(200, { offset: 5 + Buffer.from((body as { data: string }).data, 'base64').length });
    if (req.method === 'POST' && url.endsWith('/resize')) return json(200, {});
    if (req.method === 'POST' && url.endsWith('/signal')) return json(200, baseProc({ id: 'p1', name: 'web', state: 'running' }));
    if (req.method === 'POST' && url === `${procs}/p1/wait`) return json(200, { proc: baseProc({ exitCode: 4 }), result: { exitCode: 4 } });
    json(404, { error: { code: 'not_found', message: `fake daemon: no ${req.method} ${url}` } });
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    seen.push({ method: 'UPGRADE', url: req.url ?? '', body: undefined });
    attach(socket, req.url ?? '');
  });
  await new Promise<void>((r) => server.listen(join(home, 'run', 'bangerd.sock'), r));
});

after(async () => {
  server?.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  seen = [];
  workspace = null;
});

/** The CLI with raw stdout/stderr bytes (and optional stdin). */
function cli(args: string[], input?: string, cwd?: string): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home, PATH: `${join(dir, 'bin')}:${process.env.PATH ?? '/usr/bin:/bin'}` };
    delete env.BANGER_CONFIG;
    const child = spawn(process.execPath, [BANGER, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'], ...(cwd ? { cwd } : {}) });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }));
    child.stdin.end(input);
  });
}

const started = () => seen.find((s) => s.method === 'POST' && s.url.endsWith('/procs'))?.body as Record<string, unknown> | undefined;

describe('vm exec against a fake daemon', () => {
  test('stdout and stderr go to their own streams; exit 0', async () => {
    const r = await cli(['vm', 'exec', 'dev', '--', 'greet']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'out\n');
    assert.equal(r.stderr, 'err\n');
    assert.deepEqual(started(), { argv: ['greet'], stdin: 'null', mode: 'stream' }, 'no cwd without a workspace: the guest default');
  });

  test('exit statuses: the code, 127 with a message, 128+N for a signal, 124 for a timeout', async () => {
    const cases: Array<[string, number, RegExp | null]> = [
      ['ok', 0, null],
      ['exit3', 3, null],
      ['nosuch', 127, /nosuch: command not found in the guest \(exit 127\)/],
      ['killed', 137, /killed by SIGKILL \(exit 137\)/],
      ['slow', 124, /killed after its timeout of 1s \(exit 124\)/],
    ];
    for (const [cmd, code, notice] of cases) {
      const r = await cli(['vm', 'exec', 'dev', '--timeout', '1s', '--', cmd]);
      assert.equal(r.code, code, `${cmd}: ${r.stderr}`);
      if (notice) assert.match(r.stderr, notice, cmd);
      else assert.equal(r.stderr, '', cmd);
    }
  });

  test('program output is passed through byte for byte (no sanitising), as ssh does', async () => {
    const r = await cli(['vm', 'exec', 'dev', '--', 'bytes']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout, ALL_BYTES);
  });

  test('flags become the start request: cwd, env, user, timeout, name', async () => {
    const r = await cli([
      'vm',
      'exec',
      'dev',
      '--cwd',
      '/srv',
      '-e',
      'A=1',
      '-e',
      'B=x y',
      '-u',
      'nobody',
      '--timeout',
      '2m',
      '--name',
      'job',
      '--',
      'ok',
      '-la',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(started(), {
      argv: ['ok', '-la'],
      cwd: '/srv',
      env: ['A=1', 'B=x y'],
      user: 'nobody',
      timeoutMs: 120_000,
      name: 'job',
      stdin: 'null',
      mode: 'stream',
    });
  });

  test('in the workspace by default, with a warning when the host repository moved since prepare', async () => {
    const head = spawnSync('git', ['-C', repo, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
    workspace = { hostPath: repo, guestPath: '/root/repo', baseCommit: head };
    const same = await cli(['vm', 'exec', 'dev', '--', 'ok']);
    assert.equal(same.code, 0, same.stderr);
    assert.equal(started()?.cwd, '/root/repo');
    assert.equal(same.stderr, '', 'no warning while HEAD is the base');

    seen = [];
    workspace = { hostPath: repo, guestPath: '/root/repo', baseCommit: '0'.repeat(40) };
    const moved = await cli(['vm', 'exec', 'dev', '--', 'ok']);
    assert.equal(moved.code, 0, moved.stderr);
    assert.match(moved.stderr, new RegExp(`warning: ${repo} is at ${head.slice(0, 12)} but dev's workspace was prepared from 000000000000`));

    seen = [];
    workspace = { hostPath: join(dir, 'gone'), guestPath: '/root/repo', baseCommit: '0'.repeat(40) };
    const gone = await cli(['vm', 'exec', 'dev', '--', 'ok']);
    assert.equal(gone.stderr, '', 'silent when the host repository is missing');
    assert.equal(started()?.cwd, '/root/repo');
  });

  test('-i starts with a stdin pipe, sends stdin through the attach and EOF at its end', async () => {
    const r = await cli(['vm', 'exec', '-i', 'dev', '--', 'cat'], 'hello\nworld\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'hello\nworld\n');
    assert.deepEqual(started(), { argv: ['cat'], stdin: 'pipe', mode: 'detach' });
    assert.ok(
      seen.some((s) => s.method === 'UPGRADE' && s.url.endsWith('/procs/p9/attach?stdoutFrom=0&stderrFrom=0')),
      JSON.stringify(seen),
    );
  });

  test('-t asks for a PTY of a default size when stdout is not a terminal, and passes its output through', async () => {
    const r = await cli(['vm', 'exec', '-t', 'dev', '--', 'tty']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), '/dev/pts/0\r\n');
    assert.deepEqual(started(), { argv: ['tty'], stdin: 'pipe', pty: { rows: 24, cols: 80 }, mode: 'detach' });
  });

  test('--detach prints the name (or id) and returns', async () => {
    const r = await cli(['vm', 'exec', 'dev', '-d', '--name', 'srv', '--', 'sleep', '99']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'srv\n');
    assert.match(r.stderr, /banger vm proc logs -f dev srv/);
    const evil = await cli(['vm', 'exec', 'dev', '-d', '--name', 'evil', '--', 'sleep', '99']);
    assert.equal(evil.code, 0, evil.stderr);
    assert.equal(evil.stdout.toString(), 'evil]0;pwned[2J\n', 'control characters removed from the printed name');
    assert.doesNotMatch(evil.stderr, /[\x1b\x07]/);
    seen = [];
    const s = await cli(['vm', 'session', 'start', 'dev', '--name', 'repl', '--', 'python3']);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(started()?.stdin, 'pipe', 'a session keeps its stdin open');
    assert.equal(started()?.name, 'repl');
  });
});

describe('vm proc against a fake daemon', () => {
  test('list: a table whose guest-supplied fields are sanitised; --json as given', async () => {
    const r = await cli(['vm', 'ps', 'dev']);
    assert.equal(r.code, 0, r.stderr);
    const text = r.stdout.toString();
    assert.match(text, /^ID\s+NAME\s+STATE\s+PID\s+TTY\s+STARTED\s+COMMAND$/m);
    assert.match(text, /^p1\s+web\s+running\s+42\s+-\s+5s ago\s+python3 \]0;pwned\[2J$/m);
    assert.match(text, /^p2\s+-\s+exited \(2\)/m);
    assert.doesNotMatch(text, /[\x1b\x07]/, 'no escape sequence reaches the terminal');
    const sessions = await cli(['vm', 'session', 'list', 'dev']);
    assert.match(sessions.stdout.toString(), /^p1\s+web/m);
    assert.doesNotMatch(sessions.stdout.toString(), /^p2/m, 'sessions are the named processes');
    const json = JSON.parse((await cli(['vm', 'proc', 'list', 'dev', '--json'])).stdout.toString());
    assert.equal(json.procs[0].argv[1], HOSTILE, '--json carries the data unchanged (JSON escapes it)');
  });

  test('logs: offsets in the query, stdout and stderr apart', async () => {
    const r = await cli(['vm', 'proc', 'logs', 'dev', 'p1', '--from', '10', '--stderr-from', '2', '-f']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'later out\n');
    assert.equal(r.stderr, 'later err\n');
    assert.ok(
      seen.some((s) => s.url.endsWith('/procs/p1/output?stdoutFrom=10&stderrFrom=2&follow=1')),
      JSON.stringify(seen),
    );
  });

  test('send appends at the current stdin offset (--eof closes); a closed stdin is refused', async () => {
    const r = await cli(['vm', 'session', 'send', 'dev', 'cat', 'hi', '-l', '--eof']);
    assert.equal(r.code, 0, r.stderr);
    const write = seen.find((s) => s.url.endsWith('/procs/p7/stdin'));
    assert.deepEqual(write?.body, { offset: 5, data: b64('hi\n'), eof: true });
    const closed = await cli(['vm', 'proc', 'send', 'dev', 'done', 'x']);
    assert.equal(closed.code, 1);
    assert.match(closed.stderr, /the stdin of p8 is closed/);
  });

  test('kill sends the signal as a number; session stop is TERM and session kill KILL; wait passes the status through', async () => {
    for (const [args, signal] of [
      [['vm', 'proc', 'kill', 'dev', 'p1', '-s', 'KILL'], 9],
      [['vm', 'proc', 'kill', 'dev', 'p1'], 15],
      [['vm', 'session', 'stop', 'dev', 'p1'], 15],
      [['vm', 'session', 'kill', 'dev', 'p1'], 9],
    ] as const) {
      seen = [];
      const r = await cli([...args]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(seen.find((s) => s.url.endsWith('/procs/p1/signal'))?.body, { signal }, args.join(' '));
    }
    const w = await cli(['vm', 'proc', 'wait', 'dev', 'p1']);
    assert.equal(w.code, 4, w.stderr);
    assert.deepEqual(seen.find((s) => s.url.endsWith('/procs/p1/wait'))?.body, { maxBuffer: 0 });
  });
});

describe('vm exec -it on a real terminal (script(1)) against a fake daemon', {
  skip: requires(existsSync('/usr/bin/script'), 'script(1) (util-linux) is not installed'),
}, () => {
  test('raw mode while attached, Ctrl-P Ctrl-Q detaches (the keys never reach the process), the terminal is restored', { timeout: 120_000 }, async (t) => {
    const q = (w: string) => `'${w.replace(/'/g, "'\\''")}'`;
    const before = join(dir, 'stty-before');
    const afterFile = join(dir, 'stty-after');
    const inner = [
      'stty rows 33 cols 101',
      `stty -g > ${q(before)}`,
      `${[process.execPath, BANGER, 'vm', 'exec', '-it', 'dev', '--', 'cat'].map(q).join(' ')}`,
      'echo "rc=$?"',
      `stty -g > ${q(afterFile)}`,
    ].join('; ');
    const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home };
    delete env.BANGER_CONFIG;
    const child = spawn('script', ['-qec', inner, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    // Without raw mode the keys would sit in the line buffer and the CLI would never end.
    t.after(() => child.kill('SIGKILL'));
    let out = '';
    const ended = new Promise<number | null>((resolve) => child.on('close', resolve));
    let sent = false;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('latin1');
      // The fake says "ready" once attached: the CLI set raw mode before it could print that.
      if (!sent && out.includes('ready')) {
        sent = true;
        child.stdin.write('hello\x10\x11more');
      }
    });
    const code = await ended;
    assert.equal(code, 0, out);
    assert.ok(sent, out);
    assert.match(out, /hello/, 'typed bytes reached the process (echoed by the fake)');
    assert.doesNotMatch(out, /more/, 'nothing after the detach keys was sent');
    assert.doesNotMatch(out.slice(out.indexOf('ready')), /\x10|\x11/, 'the detach keys themselves were not forwarded');
    assert.match(out, /detached from pty-cat \(still running\); again: banger vm proc attach dev pty-cat/);
    assert.match(out, /rc=0/);
    assert.equal(readFileSync(afterFile, 'utf8'), readFileSync(before, 'utf8'), 'the terminal settings are as before');
    const upgrades = seen.filter((s) => s.method === 'UPGRADE');
    assert.equal(upgrades.length, 1);
    assert.deepEqual((started() as { pty?: unknown }).pty, { rows: 33, cols: 101 }, "the PTY starts at the local terminal's size");
    assert.deepEqual(seen.find((s) => s.url.endsWith('/procs/pty-cat/resize'))?.body, { rows: 33, cols: 101 }, 'and is sized again once attached');
  });

  test('a SIGTERM to the CLI in raw mode detaches (exit 143) and restores the terminal; the process is not signalled', { timeout: 120_000 }, async (t) => {
    const q = (w: string) => `'${w.replace(/'/g, "'\\''")}'`;
    const before = join(dir, 'stty-before-2');
    const afterFile = join(dir, 'stty-after-2');
    // `exec` keeps the pid the shell printed: the test signals exactly the CLI.
    const cli = [process.execPath, BANGER, 'vm', 'exec', '-it', 'dev', '--', 'cat'].map(q).join(' ');
    const inner = [`stty -g > ${q(before)}`, `sh -c ${q(`echo PID=$$; exec ${cli}`)}`, 'echo "rc=$?"', `stty -g > ${q(afterFile)}`].join('; ');
    const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home };
    delete env.BANGER_CONFIG;
    const child = spawn('script', ['-qec', inner, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    t.after(() => child.kill('SIGKILL'));
    let out = '';
    let signalled = false;
    const ended = new Promise<number | null>((resolve) => child.on('close', resolve));
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('latin1');
      const pid = Number(/PID=(\d+)/.exec(out)?.[1]);
      if (!signalled && pid && out.includes('ready')) {
        signalled = true;
        process.kill(pid, 'SIGTERM');
      }
    });
    assert.equal(await ended, 0, out);
    assert.ok(signalled, out);
    assert.match(out, /detached from pty-cat/);
    assert.match(out, /rc=143/);
    assert.equal(readFileSync(afterFile, 'utf8'), readFileSync(before, 'utf8'), 'the terminal settings are as before');
    assert.equal(
      seen.some((s) => s.url.endsWith('/signal')),
      false,
      'the process was left alone',
    );
  });
});

describe('vm run with a repository against a fake daemon', () => {
  const posted = (suffix: string) => seen.filter((x) => x.method === 'POST' && x.url.endsWith(suffix)).map((x) => x.body);

  test('./repo -- CMD: create, prepare (a note for skipped untracked files), the command through the agent in the workspace, --rm', async () => {
    const r = await cli(['vm', 'run', '--rm', '--image', 'img', './repo', '--', 'exit3', '-x'], undefined, dir);
    assert.equal(r.code, 3, r.stderr);
    assert.deepEqual(posted('/workspace'), [{ hostPath: repo }]);
    assert.equal((posted('/v1/vms')[0] as { waitFor?: string }).waitFor, 'agent', 'a command needs no sshd: ready is the agent');
    assert.deepEqual(started(), { argv: ['exit3', '-x'], cwd: '/root/repo', stdin: 'null', mode: 'stream' }, 'through the process API, no ssh');
    assert.match(r.stderr, /note: 2 untracked file\(s\) were not copied/);
    assert.match(r.stderr, /deleted dev/);
    assert.deepEqual(posted('/v1/vms/actions'), [{ action: 'delete', refs: ['f'.repeat(32)] }]);
  });

  test('--wait-for checks go with the create (in order); a command still waits only for the agent first unless ssh was asked', async () => {
    const r = await cli([
      'vm',
      'run',
      '--rm',
      '--image',
      'img',
      '--wait-for',
      'port:8080',
      '--wait-for',
      'test -e /root/go',
      '--wait-timeout',
      '2m',
      '--',
      'exit3',
    ]);
    assert.equal(r.code, 3, r.stderr);
    assert.deepEqual(posted('/v1/vms')[0], {
      image: 'img',
      nat: false,
      start: true,
      waitFor: 'agent',
      readyWhen: [
        { kind: 'port', port: 8080 },
        { kind: 'command', command: 'test -e /root/go' },
      ],
      readyTimeoutMs: 120_000,
    });
    const ssh = await cli(['vm', 'run', '--rm', '--image', 'img', '--wait-for', 'port:80', '--wait-for', 'ssh', '--', 'exit3']);
    assert.equal(ssh.code, 3, ssh.stderr);
    assert.equal((posted('/v1/vms')[1] as { waitFor?: string }).waitFor, 'ssh');
    const bad = await cli(['vm', 'run', '--rm', '--image', 'img', '--wait-for', 'port:0', '--', 'exit3']);
    assert.equal(bad.code, 2, 'a usage error');
    assert.match(bad.stderr, /port:N takes a TCP port from 1 to 65535/);
    assert.equal(posted('/v1/vms').length, 2, 'nothing was created for it');
  });

  test('./repo alone: an ssh shell started in the workspace, its status passed through', async () => {
    await rm(join(dir, 'ssh-argv'), { force: true });
    const r = await cli(['vm', 'run', '--rm', '--image', 'img', '--repo', repo]);
    assert.equal(r.code, 5, r.stderr);
    const argv = (await readFile(join(dir, 'ssh-argv'), 'utf8')).trimEnd().split('\n');
    assert.deepEqual(argv.slice(-3), ['--', 'dev.vm', `cd /root/repo && exec "\${SHELL:-/bin/sh}" -l`]);
    assert.equal((posted('/v1/vms')[0] as { waitFor?: string }).waitFor, undefined, 'a shell is ssh: ready waits for sshd (the default)');
    assert.equal(started(), undefined, 'a shell is ssh, not a guest process');
  });

  test('after -- a directory is the command; without a repository nothing is prepared; -d names the workspace', async () => {
    const r = await cli(['vm', 'run', '--rm', '--image', 'img', '--', repo]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(posted('/workspace'), []);
    assert.deepEqual(started()?.argv, [repo]);
    assert.equal(started()?.cwd, undefined);
    seen = [];
    const d = await cli(['vm', 'run', '-d', '--image', 'img', repo]);
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stdout.toString(), /dev is running with the workspace in \/root\/repo/);
    assert.match(d.stdout.toString(), /banger vm exec dev -- make test/);
    assert.deepEqual(posted('/v1/vms/actions'), [], '-d keeps the VM');
  });
});
