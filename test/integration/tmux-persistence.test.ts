import assert from 'node:assert/strict';
import { cp, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { which } from '../../src/host/which.js';
import { isAlive, pidsMentioning, type Result, ROOT, runProcess } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';

/**
 * The agents image's tmux persistence (images/agents/overlay, docs/tmux.md): the real save and
 * restore scripts and /etc/tmux.conf against a private tmux server (its own socket, config, state
 * file and run directory: never the user's server), and the systemd units through
 * `systemd-analyze verify`. The real-VM proof (sessions survive `vm restart`) is an e2e test.
 */

const OVERLAY = join(ROOT, 'images', 'agents', 'overlay');
const LIB = join(OVERLAY, 'usr', 'local', 'lib', 'banger');
const CONF = join(OVERLAY, 'etc', 'tmux.conf');
const UNITS = join(OVERLAY, 'etc', 'systemd', 'system');

const tmux = await which('tmux');
const tmuxSkip = requires(tmux, 'requires tmux (the agents image ships it; the scripts drive it)');

const HEADER = 'banger-tmux-sessions\t1';

/** A private tmux world: socket, config, state file, run directory and HOME under one temp dir. */
class TmuxBox {
  private constructor(
    readonly dir: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  static async create(): Promise<TmuxBox> {
    const dir = await mkdtemp('/tmp/banger-tmux-');
    const home = join(dir, 'home');
    await mkdir(home);
    // The overlay's config, with the hooks pointed at the scripts in the repository.
    await writeFile(join(dir, 'tmux.conf'), `source-file ${CONF}\nset -g @banger-tmux-save ${join(LIB, 'tmux-save')}\n`);
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: home,
      SHELL: '/bin/sh',
      // No LANG or LC_*: like a systemd service's (the scripts must not depend on a UTF-8 locale).
      BANGER_TMUX_SOCKET: join(dir, 'sock'),
      BANGER_TMUX_CONF: join(dir, 'tmux.conf'),
      BANGER_TMUX_STATE: join(dir, 'state', 'tmux-sessions'),
      BANGER_TMUX_RUNDIR: join(dir, 'run'),
    };
    const box = new TmuxBox(dir, env);
    boxes.push(box);
    return box;
  }

  get home(): string {
    return this.env.HOME as string;
  }
  get state(): string {
    return this.env.BANGER_TMUX_STATE as string;
  }
  get restoredMark(): string {
    return join(this.env.BANGER_TMUX_RUNDIR as string, 'tmux-restored');
  }

  tmux(...args: string[]): Promise<Result> {
    return runProcess(
      tmux as string,
      // -u: UTF-8 output without a UTF-8 locale in env.
      ['-u', '-S', this.env.BANGER_TMUX_SOCKET as string, '-f', this.env.BANGER_TMUX_CONF as string, ...args],
      { env: this.env },
      30_000,
    );
  }

  async ok(...args: string[]): Promise<string> {
    const r = await this.tmux(...args);
    assert.equal(r.code, 0, `tmux ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }

  script(name: 'tmux-save' | 'tmux-restore', ...args: string[]): Promise<Result> {
    return runProcess(join(LIB, name), args, { env: this.env }, 60_000);
  }

  /** Every window: session, index, name (automatic ones as "*"), directory, active, @banger-command. */
  async windows(): Promise<string[]> {
    const r = await this.tmux(
      'list-windows',
      '-a',
      '-F',
      '#{session_name}|#{window_index}|#{?automatic-rename,*,#{window_name}}|#{pane_current_path}|#{window_active}|#{@banger-command}',
    );
    return r.code === 0 ? r.stdout.split('\n').filter((l) => l !== '') : [];
  }

  /** kill-server, then wait for the server to be gone: it exits after answering. */
  async killServer(): Promise<void> {
    await this.tmux('kill-server');
    const socket = this.env.BANGER_TMUX_SOCKET as string;
    await until('the tmux server to exit', async () => (await pidsMentioning(socket)).every((pid) => !isAlive(pid)));
  }

  /** Session names, one a line, sorted by tmux ('' for none, or no server). */
  async sessions(): Promise<string> {
    const r = await this.tmux('list-sessions', '-F', '#{session_name}');
    return r.code === 0 ? r.stdout.trim() : '';
  }

  async serverRunning(): Promise<boolean> {
    return (await this.tmux('list-sessions', '-F', '.')).code === 0;
  }

  async stateText(): Promise<string | undefined> {
    return readFile(this.state, 'utf8').catch(() => undefined);
  }

  async destroy(): Promise<void> {
    // Saves stop at once without the restore's mark; one already past it may still write a file
    // while the tree goes: rm retries on ENOTEMPTY.
    await rm(this.restoredMark, { force: true });
    await this.killServer();
    await rm(this.dir, { recursive: true, force: true, maxRetries: 20, retryDelay: 50 });
  }
}

const boxes: TmuxBox[] = [];
after(async () => {
  await Promise.all(boxes.map((b) => b.destroy()));
});

/** Polls `f` until it returns a value (tmux runs hooks and starts shells in the background). */
async function until<T>(what: string, f: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The records of a state file, without header, comments and end line. */
function records(text: string): string[] {
  return text.split('\n').filter((l) => l.startsWith('w\t'));
}

/** A restore with nothing saved: this boot's restore is done, so saves write from now on. */
async function boot(box: TmuxBox): Promise<Result> {
  await rm(box.restoredMark, { force: true });
  const r = await box.script('tmux-restore');
  assert.equal(r.code, 0, r.stderr);
  return r;
}

test('tmux.conf parses and sets what docs/tmux.md says', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  // A config error makes source-file fail and print file:line.
  const r = await runProcess(
    tmux as string,
    ['-S', box.env.BANGER_TMUX_SOCKET as string, '-f', '/dev/null', 'start-server', ';', 'set', '-s', 'exit-empty', 'off', ';', 'source-file', CONF],
    { env: box.env },
    30_000,
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const opt = async (...args: string[]) => (await box.ok('show-options', '-v', ...args)).trim();
  assert.equal(await opt('-g', 'mouse'), 'on');
  assert.equal(await opt('-g', 'history-limit'), '50000');
  assert.equal(await opt('-g', 'default-terminal'), 'tmux-256color');
  assert.equal(await opt('-g', 'renumber-windows'), 'on');
  assert.equal(await opt('-g', 'focus-events'), 'on');
  assert.equal(await opt('-s', 'escape-time'), '10');
  assert.equal(await opt('-s', 'set-clipboard'), 'on');
  assert.equal(await opt('-s', 'exit-empty'), 'off');
  assert.equal(await opt('-gw', 'remain-on-exit'), 'off');
  assert.match(await opt('-g', 'status-right'), /#H/);
  assert.match(await opt('-s', 'terminal-features'), /xterm-256color:RGB/);
  const hooks = await box.ok('show-hooks', '-g');
  for (const h of ['session-created', 'session-closed', 'session-renamed', 'client-detached', 'window-linked', 'window-unlinked']) {
    assert.match(hooks, new RegExp(`^${h}\\[90\\] run-shell -b .*--hook`, 'm'), `hook ${h}`);
  }
});

test('sessions, windows, directories and an agent command survive a restart of the server', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  // No state yet: restore still starts the server (in the guest: in banger-tmux.service's cgroup,
  // where sessions that guest processes create later outlive them), which stays up empty.
  await boot(box);
  assert.equal(await box.serverRunning(), true, 'a restore with nothing saved starts the tmux server');
  assert.equal(await box.sessions(), '');

  const d = (name: string) => join(box.dir, name);
  for (const name of ['dir one', 'x#y;', 'gone', 'agent', 'nl\nline']) await mkdir(d(name));
  const marker = d('agent-ran');
  // Hostile names on purpose: a leading '-', spaces, '#' (tmux formats), a final ';' (tmux's
  // command separator, written "\;" on tmux's command line).
  await box.ok('new-session', '-d', '-s', '-x', '-c', d('dir one'));
  await box.ok('new-window', '-d', '-t', '=-x:', '-n', 'ed##it\\;', '-c', d('x##y\\;'));
  await box.ok('new-window', '-d', '-t', '=-x:7', '-c', d('gone'));
  await box.ok('new-window', '-d', '-t', '=-x:8', '-c', d('nl\nline'));
  await box.ok('new-session', '-d', '-s', 'my session', '-c', d('agent'));
  const command = `printf restored > '${marker}'; exec sleep 600;`;
  await box.ok('set-option', '-t', '=my session:', '@banger-command', command.replace(/;$/, '\\;'));
  await box.ok('new-session', '-d', '-s', 'semi\\;', '-c', '/');
  await box.ok('new-session', '-d', '-s', 'été ü', '-n', 'fenêtre', '-c', '/');
  await box.ok('select-window', '-t', '=-x:1');

  // Shells start in the background: wait until tmux reports every directory.
  const expectedBefore = [
    `-x|0|*|${d('dir one')}|0|`,
    `-x|1|ed#it;|${d('x#y;')}|1|`,
    `-x|7|*|${d('gone')}|0|`,
    `-x|8|*|${d('nl\nline')}|0|`,
    `my session|0|*|${d('agent')}|1|${command}`,
    'semi;|0|*|/|1|',
    'été ü|0|fenêtre|/|1|',
  ];
  await until('shells in their directories', async () => {
    const w = await box.windows();
    return w.join('\n') === expectedBefore.join('\n') || undefined;
  });

  const s = await box.script('tmux-save');
  assert.equal(s.code, 0, s.stderr);
  const text = await box.stateText();
  assert.ok(text, 'state file written');
  assert.equal(text.split('\n')[0], HEADER);
  assert.deepEqual(records(text), [
    `w\t-x\t0\t0\t1\t\t${d('dir one')}\t`,
    `w\t-x\t1\t1\t0\ted#it;\t${d('x#y;')}\t`,
    `w\t-x\t7\t0\t1\t\t${d('gone')}\t`,
    // A path with a newline is not saved (restored in HOME).
    'w\t-x\t8\t0\t1\t\t\t',
    `w\tmy session\t0\t1\t1\t\t${d('agent')}\t${command}`,
    'w\tsemi;\t0\t1\t1\t\t/\t',
    'w\tété ü\t0\t1\t0\tfenêtre\t/\t',
  ]);
  assert.match(text, /\nend\t7\n$/);
  assert.equal((await stat(box.state)).mode & 0o777, 0o600);

  // The "restart": the server and everything in it are gone, and so is a directory.
  await box.killServer();
  await rm(d('gone'), { recursive: true });
  const r = await boot(box);
  assert.match(r.stderr, /4 of 4 saved sessions restored/);

  assert.deepEqual(
    await until('restored shells in their directories', async () => {
      const w = await box.windows();
      return w.length === 7 && w.every((l) => !l.includes('||')) ? w : undefined;
    }),
    [
      `-x|0|*|${d('dir one')}|0|`,
      `-x|1|ed#it;|${d('x#y;')}|1|`,
      `-x|7|*|${box.home}|0|`,
      `-x|8|*|${box.home}|0|`,
      `my session|0|*|${d('agent')}|1|${command}`,
      'semi;|0|*|/|1|',
      'été ü|0|fenêtre|/|1|',
    ],
  );
  // The agent's command ran in the first window instead of a shell.
  assert.equal(await until('the agent command', () => readFile(marker, 'utf8').catch(() => undefined)), 'restored');
  assert.match((await box.ok('list-panes', '-t', '=my session:0', '-F', '#{pane_current_command}')).trim(), /^sleep$/);

  // The restore saved once more: the state now has the restored windows (the vanished directory
  // became HOME).
  const after = records((await box.stateText()) ?? '');
  assert.equal(after.length, 7);
  assert.equal(after[2], `w\t-x\t7\t0\t1\t\t${box.home}\t`);
});

test('hooks save when sessions are created, renamed and closed, the last one included', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  await boot(box);
  await box.ok('new-session', '-d', '-s', 'hooked', '-c', box.home);
  await until('a save by the session-created hook', async () => {
    const t = await box.stateText();
    return t !== undefined && records(t).some((l) => l.startsWith('w\thooked\t0\t'));
  });
  await box.ok('rename-session', '-t', '=hooked', 'renamed');
  await until('a save by the session-renamed hook', async () => {
    const t = await box.stateText();
    return t !== undefined && records(t).some((l) => l.startsWith('w\trenamed\t')) && !t.includes('hooked');
  });
  await box.ok('new-window', '-d', '-t', '=renamed:5');
  await until('a save by the window-linked hook', async () => records((await box.stateText()) ?? '').some((l) => l.startsWith('w\trenamed\t5\t')));
  // Closing the last session is saved too: the server stays up for its hook (exit-empty off).
  await box.ok('kill-session', '-t', '=renamed');
  await until('a save by the session-closed hook', async () => {
    const t = await box.stateText();
    return t !== undefined && records(t).length === 0 && /\nend\t0\n$/.test(t);
  });
});

