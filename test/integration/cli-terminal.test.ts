import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { sanitizeForTerminal, sanitizeInline } from '../../src/cli/render.js';
import { BANGER, runProcess } from '../helpers/banger.js';

/** What a hostile guest puts in its hostname, a listener's command line or its console. */
const EVIL = '\x1b]0;pwned\x07\x1b[2J\x1b[H\x9b31m\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\\u202egnp.exe\u200f\u061c\u200e\u2028\u2029\r';
/** Bytes that start or make up a terminal control sequence (ESC, BEL, CSI/OSC in C1, CR, bidi). */
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

const vm = {
  id: 'a'.repeat(32),
  name: 'evil',
  imageId: 'b'.repeat(32),
  imageName: 'debian',
  kernelName: 'k',
  state: 'running',
  vcpus: 1,
  memoryMib: 512,
  diskSizeBytes: 1024 ** 3,
  vmm: 'qemu',
  accel: 'kvm',
  pid: 1234,
  ip: '172.30.0.2',
  nat: false,
  tap: 'bgtap0',
  lastError: `boot failed\n--- serial console tail ---\n${EVIL}`,
  dir: '/tmp/x',
  createdAt: new Date().toISOString(),
  startedAt: null,
  touchedAt: new Date().toISOString(),
};

let home: string;
let daemon: Server;

/** FakeDaemon: a stand-in bangerd on the CLI's socket that returns guest-controlled strings as a real one would relay them. */
before(async () => {
  home = await mkdtemp('/tmp/bg-term-');
  await mkdir(join(home, 'run'), { recursive: true });
  await chmod(join(home, 'run'), 0o700);
  daemon = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const json = (body: unknown, status = 200) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === '/v1/daemon') return json({ ok: true });
    if (url.pathname === '/v1/vms/evil') return json(vm);
    if (url.pathname === '/v1/vms/evil/ports') {
      return json({ ports: [{ proto: 'tcp', address: '0.0.0.0', port: 8080, pid: 7, command: `node ${EVIL} server.js`, endpoint: 'evil.vm:8080' }] });
    }
    if (url.pathname === '/v1/vms/evil/health') return json({ ready: true, uptimeSeconds: 3, agentVersion: '0.1.0', hostname: `evil${EVIL}`, latencyMs: 1 });
    if (url.pathname === '/v1/vms/evil/logs') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      return res.end(`[    0.0] Linux version 6.1\r\n${EVIL}\r\nlogin: \n`);
    }
    if (url.pathname === '/v1/vms/actions') {
      return json({ results: [{ ref: 'evil', ok: false, error: { code: 'internal', message: `stop failed: ${EVIL}`, fix: `try ${EVIL}` } }] });
    }
    return json({ error: { code: 'internal', message: `no route: ${EVIL}`, fix: EVIL } }, 500);
  });
  await new Promise<void>((r) => daemon.listen(join(home, 'run', 'bangerd.sock'), r));
});
after(async () => {
  await new Promise<void>((r) => daemon.close(() => r()));
  await rm(home, { recursive: true, force: true });
});

const cli = (...args: string[]) => {
  const env: NodeJS.ProcessEnv = { ...process.env, BANGER_HOME: home, NO_COLOR: '1' };
  delete env.BANGER_CONFIG;
  return runProcess(process.execPath, [BANGER, ...args], { env }, 30_000);
};

for (const args of [
  ['vm', 'ports', 'evil'],
  ['vm', 'health', 'evil'],
  ['vm', 'show', 'evil'],
  ['vm', 'logs', 'evil'],
  ['vm', 'stop', 'evil'],
  ['vm', 'stats', 'evil'],
]) {
  test(`banger ${args.join(' ')}: guest escape sequences never reach the terminal`, async () => {
    const r = await cli(...args);
    const out = r.stdout + r.stderr;
    assert.ok(out.length > 0);
    assert.ok(!CONTROL.test(out.replace(/[\n\t]/g, '')), `control characters in the output: ${JSON.stringify(out)}`);
    // The printable rest of the hostile text is still shown (nothing else was dropped).
    if (args[1] !== 'stats') assert.match(out, /0;pwned/);
  });
}

test('sanitizeForTerminal: C0 (except \\n, \\t), DEL, C1 and bidi controls are removed; text is kept', () => {
  assert.equal(sanitizeForTerminal('\x1b]0;pwned\x07\x1b[2J'), ']0;pwned[2J');
  assert.equal(sanitizeForTerminal('a\tb\nc\r\x00\x7f\x85\x9b\u202e\u2066d'), 'a\tb\ncd');
  assert.equal(sanitizeForTerminal('héllo ✓ 世界 😀'), 'héllo ✓ 世界 😀');
  assert.equal(sanitizeInline('two\nlines\tand tab\x1b'), 'two lines and tab');
});
