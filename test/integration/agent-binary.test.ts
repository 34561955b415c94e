import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { readFileSync, statSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient } from '../../src/guest/agent-client.js';
import {
  AGENT_MAX_COMMAND_CHARS,
  AGENT_MAX_LINE_BYTES,
  AGENT_METHODS,
  type AgentMethod,
  type AgentPortEntry,
  type AgentResponse,
  AgentResponseSchema,
} from '../../src/guest/agent-protocol.js';
import { AGENT_BINARY, ensureAgentBuilt } from '../helpers/agent-harness.js';
import { requires } from '../helpers/prereq.js';

ensureAgentBuilt();
const binary = AGENT_BINARY;

/** Reads the agent's reply lines from a stream, one at a time. */
class LineReader {
  private readonly lines: string[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;

  constructor(stream: NodeJS.ReadableStream) {
    const rl = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
    rl.on('line', (line) => {
      this.lines.push(line);
      this.waiter?.();
    });
    rl.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
  }

  async next(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.ended) throw new Error('the agent closed its output');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply line within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = null;
    }
    return this.lines.shift()!;
  }
}

/** Parses a reply with the host's own schemas: the C side must satisfy exactly what the client accepts. */
function parseReply(line: string): AgentResponse {
  assert.ok(Buffer.byteLength(line) <= AGENT_MAX_LINE_BYTES, `reply of ${Buffer.byteLength(line)} bytes`);
  return AgentResponseSchema.parse(JSON.parse(line));
}

interface Channel {
  write(data: string | Buffer): void;
  reader: LineReader;
}

async function request(ch: Channel, raw: string | Buffer): Promise<AgentResponse> {
  ch.write(typeof raw === 'string' && !raw.endsWith('\n') ? `${raw}\n` : raw);
  return parseReply(await ch.reader.next());
}

async function call<M extends AgentMethod>(ch: Channel, id: number, method: M) {
  const reply = await request(ch, JSON.stringify({ id, method }));
  assert.equal(reply.id, id);
  assert.ok(reply.ok, `${method} failed: ${reply.ok ? '' : reply.error}`);
  return AGENT_METHODS[method].parse(reply.result) as ReturnType<(typeof AGENT_METHODS)[M]['parse']>;
}

class StdioAgent implements Channel {
  readonly child: ChildProcessWithoutNullStreams;
  readonly reader: LineReader;
  stderr = '';

  constructor(args: string[] = ['--stdio']) {
    this.child = spawn(binary, args, { stdio: 'pipe' });
    this.child.stderr.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.child.stdin.on('error', () => {});
    this.reader = new LineReader(this.child.stdout);
  }

  write(data: string | Buffer): void {
    this.child.stdin.write(data);
  }

  exited(): Promise<number | null> {
    if (this.child.exitCode !== null) return Promise.resolve(this.child.exitCode);
    return new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
  }