test('no save before this boot’s restore, nor after the save at shutdown; no server leaves the state alone', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  const saved = `${HEADER}\nw\tkept\t0\t1\t1\t\t/\t\nend\t1\n`;
  await mkdir(join(box.dir, 'state'));
  await writeFile(box.state, saved);

  // Before the restore (a session started through the agent early at boot): hooks and timer
  // skip, or the restore would read their state instead of the saved one.
  await box.ok('new-session', '-d', '-s', 'early');
  assert.equal((await box.script('tmux-save')).code, 0);
  assert.equal(await box.stateText(), saved);

  const r = await box.script('tmux-restore');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /1 of 1 saved sessions restored/);
  const names = (await box.ok('list-sessions', '-F', '#{session_name}')).trim().split('\n');
  assert.deepEqual(names.sort(), ['early', 'kept']);
  // …and the restore's own save wrote both.
  assert.deepEqual(
    records((await box.stateText()) ?? '').map((l) => l.split('\t')[1]),
    ['early', 'kept'],
  );

  // The save at shutdown (ExecStop) is the last one: sessions that close afterwards (the system
  // killing their processes) stay saved.
  const stop = await box.script('tmux-save', '--stop');
  assert.equal(stop.code, 0, stop.stderr);
  const atStop = await box.stateText();
  await box.ok('kill-session', '-t', '=kept');
  assert.equal((await box.script('tmux-save')).code, 0);
  assert.equal(await box.stateText(), atStop);

  // No server at all (it died first): the state stays as it was.
  await boot(box);
  await box.killServer();
  const before = await box.stateText();
  assert.equal((await box.script('tmux-save')).code, 0);
  assert.equal(await box.stateText(), before);
});

