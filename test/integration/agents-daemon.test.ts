/**
 * The agent routes as the real daemon mounts them (compose.ts), with a config's [agents.X]
 * tables, no VM: the agents it knows, and that requests are validated and routed. What reaches a
 * guest (the tmux argv) is test/unit/agent-sessions.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BangerClient } from '../../src/client/client.js';
import { resolveLayout } from '../../src/config/layout.js';
import { raw, TestHome } from './harness.js';

let home: TestHome;
let client: BangerClient;

before(async () => {
  home = await TestHome.create(
    [
      'default_agent_image = "house-agents"',
      '[agents.claude]',
      'env = { ANTHROPIC_API_KEY = "sk-do-not-leak" }',
      '[agents.aider]',
      'command = ["aider", "--yes-always"]',
      'image = "aider-img"',
      '',
    ].join('\n'),
  );
  await home.ok(['daemon', 'start']);
  client = new BangerClient({ layout: resolveLayout({ BANGER_HOME: home.dir }), autostart: false });
});

after(async () => {
  await home?.destroy();
});

test('GET /v1/agents: the presets with the config applied, and the config’s own; env names only, not values', async () => {
  // (Start and list answers hide them too: test/unit/agent-sessions.test.ts, test/integration/agent-sessions-tmux.test.ts.)
  const { agents } = await client.agents();
  assert.deepEqual(
    agents.map((a) => [a.name, a.image, a.builtin]),
    [
      ['claude', 'house-agents', true],
      ['opencode', 'house-agents', true],
      ['pi', 'house-agents', true],
      ['codex', 'house-agents', true],
      ['aider', 'aider-img', false],
    ],
  );
  const claude = agents.find((a) => a.name === 'claude');
  assert.deepEqual(claude?.command, ['claude', '--dangerously-skip-permissions']);
  assert.deepEqual(claude?.envKeys, ['IS_SANDBOX', 'ANTHROPIC_API_KEY']);
  const r = await raw(home.socketPath, 'GET', '/v1/agents');
  assert.ok(!JSON.stringify(r.body).includes('sk-do-not-leak'));
});

test('agent sessions: an unknown VM is not_found; invalid bodies are 400 naming the problem', async () => {
  const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;
  await assert.rejects(client.startAgent('nope', { agent: 'claude' }), isCode('not_found'));
  await assert.rejects(client.agentSessions('nope'), isCode('not_found'));
  for (const [body, re] of [
    [{ agent: 'Claude' }, /agent/],
    [{ agent: 'a;b' }, /agent/],
    [{ agent: 'claude', cwd: 'relative' }, /cwd/],
    [{ agent: 'claude', cwd: '/root/a\nb' }, /cwd/],
    [{ agent: 'claude', command: ['sh'] }, /command|unrecognized/i],
  ] as const) {
    const r = await raw(home.socketPath, 'POST', '/v1/vms/nope/agents', JSON.stringify(body));
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.match((r.body as { error: { message: string } }).error.message, re);
  }
});
