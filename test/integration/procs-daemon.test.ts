/**
 * The process routes as the real daemon mounts them (compose.ts, main.ts's upgrade listener), no
 * VM: what reaches a guest is covered by test/integration/guest-procs.test.ts against the real
 * agent; here, that requests are routed, validated and refused with the documented errors.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { BangerClient } from '../../src/client/client.js';
import { upgrade } from '../../src/client/transport.js';
import { resolveLayout } from '../../src/config/layout.js';
import { raw, TestHome } from './harness.js';

let home: TestHome;
let client: BangerClient;

before(async () => {
  home = await TestHome.create();
  await home.ok(['daemon', 'start']);
  client = new BangerClient({ layout: resolveLayout({ BANGER_HOME: home.dir }), autostart: false });
});

after(async () => {
  await home?.destroy();
});

const isCode = (code: string) => (e: unknown) => e instanceof BangerError && e.code === code;

test('process routes are mounted: an unknown VM is not_found, invalid bodies are 400 naming the problem', async () => {
  await assert.rejects(client.processes('nope'), isCode('not_found'));
  await assert.rejects(client.execProcess('nope', { argv: ['true'] }), isCode('not_found'));
  for (const [body, re] of [
    [{ argv: ['true'], shell: 'true' }, /exactly one of argv and shell/],
    [{ argv: ['true'], mode: 'later' }, /mode/],
    [{ argv: ['true'], name: '../../etc' }, /name/],
  ] as const) {
    const r = await raw(home.socketPath, 'POST', '/v1/vms/nope/procs', JSON.stringify(body));
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.match((r.body as { error: { message: string } }).error.message, re);
  }
  const sig = await raw(home.socketPath, 'POST', '/v1/vms/nope/procs/p-1/signal', JSON.stringify({ signal: 'TERM; rm' }));
  assert.equal(sig.status, 400);
});

test('attach: the daemon listens for upgrades; an unknown VM is a JSON error, a plain GET is told to upgrade', async () => {
  await assert.rejects(upgrade(home.socketPath, '/v1/vms/nope/procs/p-1/attach', 'banger-attach', 'op-abc123'), isCode('not_found'));
  await assert.rejects(upgrade(home.socketPath, '/v1/vms/nope/procs/p-1/attach', 'websocket', 'op-abc123'), isCode('bad_request'));
  const plain = await raw(home.socketPath, 'GET', '/v1/vms/nope/procs/p-1/attach');
  assert.equal(plain.status, 400);
  assert.match((plain.body as { error: { message: string } }).error.message, /Upgrade to banger-attach/);
  // The daemon still answers after the refused upgrades.
  assert.equal((await client.status()).pid > 0, true);
});
