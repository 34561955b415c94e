/**
 * identity.set, fs.freeze and fs.thaw on the host side: the params AgentClient sends (and refuses
 * to send), the result schemas against a hostile guest, and AgentLink's camelCase. The guest end
 * is a FAKE agent on a Unix socket here; test/integration/agent-warm-start.test.ts runs the real one.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { AgentClient } from '../../src/guest/agent-client.js';
import { openAgentLink } from '../../src/guest/agent-link.js';
import { FreezeResultSchema, type IdentityParams, IdentityParamsSchema, IdentityResultSchema } from '../../src/guest/agent-protocol.js';
import type { VmmHandle } from '../../src/vmm/driver.js';

interface Req {
  id: number;
  method: string;
  params?: Record<string, unknown>;
}
type Responder = (req: Req) => unknown;

/** A FAKE agent: answers each request line with what `respond` returns (a full envelope). */
async function withFakeAgent(body: (ctx: { requests: Req[]; setRespond(r: Responder): void; socketPath: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'banger-warm-'));
  const socketPath = join(dir, 'agent.sock');
  const requests: Req[] = [];
  let respond: Responder = (req) => ({ id: req.id, ok: true, result: {} });
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => {});
    let buf = '';
    socket.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const req = JSON.parse(buf.slice(0, nl)) as Req;
        buf = buf.slice(nl + 1);
        requests.push(req);
        socket.write(`${JSON.stringify(respond(req))}\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  try {
    await body({ requests, setRespond: (r) => (respond = r), socketPath });
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  }
}

const isCode = (code: string, pattern?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof BangerError, `expected a BangerError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (pattern) assert.match(e.message, pattern);
  return true;
};

const FULL: IdentityParams = {
  clock_unix_ms: 1_764_000_000_123,
  hostname: 'clone-1',
  machine_id: '0123456789abcdef0123456789abcdef',
  net: { iface: 'eth0', mac: '52:54:00:ab:cd:ef', addr: '10.77.0.12', prefix: 24, gateway: '10.77.0.1' },
  seed_hex: 'ab'.repeat(32),
  generation: 3,
};

test('identitySet sends the params as they are and returns the validated result', async () => {
  await withFakeAgent(async ({ requests, setRespond, socketPath }) => {
    setRespond((req) => ({ id: req.id, ok: true, result: { hostname: 'clone-1', generation: 3, boot_id: 'b-1', extra: 'dropped' } }));
    const client = new AgentClient({ socketPath, transport: 'virtio-serial' });
    try {
      assert.deepEqual(await client.identitySet(FULL), { hostname: 'clone-1', generation: 3, boot_id: 'b-1' });
      assert.deepEqual(requests, [{ id: 1, method: 'identity.set', params: FULL }]);
      // only the clock: the rest stays unchanged in the guest, and no generation comes back
      setRespond((req) => ({ id: req.id, ok: true, result: { hostname: 'old', generation: null, boot_id: 'b-1' } }));
      assert.deepEqual(await client.identitySet({ clock_unix_ms: FULL.clock_unix_ms }), { hostname: 'old', generation: null, boot_id: 'b-1' });
      assert.deepEqual(requests[1]?.params, { clock_unix_ms: FULL.clock_unix_ms });
    } finally {
      client.close();
    }
  });
});

