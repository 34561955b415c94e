import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { buildInfoFile, isAlive, ROOT, TestHome, waitFor } from './harness.js';

interface Status {
  pid: number;
  version: string;
  commit: string;
  buildTime: string;
  socketPath: string;
  logPath: string;
  stateDir: string;
  uptimeSeconds: number;
}

// debug level: every request adds a log line, so `daemon logs -n` has more lines than it shows.
let home: TestHome;

before(async () => {
  home = await TestHome.create('log_level = "debug"\n');
});

after(async () => {
  await home?.destroy();
});

/** The daemon's pid as it reports it, with a cross-check against the process table. */
async function currentPid(): Promise<number> {
  const s = await home.json<Status>(['daemon', 'status']);
  assert.deepEqual(home.daemonPids(), [s.pid], 'exactly one daemon runs for this home');
  return s.pid;
}

test('`daemon status` auto-starts the daemon: pid alive, socket 0600, runtime dir 0700', async () => {
  assert.deepEqual(home.daemonPids(), []);
  assert.equal(existsSync(home.socketPath), false);
  const out = await home.ok(['daemon', 'status']);
  assert.match(out, /^state:\s+running$/m);
  const pid = Number(/^pid:\s+(\d+)$/m.exec(out)?.[1]);
  assert.ok(pid > 0, out);
  assert.ok(isAlive(pid));
  assert.deepEqual(home.daemonPids(), [pid]);

  const sock = statSync(home.socketPath);
  assert.ok(sock.isSocket());
  assert.equal(sock.mode & 0o777, 0o600);
  assert.equal(statSync(home.runDir).mode & 0o777, 0o700);
  assert.equal(statSync(join(home.dir, 'state')).mode & 0o777, 0o700);
  assert.equal(readFileSync(join(home.runDir, 'bangerd.pid'), 'utf8').trim(), String(pid));
});

test('`daemon status --json` has pid, version, commit, paths and uptime', async () => {
  const s = await home.json<Status>(['daemon', 'status']);
  const build = buildInfoFile();
  assert.deepEqual(home.daemonPids(), [s.pid]);
  assert.equal(s.version, build.version);
  assert.equal(s.commit, build.commit);
  assert.equal(s.buildTime, build.buildTime);
  assert.equal(s.socketPath, home.socketPath);
  assert.equal(s.logPath, join(home.dir, 'state', 'logs', 'bangerd.log'));
  assert.equal(s.stateDir, join(home.dir, 'state'));
  assert.equal(typeof s.uptimeSeconds, 'number');
  assert.ok(s.uptimeSeconds >= 0 && s.uptimeSeconds < 120, String(s.uptimeSeconds));
});

test('`version` is multi-line with commit and build time; --version works on both executables', async () => {
  const build = buildInfoFile();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  assert.equal(build.version, pkg.version);

  const v = await home.ok(['version']);
  const lines = v.trim().split('\n');
  assert.ok(lines.length >= 3, v);
  assert.equal(lines[0], `banger ${pkg.version}`);
  assert.match(v, new RegExp(`^commit:\\s+${build.commit}$`, 'm'));
  assert.match(v, new RegExp(`^built:\\s+${build.buildTime.replace(/\./g, '\\.')}$`, 'm'));

  const cliFlag = await home.banger(['--version']);
  assert.equal(cliFlag.code, 0);
  assert.equal(cliFlag.stdout, v, '`banger --version` prints the same as `banger version`');

  const d = await home.bangerd(['--version']);
  assert.equal(d.code, 0, d.stderr);
  assert.match(d.stdout, new RegExp(`^bangerd ${pkg.version.replace(/\./g, '\\.')}\\n`));
  assert.match(d.stdout, new RegExp(`^commit:\\s+${build.commit}$`, 'm'));

  const j = await home.json<{ version: string; commit: string; buildTime: string }>(['version']);
  assert.deepEqual({ version: j.version, commit: j.commit, buildTime: j.buildTime }, build);
});

test('`daemon ops --json` on a fresh daemon is an empty list', async () => {
  assert.deepEqual(await home.json(['daemon', 'ops']), { operations: [] });
  const text = await home.ok(['daemon', 'ops']);
  assert.match(text, /^ID\s+KIND\s+TARGET\s+STATE\s+STAGE\s+STARTED$/m);
});