test('a session that exists already is left alone; the others are added', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  await mkdir(join(box.dir, 'state'));
  await writeFile(box.state, `${HEADER}\nw\tmine\t0\t1\t1\t\t/\t\nw\tmine\t1\t0\t1\t\t/\t\nw\tother\t0\t1\t1\t\t/\t\nend\t3\n`);
  await box.ok('new-session', '-d', '-s', 'mine', '-c', box.home);
  const r = await boot(box);
  assert.match(r.stderr, /session mine: exists already/);
  assert.match(r.stderr, /1 of 2 saved sessions restored/);
  assert.equal((await box.ok('list-windows', '-t', '=mine', '-F', '#{window_index}')).trim(), '0');
  assert.equal((await box.ok('list-windows', '-t', '=other', '-F', '#{window_index}')).trim(), '0');
});

test('names that look like tmux targets or options come back as themselves; a command that fails takes only its window', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  await mkdir(join(box.dir, 'state'));
  const lines = [
    HEADER,
    'w\t$1\t0\t1\t1\t\t/\t', // a session id, were it a target
    'w\t=x\t0\t1\t1\t\t/\t',
    'w\t--\t0\t1\t1\t\t/\t',
    'w\t%2\t0\t1\t1\t\t/\t',
    'w\t-c\t0\t0\t0\t-n\t/\texit 3',
    'w\t-c\t1\t1\t0\tother\t/\t',
    'end\t6',
  ];
  await writeFile(box.state, `${lines.join('\n')}\n`);
  const r = await boot(box);
  assert.match(r.stderr, /5 of 5 saved sessions restored/);
  assert.deepEqual((await box.sessions()).split('\n').sort(), ['$1', '%2', '--', '-c', '=x'].sort());
  // The command's window is gone; the session and its other window are not (renumbered from 0).
  await until('the failing command to end its window', async () => (await box.ok('list-windows', '-t', '=-c', '-F', '#{window_name}')).trim() === 'other');
  assert.equal((await box.ok('show-options', '-v', '-t', '=-c:', '@banger-command')).trim(), 'exit 3');
});

