/**
 * AgentSessionService with a REAL tmux (a private server: a `tmux` first on PATH adds `-S` with a
 * socket in this test's directory) through ProcessService over the host-run fake guest: the
 * sessions it creates, their `@banger-command`, reuse, the list of real `list-sessions` output,
 * and a stand-in agent that receives hostile arguments and environment exactly as configured.
 * The cgroup move of the real script is left out (it would move this host's processes); a real
 * VM with the agents image exercises it (the lead's e2e).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { BangerError } from '../../src/api/errors.js';
import { AgentSessionService } from '../../src/daemon/services/agent-sessions.js';
import { ProcessService } from '../../src/daemon/services/processes.js';
import { resolveAgents } from '../../src/util/coding-agents.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { requires } from '../helpers/prereq.js';

const REAL_TMUX = spawnSync('sh', ['-c', 'command -v tmux'], { encoding: 'utf8' }).stdout.trim();
const skip = requires(REAL_TMUX !== '', 'tmux on the host');

let dir: string;
let sock: string;
let work: string;
let svc: AgentSessionService;
let savedPath: string | undefined;
const guest = new HostFakeGuest();
/** An [agents.X] env value: the agent gets it, no answer shows it. */
const SECRET = "sk-do-not-leak 'q' $x";

const tmux = (...args: string[]) => execFileSync(REAL_TMUX, ['-S', sock, ...args], { encoding: 'utf8' });

/** Waits for a file the stand-in agent writes (it runs in the tmux server, not in the call). */
async function fileOf(path: string): Promise<string> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await sleep(25);
  return readFileSync(path, 'utf8');
}

before(async () => {
  if (!REAL_TMUX) return;
  dir = await mkdtemp('/tmp/bg-agtmux-');
  sock = join(dir, 'tmux.sock');
  work = join(dir, 'work dir');
  await mkdir(work);
  await mkdir(join(dir, 'bin'));
  await writeFile(join(dir, 'bin', 'tmux'), `#!/bin/sh\nexec '${REAL_TMUX}' -f /dev/null -S '${sock}' "$@"\n`, { mode: 0o755 });
  // The stand-in agent: records its arguments and one variable in its working directory, then waits for input as an agent does.
  await writeFile(
    join(dir, 'bin', 'stand-in-agent'),
    `#!/bin/sh\n{ pwd; printf '%s\\n' "$@"; printf 'MARK=%s\\n' "$MARK"; printf 'API_KEY=%s\\n' "$API_KEY"; } > ./agent-ran.txt\nread -r line\n`,
    { mode: 0o755 },
  );
  // What a `#(banger-canary)` tmux format would run.
  await writeFile(join(dir, 'bin', 'banger-canary'), `#!/bin/sh\ntouch '${join(dir, 'canary-ran')}'\n`, { mode: 0o755 });
  // HostFakeGuest's processes take this process's PATH.
  savedPath = process.env.PATH;
  process.env.PATH = `${join(dir, 'bin')}:${process.env.PATH ?? '/usr/bin:/bin'}`;
  const procs = new ProcessService({ vmGuest: async () => ({ vm: { id: 'v1', name: 'dev' }, channel: guest }), log: pino({ level: 'silent' }) });
  svc = new AgentSessionService({
    agents: resolveAgents({
      'stand-in': { command: ['stand-in-agent', "it's", '$(touch pwned)', 'two words', '`id`'], env: { MARK: 'a "b" $c', API_KEY: SECRET } },
      ghost: { command: ['no-such-agent-program'] },
      sleeper: { command: ['sleep', '600'] },
    }),
    exec: (ref, spec, opts) => procs.exec(ref, spec, opts),
    guest: (ref) => procs.guest(ref),
    vmInfo: () => ({ name: 'dev', workspace: work }),
    leaveCgroupScript: 'exec "$@"',
  });
});

after(async () => {
  if (savedPath !== undefined) process.env.PATH = savedPath;
  if (!dir) return;
  spawnSync(REAL_TMUX, ['-S', sock, 'kill-server']);
  await rm(dir, { recursive: true, force: true });
});

