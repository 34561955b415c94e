import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { raw, TestHome } from './harness.js';

let home: TestHome;

before(async () => {
  home = await TestHome.create();
  await home.ok(['daemon', 'start']);
});

after(async () => {
  await home?.destroy();
});

/** Every row of every table: the store's whole content, to compare before and after. */
function dumpStore(): string {
  const db = new Database(home.dbPath, { readonly: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>;
    const out: Record<string, unknown> = { user_version: db.pragma('user_version', { simple: true }) };
    for (const { name } of tables) out[name] = db.prepare(`SELECT * FROM "${name}"`).all();
    return JSON.stringify(out);
  } finally {
    db.close();
  }
}

interface ErrorReply {
  error: { code: string; message: string; opId: string; fix?: string };
}

test('invalid request bodies over the raw socket → 400 naming the field; the store is unchanged and no operation starts', async () => {
  const before = dumpStore();
  assert.match(before, /"vms":\[\]/, 'the store has a vms table and it is empty');

  const cases: Array<[string, string, string, RegExp]> = [
    ['POST', '/v1/vms', JSON.stringify({ name: 'web', vcpus: 'two' }), /vcpus/],
    ['POST', '/v1/vms', JSON.stringify({ name: 'web', colour: 'red' }), /colour/],
    ['POST', '/v1/vms', '{"name": "web",', /not valid JSON/],
    ['POST', '/v1/vms', JSON.stringify({ name: 'web', readyWhen: [{ kind: 'port', port: 70000 }] }), /readyWhen/],
    ['POST', '/v1/vms', JSON.stringify({ name: 'web', readyWhen: [{ kind: 'command', command: 'true\u0000' }] }), /NUL/],
    ['POST', '/v1/vms', JSON.stringify({ name: 'web', start: false, readyWhen: [{ kind: 'port', port: 80 }] }), /need a started VM/],
    ['POST', '/v1/kernels', JSON.stringify({ name: 'k1' }), /from/],
    ['POST', '/v1/images', JSON.stringify({ name: 'img', rootfs: '/nonexistent.ext4', kernel: '/k', kernelRef: 'k1' }), /exactly one of/],
    ['PATCH', '/v1/vms/web', JSON.stringify({ vcpus: 1.5 }), /vcpus/],
    ['POST', '/v1/vms/actions', JSON.stringify({ action: 'explode', refs: ['web'] }), /action/],
  ];
  for (const [method, path, body, re] of cases) {
    const r = await raw(home.socketPath, method, path, body, { 'x-banger-op': 'op-0000aa' });
    assert.equal(r.status, 400, `${method} ${path} ${body}: ${JSON.stringify(r.body)}`);
    const e = (r.body as ErrorReply).error;
    assert.equal(e.code, 'bad_request');
    assert.match(e.message, re, `${method} ${path}`);
    assert.equal(e.opId, 'op-0000aa', 'the caller’s op id comes back in the error');
    assert.equal(r.headers['x-banger-op'], 'op-0000aa');
  }

  assert.equal(dumpStore(), before);
  const ops = await raw(home.socketPath, 'GET', '/v1/operations');
  assert.deepEqual(ops.body, { operations: [] });
  const vms = await raw(home.socketPath, 'GET', '/v1/vms');
  assert.deepEqual(vms.body, { vms: [] });
});

test('the daemon survives garbage: unknown routes 404, oversized bodies 413, and it still answers', async () => {
  const unknown = await raw(home.socketPath, 'GET', '/v2/everything');
  assert.equal(unknown.status, 404);
  assert.equal((unknown.body as ErrorReply).error.code, 'not_found');

  const big = await raw(home.socketPath, 'POST', '/v1/vms', JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024) }));
  assert.equal(big.status, 413);
  assert.equal((big.body as ErrorReply).error.code, 'payload_too_large');

  const status = await raw(home.socketPath, 'GET', '/v1/daemon');
  assert.equal(status.status, 200);
  assert.deepEqual(home.daemonPids(), [(status.body as { pid: number }).pid]);
});
