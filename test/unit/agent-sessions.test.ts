import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { BangerError } from '../../src/api/errors.js';
import type { ProcResult } from '../../src/api/proc-schemas.js';
import { parseConfig } from '../../src/config/config.js';
import { AgentSessionService, OUTSIDE_PROC_CGROUP, WAIT_FOR_TMUX_RESTORE } from '../../src/daemon/services/agent-sessions.js';
import { type ExecSpec, ProcessService } from '../../src/daemon/services/processes.js';
import type { GuestChannel, GuestProcSpec } from '../../src/guest/guest-channel.js';
import { AGENT_PRESETS, fileSyncToml, resolveAgents } from '../../src/util/coding-agents.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';

const result = (exitCode: number, stdout = '', stderr = ''): ProcResult => ({ exitCode, signal: null, timedOut: false, stdout, stderr }) as ProcResult;

/**
 * A guest with a tmux of sessions in a Set: answers the argv the service sends (has-session,
 * the pre-check, new-session through the cgroup wrapper, list-sessions) as tmux and sh would.
 */
function fakeGuest(opts: { tmux?: boolean; programs?: string[]; dirs?: string[] } = {}) {
  const sessions = new Map<string, string>();
  const specs: ExecSpec[] = [];
  const forgotten: string[] = [];
  let n = 0;
  const exec = async (_ref: string, spec: ExecSpec) => {
    specs.push(spec);
    const id = `p-${n++}`;
    const argv = spec.argv ?? [];
    const answer = (r: ProcResult) => ({ proc: { id }, result: r });
    if (argv[0] === 'sh' && argv[2] === OUTSIDE_PROC_CGROUP) {
      const tmux = argv.slice(4);
      if (opts.tmux === false) return answer(result(127, '', 'exec: tmux: not found'));
      const name = tmux[4] as string;
      if (sessions.has(name)) return answer(result(1, '', `duplicate session: ${name}`));
      sessions.set(name, tmux[16] as string);
      return answer(result(0));
    }
    if (argv[0] === 'sh') {
      const [program, cwd] = argv.slice(4);
      if (!(opts.dirs ?? ['/root', '/root/repo']).includes(cwd as string)) return answer(result(3));
      return answer(result((opts.programs ?? ['claude', 'codex', 'pi', 'opencode']).includes(program as string) ? 0 : 4));
    }
    if (opts.tmux === false) return answer(result(127, '', 'banger: tmux: command not found'));
    if (argv[1] === 'has-session') return answer(result(sessions.has((argv[3] as string).slice(1)) ? 0 : 1));
    if (argv[1] === 'list-sessions') {
      if (!sessions.size) return answer(result(1, '', 'no server running on /tmp/tmux-0/default'));
      return answer(result(0, [...sessions].map(([s, c]) => [s, '1', '0', '1796220772', c].join('\x1f')).join('\n')));
    }
    throw new Error(`unexpected argv ${JSON.stringify(argv)}`);
  };
  const channel = { forgetProcess: async (id: string) => void forgotten.push(id) } as unknown as GuestChannel;
  return { sessions, specs, forgotten, exec, guest: async () => channel };
}

const service = (g: ReturnType<typeof fakeGuest>, workspace?: string, agents = resolveAgents({})) =>
  new AgentSessionService({ agents, exec: g.exec, guest: g.guest, vmInfo: () => ({ name: 'dev', ...(workspace ? { workspace } : {}) }) });

test('start: checks the session, the directory and the program, then one tmux call (outside the process cgroup) that records the command; again reuses it', async () => {
  const g = fakeGuest();
  const s = service(g, '/root/repo');
  const first = await s.start('dev', { agent: 'claude' });
  assert.deepEqual(first, {
    agent: 'claude',
    session: 'claude',
    created: true,
    cwd: '/root/repo',
    command: 'IS_SANDBOX=1 claude --dangerously-skip-permissions',
  });
  assert.deepEqual(
    g.specs.map((sp) => sp.argv),
    [
      // First the image's restore of saved sessions, so it cannot race this start for the name.
      ['sh', '-c', WAIT_FOR_TMUX_RESTORE],
      ['tmux', 'has-session', '-t', '=claude'],
      ['sh', '-c', '[ -d "$2" ] || exit 3; command -v "$1" >/dev/null || exit 4', 'sh', 'claude', '/root/repo'],
      [
        'sh',
        '-c',
        OUTSIDE_PROC_CGROUP,
        'sh',
        'tmux',
        'new-session',
        '-d',
        '-s',
        'claude',
        '-c',
        '/root/repo',
        '--',
        'sh',
        '-c',
        'IS_SANDBOX=1 claude --dangerously-skip-permissions',
        ';',
        'set-option',
        '-t',
        '=claude:',
        '@banger-command',
        'IS_SANDBOX=1 claude --dangerously-skip-permissions',
      ],
    ],
  );
  // The pre-check sees the agent's environment; every call is bounded and forgotten afterwards.
  assert.deepEqual(g.specs[2]?.env, ['IS_SANDBOX=1']);
  assert.ok(g.specs.every((sp) => sp.timeoutMs !== undefined && sp.cwd === '/'));
  assert.deepEqual(g.forgotten, ['p-0', 'p-1', 'p-2', 'p-3']);

  const again = await s.start('dev', { agent: 'claude', cwd: '/root' });
  assert.equal(again.created, false);
  assert.equal(g.specs.length, 6, 'a second start only waits for the restore and asks has-session');
  assert.equal(g.sessions.size, 1);
});

