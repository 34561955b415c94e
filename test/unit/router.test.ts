import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { z } from 'zod';
import { BangerError } from '../../src/api/errors.js';
import { OP_HEADER, Router } from '../../src/daemon/http.js';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

let dir: string;
let socketPath: string;
let server: Server;
const seen: unknown[] = [];

before(async () => {
  dir = await mkdtemp('/tmp/bg-rt-');
  socketPath = join(dir, 'api.sock');
  const router = new Router(pino({ level: 'silent' }));
  router.add(
    {
      method: 'POST',
      path: '/v1/things',
      status: 201,
      body: z.object({ name: z.string().min(1), count: z.number().int().min(0) }).strict(),
      response: z.object({ name: z.string(), count: z.number(), opId: z.string() }),
      handler: ({ body, opId }) => {
        seen.push(body);
        return { ...(body as object), opId };
      },
    },
    {
      method: 'GET',
      path: '/v1/things/:name',
      handler: ({ params }) => {
        if (params.name === 'missing') throw new BangerError('not_found', 'thing "missing" not found', { fix: 'list them' });
        if (params.name === 'crash') throw new Error('kaboom');
        return { name: params.name };
      },
    },
    {
      method: 'GET',
      path: '/v1/bad-response',
      response: z.object({ ok: z.boolean() }),
      handler: () => ({ ok: 'yes' }),
    },
    {
      method: 'POST',
      path: '/v1/sink',
      handler: () => ({ ok: true }),
    },
  );
  server = createServer((req, res) => void router.handle(req, res));
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
});

after(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await rm(dir, { recursive: true, force: true });
});

function call(method: string, path: string, opts: { body?: string | Buffer; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...opts.headers };
    if (opts.body !== undefined) {
      headers['content-type'] ??= 'application/json';
      headers['content-length'] = Buffer.byteLength(opts.body);
    }
    const req = request({ socketPath, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          /* not JSON: compared as text */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** The one error shape: {error: {code, message, opId, fix?}} with the op id also in the header. */
function assertError(r: Reply, status: number, code: string): { code: string; message: string; opId: string; fix?: string } {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.body as { error: { code: string; message: string; opId: string; fix?: string } };
  assert.equal(typeof body.error, 'object', `no error object in ${JSON.stringify(r.body)}`);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0);
  assert.match(body.error.opId, /^op-[0-9a-f]{6}$/);
  assert.equal(r.headers[OP_HEADER], body.error.opId, 'the error names the same op id as the header');
  return body.error;
}

test('unknown route → 404 with the JSON error shape', async () => {
  const r = await call('GET', '/v1/nope');
  const e = assertError(r, 404, 'not_found');
  assert.match(e.message, /GET \/v1\/nope/);
  assert.ok(e.fix);
});

test('known path, wrong method → 400 naming the method', async () => {
  const e = assertError(await call('DELETE', '/v1/things'), 400, 'bad_request');
  assert.match(e.message, /DELETE/);
});

test('a valid request: schema-checked body reaches the handler, success status, op id header', async () => {
  const r = await call('POST', '/v1/things', { body: JSON.stringify({ name: 'a', count: 2 }) });
  assert.equal(r.status, 201);
  const body = r.body as { name: string; count: number; opId: string };
  assert.deepEqual({ name: body.name, count: body.count }, { name: 'a', count: 2 });
  assert.match(String(r.headers[OP_HEADER]), /^op-[0-9a-f]{6}$/);
  assert.equal(body.opId, r.headers[OP_HEADER]);
});

test('invalid JSON body → 400 bad_request, handler not called', async () => {
  const before = seen.length;
  const e = assertError(await call('POST', '/v1/things', { body: '{"name": "a", count: 2' }), 400, 'bad_request');
  assert.match(e.message, /not valid JSON/);
  assert.equal(seen.length, before);
});

test('schema-invalid body → 400 naming the field', async () => {
  const before = seen.length;
  const e1 = assertError(await call('POST', '/v1/things', { body: JSON.stringify({ name: 'a', count: 'two' }) }), 400, 'bad_request');
  assert.match(e1.message, /count/);
  const e2 = assertError(await call('POST', '/v1/things', { body: JSON.stringify({ count: 1 }) }), 400, 'bad_request');
  assert.match(e2.message, /name/);
  const e3 = assertError(await call('POST', '/v1/things', { body: JSON.stringify({ name: 'a', count: 1, colour: 'red' }) }), 400, 'bad_request');
  assert.match(e3.message, /colour/);
  // No body at all is validated as {}: both required fields are reported.
  const e4 = assertError(await call('POST', '/v1/things'), 400, 'bad_request');
  assert.match(e4.message, /name/);
  assert.match(e4.message, /count/);
  assert.equal(seen.length, before);
});

test('a valid incoming op id is reused; an invalid one is replaced by a fresh id', async () => {
  const ok = await call('GET', '/v1/things/x', { headers: { [OP_HEADER]: 'op-abc123' } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers[OP_HEADER], 'op-abc123');

  const suffixed = await call('GET', '/v1/things/missing', { headers: { [OP_HEADER]: 'op-abc123.2' } });
  assert.equal(suffixed.headers[OP_HEADER], 'op-abc123.2');
  assert.equal((suffixed.body as { error: { opId: string } }).error.opId, 'op-abc123.2');

  for (const bad of ['op-ABC123', 'op-abc12', 'op-abc1234', 'hello', 'op-abc123;rm -rf']) {
    const r = await call('GET', '/v1/things/x', { headers: { [OP_HEADER]: bad } });
    assert.equal(r.status, 200);
    assert.notEqual(r.headers[OP_HEADER], bad);
    assert.match(String(r.headers[OP_HEADER]), /^op-[0-9a-f]{6}$/, `replacement for ${bad}`);
  }
});

test('a BangerError thrown by a handler keeps its code, message and fix', async () => {
  const e = assertError(await call('GET', '/v1/things/missing'), 404, 'not_found');
  assert.equal(e.message, 'thing "missing" not found');
  assert.equal(e.fix, 'list them');
});

test('a plain exception → 500 internal; a response failing its schema → 500, never the bad body', async () => {
  const e = assertError(await call('GET', '/v1/things/crash'), 500, 'internal');
  assert.match(e.message, /kaboom/);
  const r = await call('GET', '/v1/bad-response');
  const e2 = assertError(r, 500, 'internal');
  assert.match(e2.message, /invalid response/);
  assert.doesNotMatch(JSON.stringify(r.body), /"yes"/);
});

test('a body over 1 MiB → 413 payload_too_large', async () => {
  const big = JSON.stringify({ blob: 'x'.repeat(1024 * 1024 + 16) });
  const e = assertError(await call('POST', '/v1/sink', { body: big }), 413, 'payload_too_large');
  assert.match(e.message, /larger than 1048576 bytes/);
  // Exactly at the limit is still accepted.
  const atLimit = `{"a":"${'y'.repeat(1024 * 1024 - 8)}"}`;
  assert.equal(Buffer.byteLength(atLimit), 1024 * 1024);
  assert.equal((await call('POST', '/v1/sink', { body: atLimit })).status, 200);
  // The server is still healthy afterwards.
  assert.equal((await call('GET', '/v1/things/y')).status, 200);
});

test('path parameters are URL-decoded', async () => {
  const r = await call('GET', `/v1/things/${encodeURIComponent('a b')}`);
  assert.deepEqual(r.body, { name: 'a b' });
});