test('start creates the session in the workspace with @banger-command; the agent gets its words and environment exactly, the answers never its env values', {
  skip,
}, async () => {
  assert.deepEqual(await svc.list('dev'), [], 'no server yet: no sessions');
  const r = await svc.start('dev', { agent: 'stand-in' });
  assert.equal(r.created, true);
  assert.equal(r.cwd, work);
  // The guest's option holds the real line (a restore runs it); the answer the same line without values.
  const recorded = tmux('show-options', '-v', '-t', '=stand-in:', '@banger-command').trimEnd();
  assert.ok(recorded.includes('sk-do-not-leak'));
  assert.equal(r.command, `MARK=… API_KEY=… ${recorded.slice(recorded.indexOf('stand-in-agent'))}`);
  assert.equal(
    await fileOf(join(work, 'agent-ran.txt')),
    [work, "it's", '$(touch pwned)', 'two words', '`id`', 'MARK=a "b" $c', `API_KEY=${SECRET}`, ''].join('\n'),
  );
  assert.ok(!existsSync(join(work, 'pwned')), 'nothing in the configuration ran as shell code');

  const sessions = await svc.list('dev');
  assert.equal(sessions.length, 1);
  assert.equal(sessions[0]?.name, 'stand-in');
  assert.equal(sessions[0]?.command, r.command);
  assert.equal(sessions[0]?.windows, 1);
  assert.ok(sessions[0]?.createdAt && Date.parse(sessions[0].createdAt) > Date.now() - 3600_000);
  assert.ok(!JSON.stringify([r, sessions]).includes('do-not-leak'));
});

test('a second start reuses the running session: the agent is not started again', { skip }, async () => {
  const pid = tmux('list-panes', '-t', '=stand-in:', '-F', '#{pane_pid}').trim();
  const again = await svc.start('dev', { agent: 'stand-in', cwd: '/' });
  assert.equal(again.created, false);
  assert.equal(tmux('list-panes', '-t', '=stand-in:', '-F', '#{pane_pid}').trim(), pid);
  assert.equal(tmux('list-sessions', '-F', '#{session_name}').trim(), 'stand-in');
});

test('a missing program or directory is refused before tmux starts anything', { skip }, async () => {
  await assert.rejects(
    svc.start('dev', { agent: 'ghost' }),
    (e: unknown) => e instanceof BangerError && e.code === 'precondition_failed' && /no-such-agent-program/.test(e.message),
  );
  // (The directory is checked first; a session already there is reused wherever it runs.)
  await assert.rejects(svc.start('dev', { agent: 'ghost', cwd: join(dir, 'nope') }), (e: unknown) => e instanceof BangerError && e.code === 'not_found');
  assert.deepEqual(
    (await svc.list('dev')).map((s) => s.name),
    ['stand-in'],
  );
});

test('a working directory tmux would expand (#(…)) or split (;) is refused: no session, the canary command never runs', { skip }, async () => {
  // The directories exist and the agent's program too, so only the refusal keeps tmux from seeing them.
  for (const name of ['w#(banger-canary)', 'w;']) {
    await mkdir(join(dir, name));
    await assert.rejects(svc.start('dev', { agent: 'sleeper', cwd: join(dir, name) }), (e: unknown) => e instanceof BangerError && e.code === 'bad_request');
  }
  assert.deepEqual(
    (await svc.list('dev')).map((s) => s.name),
    ['stand-in'],
  );
  assert.ok(!existsSync(join(dir, 'canary-ran')), 'tmux ran no format command');
});

test('a session of someone else is listed without a command', { skip }, async () => {
  tmux('new-session', '-d', '-s', 'mine', '--', 'sleep', '600');
  const sessions = await svc.list('dev');
  assert.deepEqual(
    sessions.map((s) => [s.name, s.command === null]),
    [
      ['mine', true],
      ['stand-in', false],
    ],
  );
});
