import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { FAST_PATHS, fastPathFor } from '../../src/cli/fast-path.js';
import { buildProgram } from '../../src/cli/program.js';
import { ROOT } from '../helpers/banger.js';
import { FAKE_STATUS } from '../helpers/fake-status.js';

const execFileAsync = promisify(execFile);

/** The command a space-separated path names in the whole tree, e.g. "daemon status". */
function commandAt(program: Command, path: string): Command {
  let c = program;
  for (const name of path.split(' ')) {
    const next = c.commands.find((s) => s.name() === name);
    assert.ok(next, `no command "${path}" in the tree`);
    c = next;
  }
  return c;
}

test('commander parses each fast-path spelling into the command it names, with the options the fast path passes', async () => {
  for (const fast of FAST_PATHS) {
    const program = await buildProgram();
    let seen: unknown;
    // Replaces the real action with a recorder: what commander would hand the action for this command line.
    commandAt(program, fast.command).action((opts: unknown) => {
      seen = opts;
    });
    await program.parseAsync(['node', 'banger', ...fast.argv]);
    assert.deepEqual(seen, fast.opts, `banger ${fast.argv.join(' ')}`);
  }
});

test('fastPathFor takes the exact spellings only: help, other options and other orders go through commander', () => {
  assert.equal(fastPathFor(['daemon', 'status'])?.command, 'daemon status');
  assert.deepEqual(fastPathFor(['daemon', 'status', '--json'])?.opts, { json: true });
  for (const args of [
    ['daemon', 'status', '--help'],
    ['daemon', 'status', '-h'],
    ['daemon', 'status', '--frob'],
    ['daemon', 'status', '--json', '--json'],
    ['daemon', '--json', 'status'],
    ['daemon', 'stauts'],
    ['daemon'],
    ['status'],
    [],
  ]) {
    assert.equal(fastPathFor(args), undefined, `banger ${args.join(' ')}`);
  }
});

// A FAKE daemon (an HTTP server on the socket path, nothing of banger's) answering the status route,
// so both paths print the same answer and their output can be compared byte for byte.
const STATUS = FAKE_STATUS;
let home: string;
let server: Server;

before(async () => {
  home = await mkdtemp('/tmp/bg-fast-');
  await mkdir(join(home, 'run'), { mode: 0o700 });
  server = createServer((req, res) => {
    if (req.url !== '/v1/daemon') return void res.writeHead(404).end('{}');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(STATUS));
  });
  await new Promise<void>((resolve) => server.listen(join(home, 'run', 'bangerd.sock'), resolve));
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
  await rm(home, { recursive: true, force: true });
});

/** What a command line prints in a child process (async: the fake daemon answers from this one). */
async function stdoutOf(script: string): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, BANGER_HOME: home } });
  return stdout;
}

test('each fast path prints exactly what the commander action prints', async () => {
  const src = (m: string) => JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'src', 'cli', m)).href);
  for (const fast of FAST_PATHS) {
    const args = JSON.stringify(fast.argv);
    const viaFast = await stdoutOf(`const { fastPathFor } = await import(${src('fast-path.js')}); await fastPathFor(${args}).run();`);
    const viaCommander = await stdoutOf(
      `const { buildProgram } = await import(${src('program.js')}); await (await buildProgram(${args})).parseAsync(${args}, { from: 'user' });`,
    );
    assert.ok(viaFast.includes('4242'), `banger ${fast.argv.join(' ')}: the fake daemon's answer printed: ${viaFast}`);
    assert.equal(viaFast, viaCommander, `banger ${fast.argv.join(' ')}`);
  }
});
