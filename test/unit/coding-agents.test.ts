import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import {
  AGENT_PRESETS,
  AGENTS_IMAGE_NAME,
  agentCommandLine,
  agentNameProblem,
  fileSyncToml,
  guestCwdProblem,
  MAX_LISTED_SESSIONS,
  parseTmuxSessions,
  presetOf,
  REDACTED_VALUE,
  redactAssignments,
  resolveAgents,
  shellQuote,
  TMUX_LIST_FORMAT,
  tmuxNewSessionArgv,
} from '../../src/util/coding-agents.js';

/** What /bin/sh makes of a command line: each word it passes to printf, one per line. */
const wordsOf = (line: string): string[] => {
  const out = execFileSync('/bin/sh', ['-c', `printf '%s\\n' ${line}`], { encoding: 'utf8' });
  return out.split('\n').slice(0, -1);
};

test('presets: the four agents, their sandbox flags, IS_SANDBOX for Claude Code as root, auth paths under ~ and /root', () => {
  assert.deepEqual(
    AGENT_PRESETS.map((p) => p.name),
    ['claude', 'opencode', 'pi', 'codex'],
  );
  assert.deepEqual(presetOf('claude')?.command, ['claude', '--dangerously-skip-permissions']);
  assert.deepEqual(presetOf('claude')?.env, { IS_SANDBOX: '1' });
  assert.deepEqual(presetOf('codex')?.command, ['codex', '--dangerously-bypass-approvals-and-sandbox']);
  assert.deepEqual(presetOf('opencode')?.command, ['opencode']);
  assert.deepEqual(presetOf('pi')?.command, ['pi']);
  for (const p of AGENT_PRESETS) {
    assert.equal(agentNameProblem(p.name), undefined);
    for (const a of p.authPaths) {
      assert.ok(a.host.startsWith('~/'), a.host);
      assert.equal(a.guest, `/root/${a.host.slice(2)}`);
    }
    // Every credentials file is 0600 in the guest, and comes after the directory that holds it (entries run in order).
    for (const [i, a] of p.authPaths.entries()) {
      if (a.kind !== 'file') continue;
      assert.equal(a.mode, '0600', a.host);
      const dir = p.authPaths.findIndex((d) => d.kind === 'dir' && a.host.startsWith(`${d.host}/`));
      assert.ok(dir < i, `${a.host} after its directory`);
    }
  }
  const credentials = (name: string) => presetOf(name)?.authPaths.map((a) => a.host);
  assert.deepEqual(credentials('claude'), ['~/.claude.json', '~/.claude', '~/.claude/.credentials.json']);
  assert.deepEqual(credentials('opencode'), ['~/.config/opencode', '~/.local/share/opencode/auth.json']);
  assert.deepEqual(credentials('pi'), ['~/.pi', '~/.pi/agent/auth.json']);
  assert.deepEqual(credentials('codex'), ['~/.codex', '~/.codex/auth.json']);
  assert.equal(AGENTS_IMAGE_NAME, 'debian-bookworm-agents');
});

test('shellQuote: the shell reads every hostile word back unchanged; control characters are refused', () => {
  const hostile = [
    "it's",
    '"double"',
    '$(id)',
    '`id`',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, on purpose
    '$HOME ${PATH}',
    'a;b|c&d',
    '*',
    '~',
    '~root',
    'A=b',
    '',
    ' ',
    "'",
    "''\\'",
    '\\',
    '-n',
    '#comment',
    'tab-free – ünïcode ✓',
    '!x',
  ];
  for (const w of hostile) assert.deepEqual(wordsOf(shellQuote(w)), [w], `word ${JSON.stringify(w)}`);
  assert.deepEqual(wordsOf(hostile.map(shellQuote).join(' ')), hostile);
  // Plain words stay readable.
  assert.equal(shellQuote('--dangerously-skip-permissions'), '--dangerously-skip-permissions');
  assert.equal(shellQuote('/usr/bin/claude'), '/usr/bin/claude');
  for (const bad of ['a\nb', 'a\rb', 'a\tb', '\x1b[2J', 'a\0b', '\x7f']) {
    assert.throws(
      () => shellQuote(bad),
      (e: unknown) => e instanceof BangerError && e.code === 'bad_request' && /control character/.test(e.message),
      JSON.stringify(bad),
    );
  }
});

