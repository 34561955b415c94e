import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { AgentClient } from '../../src/guest/agent-client.js';
import { AGENT_MAX_BUFFERED_BYTES, AGENT_METHODS, type AgentMethod } from '../../src/guest/agent-protocol.js';
import { fuzzCases, type Rng } from '../helpers/fuzz.js';

const PROC = {
  id: 'p-1',
  name: null,
  argv: ['true'],
  shell: null,
  pid: 42,
  pty: false,
  state: 'running',
  exit_code: null,
  signal: null,
  timed_out: false,
  code: null,
  started_ms: 1700000000000,
  ended_ms: null,
  stdout_bytes: 0,
  stderr_bytes: 0,
  truncated: false,
  stdin: 'null',
  stdin_bytes: 0,
};
const VALID: Record<AgentMethod, unknown> = {
  health: { ready: true, uptime_s: 12.5, agent_version: '0.1.0', hostname: 'fake', boot_id: 'b-1' },
  ports: { ports: [{ proto: 'tcp', address: '0.0.0.0', port: 22, pid: 321, command: 'sshd' }] },
  stats: { mem_total_kib: 1000, mem_available_kib: 500, load1: 0.5, load5: 0.25, load15: 0, uptime_s: 1 },
  ping: {},
  poweroff: {},
  'proc.start': PROC,
  'proc.list': { procs: [PROC, { ...PROC, id: 'p-2', state: 'exited', exit_code: 0, ended_ms: 1700000001000 }] },
  'proc.show': PROC,
  'proc.signal': PROC,
  'proc.resize': {},
  'proc.stdin': { offset: 10 },
  'proc.eof': { offset: 10 },
  'proc.forget': {},
  'fs.stat': { type: 'file', mode: 0o644, size: 3, mtime_ms: 1700000000000, uid: 0, gid: 0 },
  'fs.list': { entries: [{ name: 'a', type: 'dir', mode: 0o755, size: 4096, mtime_ms: 1 }], truncated: false },
  'fs.mkdir': {},
  'fs.move': {},
  'fs.remove': {},
  'identity.set': { hostname: 'clone-1', generation: 3, boot_id: 'b-1' },
  'fs.freeze': { frozen: ['/', '/root'] },
  'fs.thaw': { thawed: ['/'] },
};
const METHODS = Object.keys(AGENT_METHODS) as AgentMethod[];

/** Random JSON-ish values, sometimes deep, sometimes long. */
function randomValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 3 ? 4 : 7)) {
    case 0:
      return rng.int(2) ? rng.int(1 << 30) : rng.pick([-1, 0, 1.5, 1e300, Number.MAX_SAFE_INTEGER + 2]);
    case 1:
      return rng.string(40);
    case 2:
      return rng.bool();
    case 3:
      return null;
    case 4:
      return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
    default:
      return Object.fromEntries(
        Array.from({ length: rng.int(5) }, () => [rng.pick(['id', 'ok', 'result', 'error', 'ports', '__proto__', 'x']), randomValue(rng, depth + 1)]),
      );
  }
}

/** What a hostile agent sends in answer to request `id` (before the fake's final valid line). */
function hostileFrame(rng: Rng, id: number, method: AgentMethod): Buffer {
  const valid = Buffer.from(JSON.stringify({ id, ok: true, result: VALID[method] }));
  switch (rng.int(8)) {
    case 0:
      return rng.mutate(valid, 1 + rng.int(6));
    case 1:
      return Buffer.from(
        JSON.stringify({ id: rng.pick([id, 0, id + 1, -1, 'x']), ok: rng.pick([true, false, 'yes']), result: randomValue(rng), error: rng.string(2000) }),
      );
    case 2:
      // Deep nesting inside a line.
      return Buffer.from(`{"id":${id},"ok":true,"result":${'['.repeat(rng.int(20_000))}`);
    case 3:
      // Longer than a line may be, with or without a newline inside.
      return Buffer.concat([Buffer.alloc(AGENT_MAX_BUFFERED_BYTES + rng.int(4096), rng.pick([0x41, 0x7b, 0x00, 0x0a])), valid]);
    case 4:
      return rng.bytes(rng.int(512));
    case 5:
      return Buffer.from(`${JSON.stringify({ id, ok: true, result: randomValue(rng) })}\r\n${rng.string(30)}`);
    case 6:
      // Many small lines at once.
      return Buffer.from(Array.from({ length: rng.int(200) }, () => JSON.stringify({ id: rng.int(5), ok: rng.bool(), result: {} })).join('\n'));
    default:
      return valid;
  }
}

test('fuzz: the agent frame parser (framing, JSON, envelope, per-method schemas) settles every call, never throws, stays bounded', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'banger-fuzz-agent-'));
  const path = join(dir, 'agent.sock');
  /** The current case's Rng; undefined once the fuzzing is over (the fake then answers honestly). */
  let rng: Rng | undefined;
  let maxBuffered = 0;
  let client: AgentClient | undefined;
  const server = net.createServer((sock) => {
    sock.on('error', () => {});
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const req = JSON.parse(buf.slice(0, nl)) as { id: number; method: AgentMethod };
        buf = buf.slice(nl + 1);
        const honest = Buffer.from(`\n${JSON.stringify({ id: req.id, ok: true, result: VALID[req.method] })}\n`);
        if (!rng) {
          sock.write(honest);
          continue;
        }
        const r = rng;
        const frame = Buffer.concat([hostileFrame(r, req.id, req.method), honest]);
        // Split at random points, as a byte stream may be.
        let at = 0;
        while (at < frame.length) {
          const n = 1 + r.int(r.bool(0.2) ? 8 : 70_000);
          sock.write(frame.subarray(at, at + n));
          at += n;
          if (client) maxBuffered = Math.max(maxBuffered, client.bufferedBytes);
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  client = new AgentClient({ socketPath: path, transport: 'virtio-serial' });
  const c = client;
  try {
    const outcome = { resolved: 0, rejected: 0 };
    await fuzzCases('agent-frames', { seed: 0xa6e47, cases: 1500 }, async (caseRng) => {
      rng = caseRng;
      const method = caseRng.pick(METHODS);
      try {
        const result = await c.call(method, 5000);
        // Whatever resolves passed the method's schema.
        assert.ok(AGENT_METHODS[method].safeParse(result).success);
        outcome.resolved++;
      } catch (e) {
        assert.ok(e instanceof BangerError, `a BangerError, not ${String(e)}`);
        assert.notEqual(e.code, 'timeout', 'every call settles from what the guest sent');
        outcome.rejected++;
      }
      assert.ok(c.bufferedBytes <= AGENT_MAX_BUFFERED_BYTES);
      assert.equal(c.pendingCalls, 0);
    });
    assert.ok(outcome.resolved > 0 && outcome.rejected > 0, JSON.stringify(outcome));
    assert.ok(maxBuffered <= AGENT_MAX_BUFFERED_BYTES);
    // The client still works with an honest agent.
    rng = undefined;
    assert.deepEqual(await c.call('ping', 5000), {});
  } finally {
    c.close();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  }
});