test('a damaged state file never fails the restore: bad records are skipped, the rest restored', { skip: tmuxSkip }, async (t) => {
  const box = await TmuxBox.create();
  await mkdir(join(box.dir, 'state'));
  const restore = async (content: string | Buffer) => {
    await box.killServer();
    await writeFile(box.state, content);
    const r = await boot(box);
    const sessions = await box.sessions();
    return { stderr: r.stderr, sessions: sessions === '' ? [] : sessions.split('\n').sort() };
  };

  await t.test('garbage', async () => {
    const r = await restore(Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2, 0x0a, 0xff, 0xfe]));
    assert.match(r.stderr, /line 1 is not "banger-tmux-sessions 1".*kept as .*tmux-sessions\.bad/);
    assert.deepEqual(r.sessions, []);
    assert.equal((await readFile(`${box.state}.bad`))[0], 0x7f, 'the unreadable file is kept aside');
    // …and the save after the restore replaced it with the (empty) truth.
    assert.match((await box.stateText()) ?? '', /\nend\t0\n$/);
  });
  await t.test('empty', async () => {
    const r = await restore('');
    assert.match(r.stderr, /is empty/);
    assert.deepEqual(r.sessions, []);
  });
  await t.test('cut short in the middle of a record', async () => {
    const full = `${HEADER}\nw\tfirst\t0\t1\t1\t\t/\t\nw\tsecond\t0\t1\t1\t\t/\t\nend\t2\n`;
    const r = await restore(full.slice(0, full.indexOf('second') + 3));
    assert.match(r.stderr, /no end line \(cut short\): restoring its 1 complete records/);
    assert.deepEqual(r.sessions, ['first']);
  });
  await t.test('hostile records', async () => {
    const lines = [
      HEADER,
      'w\tgood\t0\t1\t1\t\t/\t',
      'w\ta:b\t0\t1\t1\t\t/\t', // tmux's target syntax in a name
      'w\tbadindex\tx\t1\t1\t\t/\t',
      'w\tbadflag\t0\t2\t1\t\t/\t',
      'w\tshort\t0\t1\t1\t\t/',
      'w\tlong\t0\t1\t1\t\t/\t\t',
      `w\tbig\t0\t1\t1\t\t/\t${'x'.repeat(9000)}`,
      'w\tctl\x1b[31m\t0\t1\t1\t\t/\t',
      'w\t\t0\t1\t1\t\t/\t',
      'x\twhat\t0\t1\t1\t\t/\t',
      'w\tgood\t0\t1\t1\t\t/\t', // the same window twice
      'w\trel\t0\t1\t1\t\trelative/dir\t', // not absolute: restored in HOME
      'w\t-t=x\t0\t1\t1\t\t/\t', // looks like an option: still a name
      'end\t13',
    ];
    const r = await restore(`${lines.join('\n')}\n`);
    assert.deepEqual(r.sessions, ['-t=x', 'good', 'rel']);
    assert.equal((await box.ok('list-panes', '-t', '=rel:0', '-F', '#{pane_current_path}')).trim(), box.home);
    for (const why of [
      'bad session name',
      'bad window index or flag',
      'not a window record',
      'a field is too long',
      'control characters',
      'window 0 of good twice',
    ]) {
      assert.ok(r.stderr.includes(why), `stderr mentions "${why}": ${r.stderr}`);
    }
  });
  await t.test('larger than 1 MiB', async () => {
    await writeFile(box.state, `${HEADER}\n`);
    await truncate(box.state, 2 * 1024 * 1024);
    await box.killServer();
    const r = await boot(box);
    assert.match(r.stderr, /larger than 1048576 bytes/);
    assert.equal(await box.sessions(), '');
    assert.equal((await stat(`${box.state}.bad`)).size, 2 * 1024 * 1024);
  });
  await t.test('not a regular file', async () => {
    await rm(box.state, { force: true });
    await mkdir(box.state);
    const r = await boot(box);
    assert.match(r.stderr, /is not a regular file/);
    await rm(box.state, { recursive: true });
  });
  await t.test('more than 64 sessions: the first 64', async () => {
    const lines = [HEADER];
    for (let i = 0; i < 66; i++) lines.push(`w\ts${String(i).padStart(2, '0')}\t0\t1\t1\t\t/\t`);
    lines.push('end\t66');
    const r = await restore(`${lines.join('\n')}\n`);
    assert.equal(r.sessions.length, 64);
    assert.ok(!r.sessions.includes('s64') && !r.sessions.includes('s65'));
    assert.match(r.stderr, /more than 64 sessions: record skipped/);
  });
});

