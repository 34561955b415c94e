import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { sshArgv } from '../../src/cli/commands/ssh.js';
import { DetachKeyScanner, parseDetachKeys } from '../../src/cli/detach-keys.js';
import { endNotice, exitStatusOf, LOST_STATUS, type ProcEnd, signalName, signalNumber, TIMEOUT_STATUS } from '../../src/cli/exit-status.js';
import { envArg, procNameArg, signalArg, timeoutArg } from '../../src/cli/proc-args.js';
import { classifyRunArgs, countAfterDashDash, expandHome } from '../../src/cli/run-args.js';
import { driftWarning, gitHead, workspaceOf } from '../../src/cli/workspace-drift.js';
import { missing } from '../helpers/prereq.js';

const end = (p: Partial<ProcEnd>): ProcEnd => ({ state: 'exited', exitCode: null, signal: null, timedOut: false, code: null, ...p });

describe('exit status of a guest process', () => {
  test('an exit code passes through; a signal death is 128+N whether named or numbered', () => {
    assert.equal(exitStatusOf(end({ exitCode: 0 })), 0);
    assert.equal(exitStatusOf(end({ exitCode: 1 })), 1);
    assert.equal(exitStatusOf(end({ exitCode: 3 })), 3);
    assert.equal(exitStatusOf(end({ exitCode: 255 })), 255);
    assert.equal(exitStatusOf(end({ signal: 'KILL' })), 137);
    assert.equal(exitStatusOf(end({ signal: 'TERM' })), 143);
    assert.equal(exitStatusOf(end({ signal: '40' })), 168);
    assert.equal(exitStatusOf(end({ signal: 2 })), 130);
  });

  test('command_not_found is 127, exec failures 126, a timeout 124, a lost process 255', () => {
    assert.equal(exitStatusOf(end({ code: 'command_not_found', exitCode: 127 })), 127);
    assert.equal(exitStatusOf(end({ code: 'command_not_found', exitCode: null })), 127);
    assert.equal(exitStatusOf(end({ code: 'permission_denied', exitCode: 126 })), 126);
    assert.equal(exitStatusOf(end({ code: 'exec_failed', exitCode: null })), 126);
    assert.equal(exitStatusOf(end({ timedOut: true, signal: 'KILL' })), TIMEOUT_STATUS);
    assert.equal(exitStatusOf(end({ state: 'lost' })), LOST_STATUS);
  });

  test('the notice names what happened; a plain exit and Ctrl-C need none', () => {
    assert.match(endNotice(end({ code: 'command_not_found', exitCode: 127 }), 'nosuch') ?? '', /^nosuch: command not found in the guest \(exit 127\)$/);
    assert.match(endNotice(end({ signal: 'KILL' }), 'sleep 9') ?? '', /killed by SIGKILL \(exit 137\)/);
    assert.match(endNotice(end({ timedOut: true, signal: 'KILL' }), 'x', '30s') ?? '', /killed after its timeout of 30s \(exit 124\)/);
    assert.match(endNotice(end({ state: 'lost' }), 'x') ?? '', /lost/);
    assert.equal(endNotice(end({ exitCode: 1 }), 'false'), undefined);
    assert.equal(endNotice(end({ signal: 'INT' }), 'x'), undefined);
  });

  test('signal names and numbers', () => {
    assert.equal(signalNumber('TERM'), 15);
    assert.equal(signalNumber('sigkill'), 9);
    assert.equal(signalNumber('9'), 9);
    assert.equal(signalNumber('64'), 64);
    assert.equal(signalNumber('65'), undefined);
    assert.equal(signalNumber('0'), undefined);
    assert.equal(signalNumber('BOGUS'), undefined);
    assert.equal(signalName(15), 'SIGTERM');
    assert.equal(signalName(40), 'signal 40');
  });
});

