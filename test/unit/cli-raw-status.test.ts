import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { parseRawStatus, RAW_OP_HEADER, RAW_STATUS_MAX_BYTES } from '../../src/cli/raw-status.js';
import { OP_HEADER } from '../../src/client/transport.js';
import { ROOT } from '../helpers/banger.js';
import { FAKE_STATUS } from '../helpers/fake-status.js';

const execFileAsync = promisify(execFile);

const STATUS = FAKE_STATUS;

/** An HTTP/1.1 response as bytes: `head` lines (status line first), then the body. */
function response(head: string[], body: string | Buffer): Buffer {
  return Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), Buffer.from(body)]);
}
const statusBody = (v: unknown = STATUS) => JSON.stringify(v);
const ok = (body = statusBody(), extra: string[] = []) =>
  response(['HTTP/1.1 200 OK', 'content-type: application/json', `content-length: ${Buffer.byteLength(body)}`, 'x-banger-op: op-fa4e01', ...extra], body);

// ---- the parser, on its own -------------------------------------------------------------------

test('parseRawStatus accepts a 200 with Content-Length and a status body', () => {
  assert.deepEqual(parseRawStatus(ok()), { kind: 'status', status: STATUS });
  // Header names are case-insensitive; optional whitespace around values is allowed.
  const body = statusBody();
  assert.equal(parseRawStatus(response(['HTTP/1.1 200 OK', `Content-Length:  ${body.length} `], body)).kind, 'status');
});

test('parseRawStatus waits for the rest of the head and of the body', () => {
  const full = ok();
  const headEnd = full.indexOf('\r\n\r\n');
  for (const cut of [0, 10, headEnd, headEnd + 2, headEnd + 4, full.length - 1]) {
    assert.equal(parseRawStatus(full.subarray(0, cut)).kind, 'incomplete', `first ${cut} bytes`);
  }
});

test('parseRawStatus refuses everything but the one narrow shape', () => {
  const body = statusBody();
  const len = `content-length: ${body.length}`;
  const cases: Array<[string, Buffer]> = [
    ['a 503 with an error body', response(['HTTP/1.1 503 Service Unavailable', 'content-length: 2'], '{}')],
    ['HTTP/1.0', response(['HTTP/1.0 200 OK', len], body)],
    ['a 2000 status', response(['HTTP/1.1 2000 OK', len], body)],
    ['chunked', response(['HTTP/1.1 200 OK', 'transfer-encoding: chunked'], `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`)],
    ['chunked beside a content-length', response(['HTTP/1.1 200 OK', len, 'Transfer-Encoding: chunked'], body)],
    ['no content-length', response(['HTTP/1.1 200 OK', 'connection: close'], body)],
    ['two content-lengths', response(['HTTP/1.1 200 OK', len, len], body)],
    ['a signed content-length', response(['HTTP/1.1 200 OK', `content-length: +${body.length}`], body)],
    ['a huge content-length', response(['HTTP/1.1 200 OK', 'content-length: 99999999999999999999'], body)],
    ['a header line without a colon', response(['HTTP/1.1 200 OK', len, 'no colon here'], body)],
    ['a header with a space in its name', response(['HTTP/1.1 200 OK', len, 'x bad: 1'], body)],
    ['a control character in a header value', response(['HTTP/1.1 200 OK', len, 'x-a: \u0001'], body)],
    ['a folded header line', response(['HTTP/1.1 200 OK', len, ' folded'], body)],
    ['bytes after the body', response(['HTTP/1.1 200 OK', len], `${body}{}`)],
    ['invalid JSON', response(['HTTP/1.1 200 OK', 'content-length: 5'], '{"pid')],
    ['an empty body', response(['HTTP/1.1 200 OK', 'content-length: 0'], '')],
    ['a JSON array', ok('[1]')],
    ['a JSON null', ok('null')],
    ['pid as a string', ok(statusBody({ ...STATUS, pid: '4242' }))],
    ['pid not an integer', ok(statusBody({ ...STATUS, pid: 1.5 }))],
    ['uptime missing', ok(statusBody({ ...STATUS, uptimeSeconds: undefined }))],
    ['version null', ok(statusBody({ ...STATUS, version: null }))],
    ['accel a number', ok(statusBody({ ...STATUS, accel: 1 }))],
    ['oversized', ok(statusBody({ ...STATUS, padding: 'x'.repeat(RAW_STATUS_MAX_BYTES) }))],
  ];
  for (const [name, bytes] of cases) assert.equal(parseRawStatus(bytes).kind, 'refused', name);
});

test('the raw request sends the op id header the client sends', () => {
  assert.equal(RAW_OP_HEADER, OP_HEADER);
});

// ---- end to end, against a FAKE daemon --------------------------------------------------------

/**
 * A FAKE daemon: a plain `net` server on the socket path, nothing of banger's, that answers the
 * n-th connection with `answers[n]` (bytes, or 'hang' for never) and then with a good status
 * answer. It records each request's head, so a test sees whether the client fell back (a second
 * request, sent by node:http) or not.
 */
class FakeDaemon {
  requests: string[] = [];
  answers: Array<Buffer | 'hang'> = [];
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(readonly socketPath: string) {
    this.server = createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {});
      let head = '';
      socket.on('data', (c: Buffer) => {
        const before = head.includes('\r\n\r\n');
        head += c.toString('latin1');
        if (before || !head.includes('\r\n\r\n')) return;
        const n = this.requests.push(head.slice(0, head.indexOf('\r\n\r\n'))) - 1;
        const answer = this.answers[n] ?? ok();
        if (answer !== 'hang') socket.end(answer);
      });
    });
  }

  listen = () => new Promise<void>((resolve) => this.server.listen(this.socketPath, resolve));

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