test('a save keeps at most 32 windows of a session', { skip: tmuxSkip }, async () => {
  const box = await TmuxBox.create();
  await boot(box);
  await box.ok('new-session', '-d', '-s', 'many', '-c', '/');
  for (let i = 1; i < 34; i++) await box.ok('new-window', '-d', '-t', `=many:${i}`, '-c', '/');
  const s = await box.script('tmux-save');
  assert.equal(s.code, 0);
  assert.equal(records((await box.stateText()) ?? '').length, 32);
  assert.match(s.stderr, /more than 32 windows/);
});

test('overlay: modes, and wants symlinks that stay inside the overlay', async () => {
  for (const f of ['tmux-save', 'tmux-restore']) assert.equal((await stat(join(LIB, f))).mode & 0o777, 0o755, f);
  for (const f of [
    join(LIB, 'tmux-lib.sh'),
    CONF,
    join(UNITS, 'banger-tmux.service'),
    join(UNITS, 'banger-tmux-save.service'),
    join(UNITS, 'banger-tmux-save.timer'),
  ]) {
    assert.equal((await stat(f)).mode & 0o777, 0o644, f);
  }
  for (const [link, target] of [
    ['multi-user.target.wants/banger-tmux.service', '../banger-tmux.service'],
    ['timers.target.wants/banger-tmux-save.timer', '../banger-tmux-save.timer'],
  ] as const) {
    assert.ok((await lstat(join(UNITS, link))).isSymbolicLink(), link);
    assert.equal(await readlink(join(UNITS, link)), target);
  }
});