describe('detach keys', () => {
  test('docker-style specs parse; bad ones are refused; "" disables', () => {
    assert.deepEqual(parseDetachKeys('ctrl-p,ctrl-q'), Buffer.from([0x10, 0x11]));
    assert.deepEqual(parseDetachKeys('ctrl-a,d'), Buffer.from([0x01, 0x64]));
    assert.deepEqual(parseDetachKeys('ctrl-@,ctrl-_'), Buffer.from([0x00, 0x1f]));
    assert.deepEqual(parseDetachKeys(''), Buffer.alloc(0));
    for (const bad of ['ctrl-', 'ctrl-pq', 'ctrl-1', 'pp', 'ctrl-p,,ctrl-q', '\x01']) assert.equal(parseDetachKeys(bad), undefined, bad);
  });

  const keys = parseDetachKeys('ctrl-p,ctrl-q') as Buffer;

  test('the sequence detaches; what came before it is forwarded, nothing after it', () => {
    const s = new DetachKeyScanner(keys);
    assert.deepEqual(s.push(Buffer.from('ls\r')), Buffer.from('ls\r'));
    assert.deepEqual(s.push(Buffer.from([0x61, 0x10, 0x11, 0x62])), Buffer.from('a'));
    assert.equal(s.detached, true);
    assert.deepEqual(s.push(Buffer.from('more')), Buffer.alloc(0));
  });

  test('a sequence split across chunks still detaches, and the held prefix is not forwarded early', () => {
    const s = new DetachKeyScanner(keys);
    assert.deepEqual(s.push(Buffer.from([0x78, 0x10])), Buffer.from('x'));
    assert.equal(s.detached, false);
    assert.deepEqual(s.push(Buffer.from([0x11])), Buffer.alloc(0));
    assert.equal(s.detached, true);
  });

  test('Ctrl-P alone or followed by something else reaches the process', () => {
    const s = new DetachKeyScanner(keys);
    assert.deepEqual(s.push(Buffer.from([0x10])), Buffer.alloc(0));
    assert.deepEqual(s.push(Buffer.from('k')), Buffer.from([0x10, 0x6b]));
    assert.deepEqual(s.push(Buffer.from([0x10, 0x10, 0x11])), Buffer.from([0x10]));
    assert.equal(s.detached, true);
    const t = new DetachKeyScanner(keys);
    assert.deepEqual(t.push(Buffer.from([0x10])), Buffer.alloc(0));
    assert.deepEqual(t.flush(), Buffer.from([0x10]), 'a prefix held at EOF is forwarded');
  });

  test('a sequence with a repeated prefix is found at any position', () => {
    const s = new DetachKeyScanner(Buffer.from('aab'));
    assert.deepEqual(s.push(Buffer.from('xaaab')), Buffer.from('xa'));
    assert.equal(s.detached, true);
  });

  test('no keys: everything passes through, even the default sequence', () => {
    const s = new DetachKeyScanner(Buffer.alloc(0));
    assert.deepEqual(s.push(Buffer.from([0x10, 0x11])), Buffer.from([0x10, 0x11]));
    assert.equal(s.detached, false);
  });
});

describe('vm run arguments', () => {
  const dirs = new Set(['/home/u/src/app', '/work/app', '/work', '/home/u']);
  const env = { cwd: '/work/app', home: '/home/u', isDirectory: (p: string) => dirs.has(p) };

  test('a first argument spelled like a path that names a directory is the workspace', () => {
    assert.deepEqual(classifyRunArgs(['.'], 0, env), { repo: '/work/app', command: [] });
    assert.deepEqual(classifyRunArgs(['./'], 0, env), { repo: '/work/app', command: [] });
    assert.deepEqual(classifyRunArgs(['..', 'make', 'test'], 2, env), { repo: '/work', command: ['make', 'test'] });
    assert.deepEqual(classifyRunArgs(['~/src/app'], 0, env), { repo: '/home/u/src/app', command: [] });
    assert.deepEqual(classifyRunArgs(['~'], 0, env), { repo: '/home/u', command: [] });
    assert.deepEqual(classifyRunArgs(['/work/app', 'ls'], 0, env), { repo: '/work/app', command: ['ls'] });
  });

  test('anything else is the command, as before workspaces', () => {
    assert.deepEqual(classifyRunArgs([], 0, env), { command: [] });
    assert.deepEqual(classifyRunArgs(['uname', '-r'], 2, env), { command: ['uname', '-r'] });
    // A path that is not a directory (a script), or a bare word that happens to name one.
    assert.deepEqual(classifyRunArgs(['./build.sh'], 0, env), { command: ['./build.sh'] });
    assert.deepEqual(classifyRunArgs(['app'], 0, { ...env, cwd: '/work' }), { command: ['app'] });
    assert.deepEqual(classifyRunArgs(['/nonexistent', 'x'], 0, env), { command: ['/nonexistent', 'x'] });
    // ~user is not expanded here.
    assert.deepEqual(classifyRunArgs(['~u'], 0, env), { command: ['~u'] });
  });

  test('after -- it is always the command, even a directory', () => {
    assert.deepEqual(classifyRunArgs(['/work'], 1, env), { command: ['/work'] });
    assert.deepEqual(classifyRunArgs(['.', 'ls', '.'], 2, env), { repo: '/work/app', command: ['ls', '.'] });
  });

  test('--repo names the workspace explicitly and must be a directory', () => {
    assert.deepEqual(classifyRunArgs(['make'], 1, { ...env, repo: '../app' }), { repo: '/work/app', command: ['make'] });
    assert.deepEqual(classifyRunArgs(['.'], 0, { ...env, repo: '~' }), { repo: '/home/u', command: ['.'] });
    assert.deepEqual(classifyRunArgs([], 0, { ...env, repo: './nope' }), { error: '--repo ./nope is not a directory' });
  });

  test('the operands after -- are counted from the raw words', () => {
    assert.equal(countAfterDashDash(['node', 'banger', 'vm', 'run', '.', '--', 'make', 'test'], 3), 2);
    assert.equal(countAfterDashDash(['node', 'banger', 'vm', 'run', '.', 'make'], 2), 0);
    assert.equal(countAfterDashDash(['node', 'banger', 'vm', 'run', '--', '.'], 1), 1);
    assert.equal(countAfterDashDash(['node', 'banger', 'vm', 'run', '--rm', '--'], 0), 0);
    assert.equal(expandHome('~/x', '/h'), '/h/x');
    assert.equal(expandHome('a~/x', '/h'), 'a~/x');
  });
});