test('start: a lost race (duplicate session) is a reuse; cwd defaults to /root without a workspace', async () => {
  const g = fakeGuest();
  const s = service(g);
  // Another start created the session between has-session and new-session.
  const realExec = g.exec;
  let raced = false;
  const racing = new AgentSessionService({
    agents: resolveAgents({}),
    exec: async (ref, spec) => {
      if (!raced && spec.argv?.[2] === OUTSIDE_PROC_CGROUP) {
        raced = true;
        g.sessions.set('codex', 'other');
      }
      return realExec(ref, spec);
    },
    guest: g.guest,
    vmInfo: () => ({ name: 'dev' }),
  });
  const r = await racing.start('dev', { agent: 'codex' });
  assert.equal(r.created, false);
  assert.equal(r.cwd, '/root');
  assert.equal((await s.start('dev', { agent: 'pi' })).cwd, '/root');
});

test('start: clear errors for an unknown agent, a missing program, directory or tmux; hostile config never reaches a shell unquoted', async () => {
  const isErr = (code: string, re: RegExp) => (e: unknown) => e instanceof BangerError && e.code === code && re.test(e.message);
  await assert.rejects(service(fakeGuest()).start('dev', { agent: 'aider' }), isErr('not_found', /no coding agent named "aider"/));
  await assert.rejects(
    service(fakeGuest({ programs: [] })).start('dev', { agent: 'pi' }),
    isErr('precondition_failed', /pi \(agent pi\) is not installed in VM dev/),
  );
  await assert.rejects(service(fakeGuest()).start('dev', { agent: 'pi', cwd: '/nope' }), isErr('not_found', /\/nope is not a directory in VM dev/));
  await assert.rejects(service(fakeGuest({ tmux: false })).start('dev', { agent: 'pi' }), isErr('precondition_failed', /tmux is not installed in VM dev/));
  await assert.rejects(service(fakeGuest()).start('dev', { agent: 'pi', cwd: '/root/a\nb' }), isErr('bad_request', /control character/));
  const g0 = fakeGuest();
  await assert.rejects(service(g0).start('dev', { agent: 'pi', cwd: '/root/#(id)' }), isErr('bad_request', /contains "#"/));
  await assert.rejects(service(g0).start('dev', { agent: 'pi', cwd: '/root/x;' }), isErr('bad_request', /ends with ";"/));
  assert.deepEqual(g0.specs, [], 'refused before anything reached the guest');

  const g = fakeGuest({ programs: ['evil'] });
  const agents = resolveAgents({ evil: { command: ['evil', "'; touch /tmp/pwned; '", '$(id)'], env: { K: '`id`' } } });
  const r = await service(g, undefined, agents).start('dev', { agent: 'evil' });
  // The command line is what the shell reads back as exactly the configured words.
  const words = execFileSync('/bin/sh', ['-c', `set -- ${r.command.replace(/^K=\S+ /, '')}; printf '%s\\n' "$@"`], { encoding: 'utf8' });
  assert.deepEqual(words.split('\n').slice(0, -1), ['evil', "'; touch /tmp/pwned; '", '$(id)']);
  // The environment reaches the guest's line exactly (the answer shows K=…, below).
  const stored = g.sessions.get('evil') as string;
  assert.equal(execFileSync('/bin/sh', ['-c', `${stored.split(' ')[0]} sh -c 'printf %s "$K"'`], { encoding: 'utf8' }), '`id`');
  assert.equal(r.command, `K=… evil ''\\''; touch /tmp/pwned; '\\''' '$(id)'`);
});

test('list: sessions with their recorded command; no tmux server is an empty list', async () => {
  const g = fakeGuest();
  const s = service(g);
  assert.deepEqual(await s.list('dev'), []);
  await s.start('dev', { agent: 'opencode' });
  assert.deepEqual(await s.list('dev'), [{ name: 'opencode', windows: 1, attached: 0, createdAt: new Date(1796220772000).toISOString(), command: 'opencode' }]);
  await assert.rejects(service(fakeGuest({ tmux: false })).list('dev'), /tmux is not installed/);
});