test('identitySet refuses each bad field before sending anything (bad_request naming the field)', async () => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ['clock_unix_ms', { clock_unix_ms: 1000 }],
    ['clock_unix_ms', { clock_unix_ms: 1.5e12 + 0.5 }],
    ['hostname', { hostname: 'Upper' }],
    ['hostname', { hostname: '-lead' }],
    ['hostname', { hostname: 'a'.repeat(64) }],
    ['hostname', { hostname: 'a b' }],
    ['hostname', { hostname: 'a/b' }],
    ['machine_id', { machine_id: '0'.repeat(32) }],
    ['machine_id', { machine_id: 'ABCDEF0123456789ABCDEF0123456789' }],
    ['net.mac', { net: { ...FULL.net, mac: '53:54:00:ab:cd:ef' } }],
    ['net.mac', { net: { ...FULL.net, mac: '52-54-00-ab-cd-ef' } }],
    ['net.addr', { net: { ...FULL.net, addr: '10.77.0.012' } }],
    ['net.addr', { net: { ...FULL.net, addr: '256.1.1.1' } }],
    ['net.prefix', { net: { ...FULL.net, prefix: 33 } }],
    ['net.iface', { net: { ...FULL.net, iface: 'a/b' } }],
    ['net.iface', { net: { ...FULL.net, iface: 'x'.repeat(16) } }],
    ['net: unknown param mtu', { net: { ...FULL.net, mtu: 1500 } }],
    ['seed_hex', { seed_hex: 'ab'.repeat(31) }],
    ['seed_hex', { seed_hex: 'ab'.repeat(257) }],
    ['seed_hex', { seed_hex: `${'ab'.repeat(32)}a` }],
    ['seed_hex', { seed_hex: 'AB'.repeat(32) }],
    ['generation', { generation: -1 }],
    ['params: unknown param shell', { shell: 'rm -rf /' }],
  ];
  await withFakeAgent(async ({ requests, socketPath }) => {
    const client = new AgentClient({ socketPath, transport: 'virtio-serial' });
    try {
      for (const [field, patch] of bad) {
        const params = { ...FULL, ...patch } as IdentityParams;
        await assert.rejects(client.identitySet(params), isCode('bad_request', new RegExp(`at ${field.replace('.', '\\.')}`)), field);
      }
      assert.equal(requests.length, 0, 'nothing was sent');
    } finally {
      client.close();
    }
  });
});

test('identitySet rejects a hostile result: bad fields, or a generation other than the one asked', async () => {
  await withFakeAgent(async ({ setRespond, socketPath }) => {
    const client = new AgentClient({ socketPath, transport: 'virtio-serial' });
    try {
      const results = [
        { hostname: 'h'.repeat(65), generation: 3, boot_id: 'b' },
        { hostname: 'h', generation: -3, boot_id: 'b' },
        { hostname: 'h', generation: 3, boot_id: 'b'.repeat(65) },
        { hostname: 'h', boot_id: 'b' },
      ];
      for (const result of results) {
        setRespond((req) => ({ id: req.id, ok: true, result }));
        await assert.rejects(client.identitySet(FULL), isCode('internal', /invalid identity\.set result/));
      }
      setRespond((req) => ({ id: req.id, ok: true, result: { hostname: 'h', generation: 4, boot_id: 'b' } }));
      await assert.rejects(client.identitySet(FULL), isCode('internal', /generation 4, not 3/));
      setRespond((req) => ({ id: req.id, ok: false, error: "invalid net.gateway: not in net.addr's subnet" }));
      await assert.rejects(client.identitySet(FULL), isCode('bad_request', /net\.gateway/));
      setRespond((req) => ({ id: req.id, ok: false, error: 'identity step net failed: add the default route: Network is unreachable' }));
      await assert.rejects(client.identitySet(FULL), isCode('internal', /identity step net failed/));
    } finally {
      client.close();
    }
  });
});