describe('process option parsers', () => {
  test('--env takes KEY=VALUE and accumulates', () => {
    assert.deepEqual(envArg('A=1', envArg('B=x=y')), ['B=x=y', 'A=1']);
    assert.deepEqual(envArg('EMPTY='), ['EMPTY=']);
    for (const bad of ['A', '=x', '1A=2', 'A-B=1', 'A B=1']) assert.throws(() => envArg(bad), /KEY=VALUE/, bad);
  });

  test('--timeout, --signal and --name', () => {
    assert.equal(timeoutArg('90s'), 90_000);
    assert.equal(timeoutArg('1h30m'), 5_400_000);
    for (const bad of ['0', 'soon', '-5s', '']) assert.throws(() => timeoutArg(bad), /duration/, bad);
    assert.equal(signalArg('KILL'), 9);
    assert.equal(signalArg('SIGINT'), 2);
    assert.throws(() => signalArg('NOPE'), /--signal/);
    assert.equal(procNameArg('web.server_1'), 'web.server_1');
    for (const bad of ['-x', '../x', 'a/b', '', 'x'.repeat(65), 'a b']) assert.throws(() => procNameArg(bad), /--name/, bad);
  });
});

describe('workspace drift', () => {
  const ws = { hostPath: '/repo', guestPath: '/root/repo', baseCommit: 'a'.repeat(40) };

  test('warns when the host HEAD moved, says nothing when it did not or cannot be read', async () => {
    assert.match(
      (await driftWarning(ws, 'dev', async () => 'b'.repeat(40))) ?? '',
      /\/repo is at bbbbbbbbbbbb but dev's workspace was prepared from aaaaaaaaaaaa/,
    );
    assert.equal(await driftWarning(ws, 'dev', async () => 'a'.repeat(40)), undefined);
    assert.equal(await driftWarning(ws, 'dev', async () => undefined), undefined);
    assert.equal(workspaceOf({ workspace: null }), undefined);
    assert.equal(workspaceOf({}), undefined);
    assert.deepEqual(workspaceOf({ workspace: ws }), ws);
  });

  test('gitHead reads a real repository and is silent for a missing path or a relative one', async (t) => {
    if (missing(t, spawnSync('git', ['--version']).status === 0, 'git is not installed')) return;
    const dir = await mkdtemp('/tmp/bg-drift-');
    try {
      const git = (...args: string[]) => spawnSync('git', ['-C', dir, '-c', 'user.name=t', '-c', 'user.email=t@e', ...args], { encoding: 'utf8' });
      git('init', '-q');
      assert.equal(await gitHead(dir), undefined, 'no commit yet: no HEAD');
      await writeFile(join(dir, 'f'), 'x');
      git('add', 'f');
      git('commit', '-qm', 'one');
      const head = git('rev-parse', 'HEAD').stdout.trim();
      assert.equal(await gitHead(dir), head);
      assert.equal(await driftWarning({ ...ws, hostPath: dir, baseCommit: head }, 'dev'), undefined);
      await writeFile(join(dir, 'f'), 'y');
      git('commit', '-qam', 'two');
      assert.match((await driftWarning({ ...ws, hostPath: dir, baseCommit: head }, 'dev')) ?? '', /was prepared from/);
      assert.equal(await gitHead(join(dir, 'missing')), undefined);
      assert.equal(await gitHead('relative/path'), undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

test("vm run's shell in the workspace: ssh's remote command cds into the guest path as one word, whatever it holds", async () => {
  const dir = await mkdtemp('/tmp/bg-sshcwd-');
  try {
    const canary = join(dir, 'canary');
    // A path's name cannot hold "/": the canary is made relative to the shell's start directory.
    const guestPath = join(dir, `it's $(touch canary) "x" \\`);
    await mkdir(guestPath);
    // The login shell the remote command execs: a FAKE that prints where it was started.
    const shell = join(dir, 'fake-shell');
    await writeFile(shell, '#!/bin/sh\npwd\n');
    await chmod(shell, 0o755);
    const argv = sshArgv({ config: '/dev/null', attempts: 1, tty: true, host: 'dev.vm', command: [], cwd: guestPath });
    assert.deepEqual(argv.slice(-3, -1), ['--', 'dev.vm'], 'options, --, host, then the remote command');
    const remote = argv.at(-1) as string;
    // sshd hands the remote command to the user's shell as `sh -c`.
    const r = spawnSync('/bin/sh', ['-c', remote], { cwd: dir, env: { SHELL: shell, PATH: '/usr/bin:/bin' }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), guestPath);
    assert.equal(existsSync(canary), false, 'nothing in the path ran');
    // A command wins over the workspace shell (it is the command's own words).
    assert.deepEqual(sshArgv({ config: 'c', attempts: 1, tty: false, host: 'h', command: ['ls'], cwd: '/x' }).at(-1), 'ls');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