test('agentCommandLine: the environment as assignments, then the quoted argv; names checked', () => {
  assert.equal(agentCommandLine(['claude', '--dangerously-skip-permissions'], { IS_SANDBOX: '1' }), 'IS_SANDBOX=1 claude --dangerously-skip-permissions');
  const line = agentCommandLine(['sh', '-c', 'printf "%s|%s" "$A" "$1"', 'x', "it's $(id)"], { A: 'v; rm -rf /' });
  assert.equal(execFileSync('/bin/sh', ['-c', line], { encoding: 'utf8' }), "v; rm -rf /|it's $(id)");
  assert.throws(() => agentCommandLine([], {}), /empty/);
  assert.throws(() => agentCommandLine(['x'], { 'A B': '1' }), /not a valid name/);
  assert.throws(() => agentCommandLine(['x'], { 'A=B': '1' }), /not a valid name/);
  assert.throws(() => agentCommandLine(['x'], { A: '1\n2' }), /control character/);
  assert.throws(() => agentCommandLine(['x', 'y'.repeat(4000), 'y'.repeat(4000), 'y'.repeat(4000)], {}), /longer than/);
});

test('resolveAgents: presets with overrides, new agents need a command, the image defaults to default_agent_image', () => {
  const agents = resolveAgents({ claude: { env: { X: '1' } }, codex: { image: 'mine' }, aider: { command: ['aider'] } }, 'agents-img');
  const by = (n: string) => agents.find((a) => a.name === n);
  assert.deepEqual(by('claude'), {
    name: 'claude',
    command: ['claude', '--dangerously-skip-permissions'],
    env: { IS_SANDBOX: '1', X: '1' },
    image: 'agents-img',
    session: 'claude',
    builtin: true,
  });
  assert.equal(by('codex')?.image, 'mine');
  // A preset's variable can be given another value.
  assert.deepEqual(resolveAgents({ claude: { env: { IS_SANDBOX: '0' } } })[0]?.env, { IS_SANDBOX: '0' });
  assert.deepEqual(by('aider'), { name: 'aider', command: ['aider'], env: {}, image: 'agents-img', session: 'aider', builtin: false });
  assert.equal(resolveAgents({})[0]?.image, AGENTS_IMAGE_NAME);
  assert.throws(() => resolveAgents({ aider: {} }), /no command/);
});

test('tmux argv: one invocation creates the session and records its command line in @banger-command', () => {
  assert.deepEqual(tmuxNewSessionArgv('claude', '/root/repo', 'IS_SANDBOX=1 claude'), [
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
    'IS_SANDBOX=1 claude',
    ';',
    'set-option',
    '-t',
    '=claude:',
    '@banger-command',
    'IS_SANDBOX=1 claude',
  ]);
});

test('parseTmuxSessions: fields by the unit separator; malformed lines skipped, control characters dropped, bounded', () => {
  const line = (...f: string[]) => f.join('\x1f');
  const out = [
    line('claude', '1', '0', '1796220772', 'IS_SANDBOX=1 claude --dangerously-skip-permissions'),
    line('work\x1b]0;pwned\x07', '2', '1', 'x', ''),
    'garbage without separators',
    line('too', 'many', 'fields', 'here', 'a', 'b'),
    line('', '1', '1', '1', ''),
  ].join('\n');
  assert.deepEqual(parseTmuxSessions(out), [
    {
      name: 'claude',
      windows: 1,
      attached: 0,
      createdAt: new Date(1796220772000).toISOString(),
      command: 'IS_SANDBOX=1 claude --dangerously-skip-permissions',
    },
    { name: 'work]0;pwned', windows: 2, attached: 1, createdAt: null, command: null },
  ]);
  // Bidi overrides and marks, zero-width characters, line and paragraph separators: gone from names and commands.
  const hidden = '\u202e\u2066\u200f\u200b\u200d\ufeff\u2028\u2029\u0085';
  assert.deepEqual(parseTmuxSessions(line(`cla${hidden}ude`, '1', '0', '1', `pi${hidden} --x`)), [
    { name: 'claude', windows: 1, attached: 0, createdAt: new Date(1000).toISOString(), command: 'pi --x' },
  ]);
  assert.deepEqual(parseTmuxSessions(line(hidden, '1', '0', '1', '')), [], 'a name of hidden characters only is no name');
  const many = Array.from({ length: 500 }, (_, i) => line(`s${i}`, '1', '0', '1', '')).join('\n');
  assert.equal(parseTmuxSessions(many).length, MAX_LISTED_SESSIONS);
  assert.equal(TMUX_LIST_FORMAT.split('\x1f').length, 5);
});