test('env values (API keys) go to the guest, never into an answer: start, list, definitions', async () => {
  const SECRET = "sk-ant-do-not-leak 'x'";
  const g = fakeGuest();
  const s = service(g, undefined, resolveAgents({ claude: { env: { ANTHROPIC_API_KEY: SECRET } } }));
  const started = await s.start('dev', { agent: 'claude' });
  assert.equal(started.command, 'IS_SANDBOX=1 ANTHROPIC_API_KEY=… claude --dangerously-skip-permissions');
  // The guest got it (its @banger-command, so a restore runs it again) ...
  assert.ok(g.sessions.get('claude')?.includes('sk-ant-do-not-leak'));
  // ... and lists it back: the list hides it.
  const listed = await s.list('dev');
  assert.equal(listed[0]?.command, 'IS_SANDBOX=1 ANTHROPIC_API_KEY=… claude --dangerously-skip-permissions');
  const again = await s.start('dev', { agent: 'claude' });
  for (const answer of [started, again, listed, s.definitions()]) assert.ok(!JSON.stringify(answer).includes('do-not-leak'), JSON.stringify(answer));
});

test('definitions: env names only, not their values (possibly secrets)', () => {
  const s = service(fakeGuest(), undefined, resolveAgents({ claude: { env: { ANTHROPIC_API_KEY: 'sk-secret' } } }));
  const claude = s.definitions().find((a) => a.name === 'claude');
  assert.deepEqual(claude?.envKeys, ['IS_SANDBOX', 'ANTHROPIC_API_KEY']);
  assert.ok(!JSON.stringify(s.definitions()).includes('sk-secret'));
});

/** A guest that ignores the timeout it is given: every process it runs never ends by itself. */
class NeverEndingGuest extends HostFakeGuest {
  override startProcess(spec: GuestProcSpec) {
    const { timeoutMs: _ignored, ...rest } = spec;
    return super.startProcess({ ...rest, argv: ['sleep', '600'] });
  }
}

test('a guest that never ends a tmux call: the host stops waiting at its own bound (timeout), kills and forgets the process', async () => {
  const guest = new NeverEndingGuest();
  const procs = new ProcessService({ vmGuest: async () => ({ vm: { id: 'v1', name: 'dev' }, channel: guest }), log: pino({ level: 'silent' }) });
  const s = new AgentSessionService({
    agents: resolveAgents({}),
    exec: (ref, spec, opts) => procs.exec(ref, spec, opts),
    guest: (ref) => procs.guest(ref),
    vmInfo: () => ({ name: 'dev' }),
    hostBoundMs: 300,
  });
  await assert.rejects(
    s.list('dev'),
    (e: unknown) => e instanceof BangerError && e.code === 'timeout' && /tmux call in VM dev did not end within 0.3 s/.test(e.message),
  );
  await assert.rejects(s.start('dev', { agent: 'pi' }), (e: unknown) => e instanceof BangerError && e.code === 'timeout');
  assert.equal(guest.started.length, 2);
  // The clean-up runs in the background: the killed processes are forgotten once they ended.
  for (let i = 0; i < 100 && guest.procs.size > 0; i++) await sleep(50);
  assert.equal(guest.procs.size, 0, 'every process was killed and forgotten');
  // The caller's own signal still wins: a request whose client left is cancelled, not timed out.
  const left = new AbortController();
  left.abort();
  await assert.rejects(s.list('dev', left.signal), (e: unknown) => e instanceof BangerError && e.code === 'cancelled');
});

test("every preset's [[file_sync]] TOML is a valid config", () => {
  const text = AGENT_PRESETS.flatMap((p) => p.authPaths.map(fileSyncToml)).join('\n\n');
  const cfg = parseConfig(text, 'presets.toml');
  assert.equal(
    cfg.file_sync.length,
    AGENT_PRESETS.reduce((n, p) => n + p.authPaths.length, 0),
  );
  assert.deepEqual(cfg.file_sync[0], { host: '~/.claude.json', guest: '/root/.claude.json', mode: 0o600 });
});

test('docs/agents.md: every TOML block is a valid config, and the [[file_sync]] presets are exactly the code’s', () => {
  const doc = readFileSync(new URL('../../../docs/agents.md', import.meta.url), 'utf8');
  const blocks = [...doc.matchAll(/```toml\n([\s\S]*?)```/g)].map((m) => m[1] as string);
  assert.ok(blocks.length >= AGENT_PRESETS.length + 1);
  for (const b of blocks) parseConfig(b, 'docs/agents.md');
  for (const p of AGENT_PRESETS) {
    const want = p.authPaths.map(fileSyncToml).join('\n\n');
    assert.ok(
      blocks.some((b) => b.trim() === want),
      `docs/agents.md has the [[file_sync]] block of ${p.name}:\n${want}`,
    );
  }
});