  stop(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

async function withAgent(body: (agent: StdioAgent) => Promise<void>): Promise<void> {
  const agent = new StdioAgent();
  try {
    await body(agent);
    assert.equal(agent.child.exitCode, null, `the agent died: ${agent.stderr}`);
  } finally {
    agent.stop();
  }
}

const findPort = (ports: AgentPortEntry[], proto: string, address: string, port: number) =>
  ports.find((p) => p.proto === proto && p.address === address && p.port === port);

test('the binary is statically linked, stripped and small', () => {
  const elf = readFileSync(binary);
  assert.equal(elf.subarray(0, 4).toString('latin1'), '\x7fELF');
  assert.equal(elf[4], 2, 'a 64-bit ELF');
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  const types = Array.from({ length: phnum }, (_, i) => elf.readUInt32LE(phoff + i * phentsize));
  assert.ok(!types.includes(3), 'no PT_INTERP: no dynamic loader needed');
  assert.ok(statSync(binary).size < 2 * 1024 * 1024, `size ${statSync(binary).size}`);
});

const hasFile = spawnSync('file', ['--version'], { stdio: 'ignore' }).status === 0;
test('file(1) agrees: statically linked and stripped', { skip: requires(hasFile, 'file(1) is not installed') }, () => {
  const description = execFileSync('file', ['-b', binary]).toString();
  assert.match(description, /statically linked/);
  assert.match(description, /stripped/);
  assert.doesNotMatch(description, /not stripped/);
});

test('--version and bad flags', () => {
  assert.equal(execFileSync(binary, ['--version']).toString().trim(), 'banger-agent 0.1.0');
  assert.throws(
    () => execFileSync(binary, ['--bogus'], { stdio: 'pipe' }),
    (e: { status?: number }) => e.status === 2,
  );
  assert.throws(
    () => execFileSync(binary, ['--stdio', '--vsock-port', '5'], { stdio: 'pipe' }),
    (e: { status?: number }) => e.status === 2,
  );
});

test('health: ready, uptime, version, hostname and boot id of this machine', async () => {
  await withAgent(async (agent) => {
    const h = await call(agent, 1, 'health');
    assert.equal(h.ready, true);
    assert.ok(h.uptime_s > 0);
    assert.equal(h.agent_version, '0.1.0');
    assert.equal(h.hostname, hostname());
    assert.equal(h.boot_id, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    await call(agent, 2, 'ping');
  });
});

test('ports lists our TCP and UDP sockets with our pid and command', async () => {
  const tcp = net.createServer();
  await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const udp = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
  const tcp6 = net.createServer();
  const has6 = await new Promise<boolean>((resolve) => {
    tcp6.once('error', () => resolve(false));
    tcp6.listen(0, '::1', () => resolve(true));
  });
  try {
    await withAgent(async (agent) => {
      const { ports, truncated } = await call(agent, 7, 'ports');
      assert.notEqual(truncated, true);
      const tcpPort = (tcp.address() as net.AddressInfo).port;
      const t = findPort(ports, 'tcp', '127.0.0.1', tcpPort);
      assert.ok(t, `tcp ${tcpPort} not in ${JSON.stringify(ports)}`);
      assert.equal(t.pid, process.pid);
      assert.match(t.command, /node/);
      const u = findPort(ports, 'udp', '127.0.0.1', udp.address().port);
      assert.ok(u, `udp ${udp.address().port} not listed`);
      assert.equal(u.pid, process.pid);
      assert.match(u.command, /node/);
      if (has6) {
        const t6 = findPort(ports, 'tcp6', '::1', (tcp6.address() as net.AddressInfo).port);
        assert.ok(t6, 'tcp6 ::1 listener not listed');
        assert.equal(t6.pid, process.pid);
      }
      // Only listening TCP sockets: an established connection is not a port.
      const conn = net.connect(tcpPort, '127.0.0.1');
      await new Promise<void>((resolve) => conn.once('connect', resolve));
      const again = (await call(agent, 8, 'ports')).ports;
      assert.equal(again.filter((p) => p.proto === 'tcp' && p.port === conn.localPort).length, 0);
      conn.destroy();
    });
  } finally {
    tcp.close();
    tcp6.close();
    udp.close();
  }
});

/** Starts a node process listening on a TCP port with extra argv; resolves with it and its port. */
async function listenerWithArgs(args: string[]) {
  const script = "const s=require('net').createServer().listen(0,'127.0.0.1',()=>console.log(s.address().port))";
  const child = spawn(process.execPath, ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = Number(await new LineReader(child.stdout).next());
  return { child, port };
}

test('ports: commands are JSON-escaped, valid UTF-8 and cut at 256 bytes on a character boundary', async () => {
  const nasty = 'q"uote \\back\tslash\x01\x1f\x7f é ✓ 😀 </script>';
  const a = await listenerWithArgs([nasty]);
  const b = await listenerWithArgs(['é'.repeat(300)]);
  try {
    await withAgent(async (agent) => {
      const { ports } = await call(agent, 1, 'ports');
      const fullA = readFileSync(`/proc/${a.child.pid}/cmdline`).toString('utf8').replaceAll('\0', ' ').trimEnd();
      const pa = findPort(ports, 'tcp', '127.0.0.1', a.port);
      assert.ok(pa);
      assert.equal(pa.pid, a.child.pid);
      if (Buffer.byteLength(fullA) <= 256) assert.equal(pa.command, fullA);
      else assert.ok(fullA.startsWith(pa.command));
      assert.ok(pa.command.includes('-e'));

      const fullB = readFileSync(`/proc/${b.child.pid}/cmdline`).toString('utf8').replaceAll('\0', ' ');
      const pb = findPort(ports, 'tcp', '127.0.0.1', b.port);
      assert.ok(pb);
      assert.ok(Buffer.byteLength(pb.command) <= 256 && Buffer.byteLength(pb.command) >= 253, `${Buffer.byteLength(pb.command)} bytes`);
      assert.ok(pb.command.length <= AGENT_MAX_COMMAND_CHARS);
      assert.ok(!pb.command.includes('\ufffd'), 'no character cut in half');
      assert.ok(fullB.startsWith(pb.command));
    });
  } finally {
    a.child.kill();
    b.child.kill();
  }
});

test('stats: memory, load and uptime', async () => {
  await withAgent(async (agent) => {
    const s = await call(agent, 3, 'stats');
    assert.ok(s.mem_total_kib > 0);
    assert.ok(s.mem_available_kib > 0 && s.mem_available_kib <= s.mem_total_kib);
    const meminfo = readFileSync('/proc/meminfo', 'utf8');
    assert.equal(s.mem_total_kib, Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1]));
    for (const l of [s.load1, s.load5, s.load15]) assert.ok(l >= 0);
    assert.ok(s.uptime_s > 0);
  });
});

test('malformed requests get an error reply and the agent keeps answering', async () => {
  await withAgent(async (agent) => {
    const cases: Array<[string, number, RegExp]> = [
      ['garbage', 0, /invalid JSON/],
      ['{"id":1,"method":"ping"', 0, /invalid JSON/],
      ['{"id":1,"method":"ping"} trailing', 0, /invalid JSON/],
      ['{"id":1,"method":"ping",}', 0, /invalid JSON/],
      ['[1,2]', 0, /must be a JSON object/],
      ['{"id":-1,"method":"ping"}', 0, /invalid id/],
      ['{"id":1.5,"method":"ping"}', 0, /invalid id/],
      ['{"id":"7","method":"ping"}', 0, /invalid id/],
      ['{"id":9007199254740992,"method":"ping"}', 0, /invalid id/],
      ['{"id":12,"method":"reboot"}', 12, /unknown method/],
      ['{"id":13,"method":"pingpingpingpingpingpingpingpingpingping"}', 13, /unknown method/],
      ['{"id":14,"method":"ping\\u0000"}', 14, /unknown method/],
      ['{"id":15}', 15, /missing method/],
      ['{"id":16,"method":5}', 16, /missing method/],
      [`${'['.repeat(10_000)}${']'.repeat(10_000)}`, 0, /must be a JSON object|invalid JSON/],
      // valid JSON beyond the parser's bounds is refused with the request's id (the host's call fails at once)
      [`{"id":17,"method":"ping","x":${'['.repeat(10_000)}${']'.repeat(10_000)}}`, 17, /nested too deep/],
      [`{"id":18,"method":"ping","x":[${Array(5000).fill(0).join(',')}]}`, 18, /too many entries/],
    ];
    for (const [line, id, error] of cases) {
      const reply = await request(agent, line);
      assert.equal(reply.id, id, line.slice(0, 60));
      assert.equal(reply.ok, false, line.slice(0, 60));
      if (!reply.ok) assert.match(reply.error, error);
      await call(agent, 99, 'ping');
    }
  });
});

test('well-formed requests in any shape are understood', async () => {
  await withAgent(async (agent) => {
    const ok = async (line: string, id: number) => {
      const reply = await request(agent, line);
      assert.equal(reply.id, id, line);
      assert.equal(reply.ok, true, line);
    };
    await ok('{"method":"ping","id":7}', 7);
    await ok('  {  "id" : 8 , "method" : "p\\u0069ng" }  \r', 8);
    await ok('{"id":9,"extra":{"a":[1,2.5e-3,true,false,null,"}\\"{"]},"method":"ping"}', 9);
    await ok('{"method":"ping"}', 0);
    await ok('{"id":null,"method":"ping"}', 0);
    await ok('{"id":9007199254740991,"method":"ping"}', 9007199254740991);
    // A blank line gets no reply: the next reply is the ping's.
    await ok('\n{"id":10,"method":"ping"}', 10);
  });
});

test('a 100 KiB line is rejected with one error and the agent stays alive', async () => {
  await withAgent(async (agent) => {
    const big = `{"id":5,"method":"ping","pad":"${'x'.repeat(100 * 1024)}"}\n`;
    for (let i = 0; i < big.length; i += 7000) agent.write(big.slice(i, i + 7000));
    const reply = parseReply(await agent.reader.next());
    assert.deepEqual(reply, { id: 0, ok: false, error: 'line too long (max 65536 bytes)' });
    assert.equal((await call(agent, 6, 'health')).ready, true);
    // A line of exactly 64 KiB is still accepted.
    const prefix = '{"id":7,"method":"ping","pad":"';
    const exact = `${prefix}${'y'.repeat(AGENT_MAX_LINE_BYTES - prefix.length - 2)}"}`;
    assert.equal(exact.length, AGENT_MAX_LINE_BYTES);
    const r = await request(agent, exact);
    assert.equal(r.id, 7);
    assert.equal(r.ok, true);
  });
});

test('pipelined requests are answered in order; random bytes do not kill the agent', async () => {
  await withAgent(async (agent) => {
    const n = 200;
    agent.write(Array.from({ length: n }, (_, i) => `${JSON.stringify({ id: i + 1, method: i % 2 ? 'ping' : 'stats' })}\n`).join(''));
    for (let i = 0; i < n; i++) assert.equal(parseReply(await agent.reader.next()).id, i + 1);

    const noise = randomBytes(256 * 1024);
    agent.write(noise);
    agent.write('\n');
    const newlines = noise.filter((b) => b === 0x0a).length + 1;
    // Every non-blank line (after splitting) is answered with an error with id 0.
    let replies = 0;
    agent.write('{"id":4242,"method":"ping"}\n');
    for (;;) {
      const reply = parseReply(await agent.reader.next());
      if (reply.id === 4242) break;
      assert.equal(reply.id, 0);
      assert.equal(reply.ok, false);
      replies++;
    }
    assert.ok(replies > 0 && replies <= newlines);
  });
});

test('--stdio exits cleanly at end of input', async () => {
  const agent = new StdioAgent();
  try {
    agent.write('{"id":1,"method":"ping"}\n');
    assert.equal(parseReply(await agent.reader.next()).id, 1);
    agent.child.stdin.end();
    assert.equal(await agent.exited(), 0);
  } finally {
    agent.stop();
  }
});

/** A Unix-socket server accepting one connection at a time, as a stand-in for the virtio port. */
async function socketServer(path: string) {
  const queue: net.Socket[] = [];
  let wake: (() => void) | null = null;
  const server = net.createServer((s) => {
    s.on('error', () => {});
    queue.push(s);
    wake?.();
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    server,
    async accept(timeoutMs = 5000): Promise<net.Socket> {
      const deadline = Date.now() + timeoutMs;
      while (queue.length === 0) {
        if (Date.now() > deadline) throw new Error('no connection from the agent');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 50);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
      return queue.shift()!;
    },
  };
}

const channelOf = (s: net.Socket): Channel => ({ write: (d) => s.write(d), reader: new LineReader(s) });

test('--device: serves a connected channel and reopens it when the other side goes away', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'banger-agent-dev-'));
  const path = join(dir, 'port.sock');
  const agent = new StdioAgent(['--device', path]);
  try {
    await sleep(300); // the device does not exist yet: the agent must keep retrying
    assert.equal(agent.child.exitCode, null);
    const srv = await socketServer(path);
    const first = await srv.accept();
    const ch1 = channelOf(first);
    assert.equal((await call(ch1, 1, 'health')).ready, true);
    first.destroy();
    const second = await srv.accept();
    const ch2 = channelOf(second);
    await call(ch2, 2, 'ping');
    assert.ok((await call(ch2, 3, 'stats')).mem_total_kib > 0);
    assert.equal(agent.child.exitCode, null);
    second.destroy();
    srv.server.close();
  } finally {
    agent.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the host AgentClient drives the real agent through a relayed socket', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'banger-agent-relay-'));
  const devicePath = join(dir, 'port.sock');
  const hostPath = join(dir, 'agent.sock');
  const srv = await socketServer(devicePath);
  const agent = new StdioAgent(['--device', devicePath]);
  // Like QEMU's chardev: the host connects to hostPath, bytes are relayed to the guest's port.
  const agentSide = await srv.accept();
  const host = net.createServer((c) => {
    c.on('error', () => {});
    c.pipe(agentSide);
    agentSide.pipe(c);
  });
  await new Promise<void>((resolve) => host.listen(hostPath, resolve));
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const client = new AgentClient({ socketPath: hostPath, transport: 'virtio-serial' });
  try {
    await client.waitReady(5000);
    const h = await client.health(2000);
    assert.equal(h.hostname, hostname());
    const { ports } = await client.ports(5000);
    const mine = findPort(ports, 'tcp', '127.0.0.1', (listener.address() as net.AddressInfo).port);
    assert.equal(mine?.pid, process.pid);
    assert.ok((await client.stats(2000)).mem_total_kib > 0);
    await client.ping(2000);
  } finally {
    client.close();
    listener.close();
    host.close();
    agentSide.destroy();
    srv.server.close();
    agent.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

/** Host pids of the children of pid, with their state letters. */
async function childrenOf(pid: number): Promise<Array<{ pid: number; state: string }>> {
  const out: Array<{ pid: number; state: string }> = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const m = /\) (\S) (\d+) /.exec(stat);
    if (m && Number(m[2]) === pid) out.push({ pid: Number(name), state: m[1]! });
  }
  return out;
}

test('as PID 1 the agent reaps orphans', async (t) => {
  try {
    execFileSync('unshare', ['--pid', '--fork', 'true'], { stdio: 'ignore' });
  } catch {
    t.skip('cannot create a PID namespace here (unshare --pid needs root)');
    return;
  }
  // The shell is PID 1 of a new namespace; its background grandchild is orphaned to it, then
  // the shell becomes the agent: when the orphan exits, only the agent can reap it.
  const agent = spawn('unshare', ['--pid', '--fork', '--kill-child', 'sh', '-c', `(sleep 1 &); exec ${binary} --stdio`], { stdio: 'pipe' });
  agent.stdin.on('error', () => {});
  try {
    const reader = new LineReader(agent.stdout);
    agent.stdin.write('{"id":1,"method":"ping"}\n');
    assert.equal(parseReply(await reader.next()).id, 1);
    const [inner] = await childrenOf(agent.pid!);
    assert.ok(inner, 'the namespace init process');
    assert.equal(readFileSync(`/proc/${inner.pid}/comm`, 'utf8').trim(), 'banger-agent');
    const orphans = await childrenOf(inner.pid);
    assert.equal(orphans.length, 1, 'the sleeping orphan belongs to the agent');
    let left = orphans;
    // The orphan sleeps 1 s, then exits; 60 s only bound a hang.
    for (const t0 = Date.now(); left.length > 0 && Date.now() - t0 < 60_000; ) {
      await sleep(100);
      left = await childrenOf(inner.pid);
    }
    assert.deepEqual(left, [], 'the exited orphan was reaped, not left a zombie');
    agent.stdin.write('{"id":2,"method":"ping"}\n');
    assert.equal(parseReply(await reader.next()).id, 2);
  } finally {
    agent.kill('SIGKILL');
  }
});