test('`daemon logs -n 5` shows the last 5 formatted lines; --raw shows the JSON', async () => {
  const out = await home.ok(['daemon', 'logs', '-n', '5']);
  const lines = out.trimEnd().split('\n');
  assert.equal(lines.length, 5, out);
  for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT[\d:.]+Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) /, l);
  const all = await home.ok(['daemon', 'logs', '-n', '1000']);
  assert.match(all, /INFO {2}bangerd listening/);
  // `daemon logs` reads the file without a request, so nothing was logged in between.
  assert.deepEqual(all.trimEnd().split('\n').slice(-5), lines, 'the last lines, in order');

  const rawOut = await home.ok(['daemon', 'logs', '-n', '2', '--raw']);
  const rawLines = rawOut.trimEnd().split('\n');
  assert.equal(rawLines.length, 2);
  for (const l of rawLines) assert.equal(typeof (JSON.parse(l) as { msg: unknown }).msg, 'string');

  const bad = await home.banger(['daemon', 'logs', '-n', 'lots']);
  assert.equal(bad.code, 2, 'a bad --lines value is a usage error');
  assert.match(bad.stderr, /--lines/);
});

test('a second bangerd for the same home exits non-zero ("another bangerd") and the first keeps running', async () => {
  const pid = await currentPid();
  const second = await home.bangerd([]);
  assert.notEqual(second.code, 0);
  assert.match(second.stderr, /another bangerd already owns/);
  assert.match(second.stderr, /fix: /);
  assert.equal(await currentPid(), pid);
  assert.ok(statSync(home.socketPath).isSocket(), 'the loser did not remove the winner’s socket');
});

test('`daemon stop` stops it; `daemon status` then starts a new one', async () => {
  const pid = await currentPid();
  const stop = await home.ok(['daemon', 'stop']);
  assert.match(stop, /bangerd stopped/);
  assert.equal(isAlive(pid), false);
  assert.equal(existsSync(home.socketPath), false, 'a clean stop removes the socket');
  assert.equal(existsSync(join(home.runDir, 'bangerd.pid')), false);
  assert.match(await home.ok(['daemon', 'stop']), /not running/, 'stopping a stopped daemon is not an error');

  const next = await currentPid();
  assert.notEqual(next, pid);
});

test('`daemon restart` yields a new pid and the old process is gone', async () => {
  const pid = await currentPid();
  const s = await home.json<Status>(['daemon', 'restart']);
  assert.notEqual(s.pid, pid);
  assert.equal(isAlive(pid), false);
  assert.deepEqual(home.daemonPids(), [s.pid]);
});

test('a stale socket left by a SIGKILLed daemon is replaced by the next auto-start', async () => {
  const pid = await currentPid();
  process.kill(pid, 'SIGKILL');
  await waitFor(`pid ${pid} to die`, () => !isAlive(pid));
  assert.ok(statSync(home.socketPath).isSocket(), 'SIGKILL leaves the socket file behind');

  const s = await home.json<Status>(['daemon', 'status']);
  assert.notEqual(s.pid, pid);
  assert.deepEqual(home.daemonPids(), [s.pid]);
  assert.equal(statSync(home.socketPath).mode & 0o777, 0o600);
});

test('work left by a SIGKILLed daemon (staging dirs, partial downloads) is removed by the next one; finished blobs stay', async () => {
  const pid = await currentPid();
  process.kill(pid, 'SIGKILL');
  await waitFor(`pid ${pid} to die`, () => !isAlive(pid));
  const staging = join(home.dir, 'state', 'staging', 'image-0123');
  const blobs = join(home.dir, 'cache', 'blobs', 'sha256');
  const downloads = join(home.dir, 'cache', 'downloads');
  mkdirSync(join(staging, 'tree'), { recursive: true });
  mkdirSync(blobs, { recursive: true });
  mkdirSync(downloads, { recursive: true });
  const hex = 'a'.repeat(64);
  writeFileSync(join(blobs, hex), 'a finished blob');
  writeFileSync(join(blobs, `${hex}.partial-1234abcd`), 'half');
  writeFileSync(join(downloads, `${hex}.1234abcd.partial`), 'half');
  await home.json<Status>(['daemon', 'status']);
  assert.equal(existsSync(staging), false);
  assert.deepEqual(readdirSync(blobs), [hex]);
  assert.deepEqual(readdirSync(downloads), []);
});

test('unknown commands and flags exit 2 with usage help and start nothing', async () => {
  const pidBefore = home.daemonPids();
  const cases: Array<[string[], RegExp]> = [
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['daemon', 'frobnicate'], /unknown command 'frobnicate'/],
    [['daemon', 'status', '--frob'], /unknown option '--frob'/],
    [['--frob'], /unknown option '--frob'/],
  ];
  for (const [args, re] of cases) {
    const r = await home.banger(args);
    assert.equal(r.code, 2, `banger ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
    assert.match(r.stderr, /run with --help for usage/);
    assert.equal(r.stdout, '');
  }
  const none = await home.banger([]);
  assert.equal(none.code, 2, 'no command at all is a usage error');
  assert.match(none.stdout + none.stderr, /Usage: banger/);
  assert.deepEqual(home.daemonPids(), pidBefore);
});