let home: string;
let fake: FakeDaemon;

before(async () => {
  home = await mkdtemp('/tmp/bg-raw-');
  await mkdir(join(home, 'run'), { mode: 0o700 });
  fake = new FakeDaemon(join(home, 'run', 'bangerd.sock'));
  await fake.listen();
});

afterEach(() => {
  fake.requests = [];
  fake.answers = [];
});

after(async () => {
  await fake.close();
  await rm(home, { recursive: true, force: true });
});

const mod = (...p: string[]) => JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'src', ...p)).href);

/** stdout, stderr and exit code of a script run in a child process against the fake's home. */
async function runScript(script: string): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, BANGER_HOME: home } });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

/** `banger daemon status [--json]` as the CLI answers it (raw first), with a short raw timeout. */
const viaCommand = (json: boolean) =>
  runScript(`await (await import(${mod('cli', 'commands', 'daemon-status.js')})).showDaemonStatus(${JSON.stringify(json ? { json } : {})}, 300);`);

/** What the normal path (BangerClient through node:http) prints for the same answer. */
async function viaClient(json: boolean): Promise<string> {
  const r = await runScript(
    `const { BangerClient } = await import(${mod('client', 'client.js')});
     const { printStatus } = await import(${mod('cli', 'commands', 'daemon-status.js')});
     const { printJson } = await import(${mod('cli', 'render.js')});
     const s = await new BangerClient().status();
     ${json ? 'printJson(s)' : 'printStatus(s)'};`,
  );
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

const RAW_HEAD = /^GET \/v1\/daemon HTTP\/1\.1\r\nHost: bangerd\r\nConnection: close\r\nx-banger-op: op-[0-9a-f]{6}$/;

test('against a daemon that answers normally, one raw request prints what the normal path prints', async () => {
  for (const json of [false, true]) {
    const expected = await viaClient(json);
    assert.ok(expected.includes('4242'), expected);
    fake.requests = [];
    const r = await viaCommand(json);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, expected, `json: ${json}`);
    assert.equal(fake.requests.length, 1, 'no fallback');
    assert.match(fake.requests[0] as string, RAW_HEAD);
  }
});

test('any other answer makes the raw path fall back to the normal one, which prints the same bytes', async () => {
  const expected = { text: await viaClient(false), json: await viaClient(true) };
  const body = statusBody();
  const firstAnswers: Array<[string, Buffer | 'hang']> = [
    ['chunked', response(['HTTP/1.1 200 OK', 'transfer-encoding: chunked'], `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`)],
    ['a 503', response(['HTTP/1.1 503 Service Unavailable', 'content-type: application/json', 'content-length: 2'], '{}')],
    ['oversized', ok(statusBody({ ...STATUS, padding: 'x'.repeat(RAW_STATUS_MAX_BYTES) }))],
    ['malformed head', response(['HTTP/1.1 200 OK', `content-length: ${body.length}`, 'no colon'], body)],
    ['a wrong field type', ok(statusBody({ ...STATUS, pid: '4242' }))],
    ['a truncated body, then close', ok().subarray(0, -5)],
    ['no answer (slow)', 'hang'],
  ];
  for (const [name, first] of firstAnswers) {
    for (const json of [false, true]) {
      fake.requests = [];
      fake.answers = [first];
      const r = await viaCommand(json);
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
      assert.equal(r.stdout, json ? expected.json : expected.text, `${name}, json: ${json}`);
      assert.equal(fake.requests.length, 2, `${name}: fell back`);
      assert.match(fake.requests[0] as string, RAW_HEAD, name);
      assert.match(fake.requests[1] as string, /^GET \/v1\/daemon HTTP\/1\.1\r\n/, name);
      assert.doesNotMatch(fake.requests[1] as string, /Host: bangerd/, `${name}: the second request is node:http's`);
    }
  }
});

test('an error answer ends as the normal path ends it: same message, fix, op id and exit code', async () => {
  const errorBody = JSON.stringify({ error: { code: 'busy', message: 'the fake is busy', fix: 'wait for the fake' } });
  const busy = response(
    ['HTTP/1.1 409 Conflict', 'content-type: application/json', `content-length: ${errorBody.length}`, 'x-banger-op: op-fa4e02'],
    errorBody,
  );
  fake.answers = [busy, busy];
  const r = await runScriptCli();
  assert.equal(fake.requests.length, 2, 'raw refused the 409, the normal path asked again');
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, 'error: the fake is busy (op-fa4e02)\nfix: wait for the fake\n');
  const { exitCodeFor } = await import('../../src/cli/render.js');
  const { BangerError } = await import('../../src/api/errors.js');
  assert.equal(r.code, exitCodeFor(new BangerError('busy', 'x')));
});

/** The real CLI entry, `banger daemon status` (the fast path with its default raw timeout). */
async function runScriptCli(): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [join(ROOT, 'bin', 'banger.js'), 'daemon', 'status'], {
      env: { ...process.env, BANGER_HOME: home },
    });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

test('the socket trust check runs before the raw path connects: an untrusted runtime dir gets the normal error and no connection', async () => {
  await chmod(join(home, 'run'), 0o755);
  try {
    const r = await runScriptCli();
    assert.equal(fake.requests.length, 0, 'nothing connected to the socket');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^error: refusing to talk to .*bangerd\.sock: .* has mode 755/);
    assert.match(r.stderr, /\nfix: if .* is yours, make it private: chmod 700/);
  } finally {
    await chmod(join(home, 'run'), 0o700);
  }
});