const systemdAnalyze = await which('systemd-analyze');
test('systemd units pass systemd-analyze verify', {
  skip: requires(systemdAnalyze, 'requires systemd-analyze (package systemd) to check the unit files'),
}, async (t) => {
  // A root holding the overlay (the scripts must exist and be executable there) and the host's
  // own units (sysinit.target and friends, which the units' default dependencies name).
  const hostUnits = ['/usr/lib/systemd/system', '/lib/systemd/system'];
  let units: string | undefined;
  for (const u of hostUnits) if (await stat(join(u, 'sysinit.target')).catch(() => undefined)) units = u;
  if (!units) {
    t.skip('the host has no systemd unit directory with sysinit.target');
    return;
  }
  const root = await mkdtemp('/tmp/banger-tmux-units-');
  try {
    await cp(OVERLAY, root, { recursive: true, verbatimSymlinks: true });
    await mkdir(join(root, 'usr', 'lib', 'systemd'), { recursive: true });
    await cp(units, join(root, 'usr', 'lib', 'systemd', 'system'), { recursive: true, verbatimSymlinks: true });
    await symlink('usr/lib', join(root, 'lib')).catch(() => undefined);
    const files = ['banger-tmux.service', 'banger-tmux-save.service', 'banger-tmux-save.timer'].map((f) => join(root, 'etc', 'systemd', 'system', f));
    const r = await runProcess(systemdAnalyze as string, ['verify', '--man=no', `--root=${root}`, ...files], { env: process.env }, 60_000);
    assert.equal(r.code, 0, r.stderr);
    // Warnings (an unknown key, a value systemd ignores) go to stderr with exit 0.
    assert.equal(r.stderr, '');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