test('freezeFilesystems and thawFilesystems send paths and the thaw-after time, and check the answer', async () => {
  await withFakeAgent(async ({ requests, setRespond, socketPath }) => {
    setRespond((req) =>
      req.method === 'fs.freeze'
        ? { id: req.id, ok: true, result: { frozen: req.params?.paths } }
        : { id: req.id, ok: true, result: { thawed: req.params?.paths } },
    );
    const client = new AgentClient({ socketPath, transport: 'virtio-serial' });
    try {
      assert.deepEqual(await client.freezeFilesystems(['/', '/root'], 10_000), ['/', '/root']);
      assert.deepEqual(await client.thawFilesystems(['/', '/root']), ['/', '/root']);
      assert.deepEqual(
        requests.map((r) => [r.method, r.params]),
        [
          ['fs.freeze', { paths: ['/', '/root'], thaw_after_ms: 10_000 }],
          ['fs.thaw', { paths: ['/', '/root'] }],
        ],
      );
      // refused before sending
      await assert.rejects(client.freezeFilesystems([], 1000), isCode('bad_request', /1 to 8/));
      await assert.rejects(
        client.freezeFilesystems(
          Array.from({ length: 9 }, (_, i) => `/m${i}`),
          1000,
        ),
        isCode('bad_request', /1 to 8/),
      );
      await assert.rejects(client.freezeFilesystems(['root'], 1000), isCode('bad_request', /absolute/));
      await assert.rejects(client.freezeFilesystems(['/', '/'], 1000), isCode('bad_request', /repeats/));
      await assert.rejects(client.freezeFilesystems(['/'], 99), isCode('bad_request', /100\.\.60000/));
      await assert.rejects(client.freezeFilesystems(['/'], 60_001), isCode('bad_request', /100\.\.60000/));
      await assert.rejects(client.thawFilesystems(['/a\0b']), isCode('bad_request', /absolute/));
      assert.equal(requests.length, 2, 'the refused calls sent nothing');
      // a guest that answers for other paths than asked
      setRespond((req) => ({ id: req.id, ok: true, result: { frozen: ['/'] } }));
      await assert.rejects(client.freezeFilesystems(['/', '/root'], 1000), isCode('internal', /other paths/));
      setRespond((req) => ({ id: req.id, ok: true, result: { frozen: ['relative'] } }));
      await assert.rejects(client.freezeFilesystems(['/'], 1000), isCode('internal', /invalid fs\.freeze result/));
      setRespond((req) => ({ id: req.id, ok: false, error: 'invalid paths: /x is not a mount point' }));
      await assert.rejects(client.freezeFilesystems(['/x'], 1000), isCode('bad_request', /not a mount point/));
    } finally {
      client.close();
    }
  });
});

test('AgentLink passes the warm-start calls through the checking client', async () => {
  await withFakeAgent(async ({ requests, setRespond, socketPath }) => {
    setRespond((req) =>
      req.method === 'identity.set'
        ? { id: req.id, ok: true, result: { hostname: 'clone-1', generation: 3, boot_id: 'b-1' } }
        : req.method === 'fs.freeze'
          ? { id: req.id, ok: true, result: { frozen: req.params?.paths } }
          : { id: req.id, ok: true, result: { thawed: req.params?.paths } },
    );
    const link = openAgentLink({ agentSocket: socketPath, agentTransport: 'virtio-serial' } as VmmHandle);
    try {
      await link.identitySet(FULL, 2000);
      await link.freezeFilesystems(['/'], 5000, 2000);
      await link.thawFilesystems(['/'], 2000);
      // the client's checks hold on the link too: a bad param is refused before sending
      await assert.rejects(link.identitySet({ ...FULL, hostname: 'Bad' }, 2000), isCode('bad_request', /hostname/));
      assert.deepEqual(
        requests.map((r) => r.method),
        ['identity.set', 'fs.freeze', 'fs.thaw'],
      );
      assert.equal(requests[1]?.params?.thaw_after_ms, 5000);
    } finally {
      link.close();
    }
  });
});

test('the schemas: the contract example passes; results are bounded', () => {
  assert.equal(IdentityParamsSchema.safeParse(FULL).success, true);
  assert.equal(IdentityParamsSchema.safeParse({ clock_unix_ms: FULL.clock_unix_ms, net: { iface: 'eth0', addr: '10.0.0.2', prefix: 8 } }).success, true);
  assert.equal(IdentityParamsSchema.safeParse({ hostname: 'x' }).success, false, 'the clock is required');
  assert.equal(IdentityResultSchema.safeParse({ hostname: 'h', generation: null, boot_id: '' }).success, true);
  assert.equal(FreezeResultSchema.safeParse({ frozen: Array.from({ length: 9 }, () => '/') }).success, false);
});