test('redactAssignments: environment values become NAME=…, however the guest quoted them; the presets’ own stay; the program stays', () => {
  const SECRET = 'sk-ant-s3cr3t';
  // The line banger itself builds, with secrets that need quoting.
  for (const value of [SECRET, `${SECRET} with spaces`, `it's ${SECRET}`, `"${SECRET}"`, `$(${SECRET})`]) {
    const line = agentCommandLine(['claude', '--dangerously-skip-permissions'], { IS_SANDBOX: '1', ANTHROPIC_API_KEY: value, B: value });
    const shown = redactAssignments(line);
    assert.equal(shown, `IS_SANDBOX=1 ANTHROPIC_API_KEY=${REDACTED_VALUE} B=${REDACTED_VALUE} claude --dangerously-skip-permissions`, line);
    assert.ok(!shown.includes(SECRET));
  }
  // Lines a guest made up: other quoting, cut short, substitutions; never a piece of the value left.
  for (const [line, shown] of [
    [`K="a ${SECRET} \\" b" prog x`, `K=${REDACTED_VALUE} prog x`],
    [`K=a\\ ${SECRET} prog`, `K=${REDACTED_VALUE} prog`],
    [`K='${SECRET}`, `K=${REDACTED_VALUE}`],
    [`K="${SECRET}`, `K=${REDACTED_VALUE}`],
    [`K=$(echo ${SECRET}) prog`, `K=${REDACTED_VALUE}`],
    [`K=\`${SECRET}\` prog`, `K=${REDACTED_VALUE}`],
    [`K=x;${SECRET} prog`, `K=${REDACTED_VALUE}`],
    [`  K=${SECRET}\tL='${SECRET}'x"${SECRET}"  prog`, `K=${REDACTED_VALUE} L=${REDACTED_VALUE} prog`],
    [`IS_SANDBOX=${SECRET} claude`, `IS_SANDBOX=${REDACTED_VALUE} claude`],
  ] as const) {
    assert.equal(redactAssignments(line), shown, line);
  }
  // No leading assignment: unchanged (an argument with = is not one).
  assert.equal(redactAssignments('opencode --x=y'), 'opencode --x=y');
  assert.equal(redactAssignments(''), '');
  // parseTmuxSessions applies it to the guest's @banger-command.
  const [s] = parseTmuxSessions(['claude', '1', '0', '1', `IS_SANDBOX=1 ANTHROPIC_API_KEY='${SECRET}' claude`].join('\x1f'));
  assert.equal(s?.command, `IS_SANDBOX=1 ANTHROPIC_API_KEY=${REDACTED_VALUE} claude`);
});

test('names, working directories and the file_sync TOML', () => {
  assert.equal(agentNameProblem('claude'), undefined);
  assert.match(agentNameProblem('Claude') ?? '', /uppercase/);
  assert.ok(agentNameProblem('a.b'));
  assert.ok(agentNameProblem('a:b'));
  assert.ok(agentNameProblem('x'.repeat(33)));
  assert.equal(guestCwdProblem('/root/repo'), undefined);
  assert.match(guestCwdProblem('repo') ?? '', /absolute/);
  assert.match(guestCwdProblem('/root/a\nb') ?? '', /control character/);
  // tmux reads -c as a format and a trailing ; as a command separator.
  assert.match(guestCwdProblem('/root/#(touch /tmp/canary)') ?? '', /contains "#".*format/);
  assert.match(guestCwdProblem('/root/#{pane_id}') ?? '', /contains "#"/);
  assert.match(guestCwdProblem('/root/repo;') ?? '', /ends with ";".*command separator/);
  assert.equal(guestCwdProblem('/root/a;b'), undefined);
  assert.equal(
    fileSyncToml({ host: '~/.codex/auth.json', guest: '/root/.codex/auth.json', kind: 'file', mode: '0600', what: 'x' }),
    '[[file_sync]]\nhost = "~/.codex/auth.json"\nguest = "/root/.codex/auth.json"\nmode = "0600"',
  );
});
