import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, lstat, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import {
  bangerSshConfig,
  ensureSshKey,
  hasInclude,
  installInclude,
  knownHostsLines,
  shellQuote,
  uninstallInclude,
  writeFileAtomic,
} from '../../src/host/ssh-config.js';
import { FakeRunner } from '../helpers/fake-runner.js';
import { missing } from '../helpers/prereq.js';

test('ssh_config: one block per VM with every option, then a Host *.vm fallback; host keys always checked', () => {
  const text = bangerSshConfig({
    keyPath: '/k/id',
    knownHostsPath: '/k/known',
    hosts: [
      { name: 'dev', ip: '172.30.0.2' },
      { name: 'api', ip: '172.30.0.3', hostKey: 'ssh-ed25519 AAAA x' },
    ],
  });
  const blocks = text.split(/\n(?=Host )/).filter((b) => b.startsWith('Host '));
  assert.deepEqual(
    blocks.map((b) => b.split('\n')[0]),
    ['Host dev.vm', 'Host api.vm', 'Host *.vm'],
  );
  const dev = blocks[0]
    ?.split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  assert.deepEqual(dev, [
    'Host dev.vm',
    'HostName 172.30.0.2',
    'HostKeyAlias dev.vm',
    'User root',
    'IdentityFile "/k/id"',
    'IdentitiesOnly yes',
    'UserKnownHostsFile "/k/known"',
    'StrictHostKeyChecking yes',
    'LogLevel ERROR',
  ]);
  const wildcard = blocks[2] ?? '';
  for (const opt of ['User root', 'IdentityFile "/k/id"', 'IdentitiesOnly yes', 'UserKnownHostsFile "/k/known"', 'StrictHostKeyChecking yes']) {
    assert.ok(wildcard.includes(opt), opt);
  }
  assert.doesNotMatch(text, /StrictHostKeyChecking (no|accept-new|off)|\/dev\/null/i);
  // The fallback block alone (no VMs) is still a valid config.
  assert.match(bangerSshConfig({ keyPath: '/k/id', knownHostsPath: '/k/known', hosts: [] }), /^Host \*\.vm$/m);
});

test('ssh_config: paths are quoted and % escaped; unusable paths and names are refused', () => {
  const text = bangerSshConfig({ keyPath: '/home/a b/100%/id', knownHostsPath: '/k/known', hosts: [] });
  assert.match(text, /IdentityFile "\/home\/a b\/100%%\/id"/);
  assert.throws(() => bangerSshConfig({ keyPath: '/k/"x', knownHostsPath: '/k', hosts: [] }), BangerError);
  assert.throws(() => bangerSshConfig({ keyPath: '/k', knownHostsPath: '/k', hosts: [{ name: 'a\nHost *', ip: '1.2.3.4' }] }), BangerError);
  assert.throws(() => bangerSshConfig({ keyPath: '/k', knownHostsPath: '/k', hosts: [{ name: 'a', ip: 'ProxyCommand x' }] }), BangerError);
});

test('the generated config parses with the real ssh (when installed) and resolves a VM to its block', async (t) => {
  let hasSsh = true;
  try {
    execFileSync('ssh', ['-V'], { stdio: 'ignore' });
  } catch {
    hasSsh = false;
  }
  if (missing(t, hasSsh, 'ssh is not installed')) return;
  const dir = await mkdtemp(join(tmpdir(), 'banger-sshcfg-'));
  try {
    const config = join(dir, 'config');
    await writeFile(config, bangerSshConfig({ keyPath: '/k/id', knownHostsPath: '/k/known', hosts: [{ name: 'dev', ip: '172.30.0.2' }] }));
    const g = (host: string) => execFileSync('ssh', ['-G', '-F', config, host]).toString();
    const dev = g('dev.vm');
    assert.match(dev, /^hostname 172\.30\.0\.2$/m);
    assert.match(dev, /^hostkeyalias dev\.vm$/m);
    assert.match(dev, /^user root$/m);
    assert.match(dev, /^stricthostkeychecking (true|yes)$/m);
    assert.match(dev, /^userknownhostsfile \/k\/known$/m);
    // `%` is escaped so ssh's token expansion gives the path back unchanged.
    await writeFile(config, bangerSshConfig({ keyPath: '/k/id', knownHostsPath: '/k/100%d', hosts: [] }));
    assert.match(g('any.vm'), /^userknownhostsfile \/k\/100%d$/m);
    await writeFile(config, bangerSshConfig({ keyPath: '/k/id', knownHostsPath: '/k/known', hosts: [] }));
    const other = g('other.vm');
    assert.match(other, /^hostname other\.vm$/m);
    assert.match(other, /^identityfile \/k\/id$/m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('known_hosts lines are keyed by the alias; comments dropped; malformed keys skipped', () => {
  assert.deepEqual(
    knownHostsLines([
      { name: 'dev', hostKey: 'ssh-ed25519 AAAAC3Nz banger-dev' },
      { name: 'API', hostKey: '  ecdsa-sha2-nistp256 AAAAE2Vj=\n' },
      { name: 'bad', hostKey: 'ssh-ed25519' },
      { name: 'worse', hostKey: 'ssh-ed25519 not*base64' },
    ]),
    ['dev.vm ssh-ed25519 AAAAC3Nz\n', 'api.vm ecdsa-sha2-nistp256 AAAAE2Vj=\n'],
  );
});

test('Include: added at the very top once, replaced not duplicated, removed exactly', () => {
  const user = 'Host github.com\n  User git\n';
  const once = installInclude(user, '/s/ssh/config');
  assert.ok(once.startsWith('# >>> banger >>>\nInclude "/s/ssh/config"\n# <<< banger <<<\n\nHost github.com'));
  assert.equal(installInclude(once, '/s/ssh/config'), once, 'idempotent');
  assert.ok(hasInclude(once, '/s/ssh/config'));
  assert.ok(!hasInclude(once, '/other'));
  assert.ok(!hasInclude(user, '/s/ssh/config'));
  assert.equal(uninstallInclude(once), user);
  assert.equal(uninstallInclude(user), user);

  // Exact round trips whatever the file looks like.
  for (const text of ['', '\n', '\nHost a\n', 'Host a', 'Host a\n\n\n', '# comment\r\nHost b\r\n']) {
    const installed = installInclude(text, '/p');
    assert.ok(installed.startsWith('# >>> banger >>>\n'), JSON.stringify(text));
    assert.equal(installInclude(installed, '/p'), installed, JSON.stringify(text));
    assert.equal(uninstallInclude(installed), text, JSON.stringify(text));
  }

  // A new path replaces the old block instead of adding a second one.
  const moved = installInclude(once, '/new/config');
  assert.equal(moved.match(/# >>> banger >>>/g)?.length, 1);
  assert.ok(hasInclude(moved, '/new/config'));
  assert.equal(uninstallInclude(moved), user);

  // A block that drifted below a Host line is moved back to the top.
  const drifted = `${user}\n# >>> banger >>>\nInclude "/p"\n# <<< banger <<<\n`;
  const fixed = installInclude(drifted, '/p');
  assert.ok(fixed.startsWith('# >>> banger >>>\nInclude "/p"\n'));
  assert.equal(fixed.match(/Include/g)?.length, 1);

  // Text that merely mentions the markers mid-line is left alone.
  const mention = 'Host x # >>> banger >>>\n  User y\n';
  assert.equal(uninstallInclude(mention), mention);
});

test('shellQuote round-trips tricky argv through a real sh -c', () => {
  const argv = [
    'a b',
    "it's",
    '$HOME',
    '`id`',
    '$(id)',
    '',
    'line\nbreak',
    '*',
    '"q"',
    '\\',
    'tab\there',
    '~',
    'A=b',
    ';',
    '&&',
    '|',
    '>x',
    '!',
    '#',
    '{a,b}',
    "''",
    'plain-arg',
    'ü',
  ];
  const out = execFileSync('sh', ['-c', `printf '%s\\n' ${shellQuote(argv)}`]).toString();
  assert.deepEqual(
    out.split('\n').slice(0, -1),
    argv.flatMap((a) => a.split('\n')),
  );
  // NUL-separated, so the newline argument is checked as one argument too.
  const nul = execFileSync('sh', ['-c', `printf '%s\\0' ${shellQuote(argv)}`]).toString();
  assert.deepEqual(nul.split('\0').slice(0, -1), argv);
});

test('shellQuote: plain words stay readable, empty strings survive, exit status passes through', () => {
  assert.equal(shellQuote(['make', 'test', '-j4', '--dir=/x']), "make test -j4 '--dir=/x'");
  assert.equal(shellQuote(['']), "''");
  assert.equal(shellQuote([]), '');
  // What `banger vm ssh dev -- sh -c 'exit 42'` sends as the remote command.
  let status = 0;
  try {
    execFileSync('sh', ['-c', shellQuote(['sh', '-c', 'exit 42'])]);
  } catch (e) {
    status = (e as { status: number }).status;
  }
  assert.equal(status, 42);
  // A first word that looks like an assignment is still the command name.
  assert.throws(() => execFileSync('sh', ['-c', shellQuote(['A=b', 'true'])], { stdio: 'ignore' }));
});

test('writeFileAtomic: creates the directory 0700, sets the mode, replaces whole files, leaves no temp files', async () => {
  const root = await mkdtemp(join(tmpdir(), 'banger-atomic-'));
  try {
    const path = join(root, 'sub', 'config');
    await writeFileAtomic(path, 'one\n', 0o600);
    assert.equal((await stat(join(root, 'sub'))).mode & 0o777, 0o700);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    await writeFileAtomic(path, 'two\n', 0o644);
    assert.equal(await readFile(path, 'utf8'), 'two\n');
    assert.equal((await stat(path)).mode & 0o777, 0o644);
    await Promise.all(Array.from({ length: 10 }, (_, i) => writeFileAtomic(path, `v${i}\n`, 0o600)));
    assert.match(await readFile(path, 'utf8'), /^v\d\n$/);
    assert.deepEqual(await readdir(join(root, 'sub')), ['config']);

    // A symlinked file (dotfile managers) keeps its link; the target gets the new text.
    await symlink(path, join(root, 'link'));
    await writeFileAtomic(join(root, 'link'), 'via link\n', 0o600);
    assert.ok((await lstat(join(root, 'link'))).isSymbolicLink());
    assert.equal(await readFile(path, 'utf8'), 'via link\n');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

/** Fakes ssh-keygen: writes its two files, or derives a public key (-y); records the calls. */
class KeygenRunner extends FakeRunner {
  constructor() {
    super(async (_command, args) => {
      const f = args[args.indexOf('-f') + 1] as string;
      if (args.includes('-y')) return { stdout: 'ssh-ed25519 AAAAderived banger\n' };
      await writeFile(f, 'PRIVATE\n', { mode: 0o600 });
      await writeFile(`${f}.pub`, 'ssh-ed25519 AAAAfake banger\n', { mode: 0o644 });
      return {};
    });
  }
}

test('ensureSshKey: generates once (0600 + .pub), reuses, derives a missing .pub, refuses loose modes', async () => {
  const root = await mkdtemp(join(tmpdir(), 'banger-key-'));
  try {
    const runner = new KeygenRunner();
    const key = join(root, 'ssh', 'id_ed25519');
    assert.equal(await ensureSshKey(runner, key), 'ssh-ed25519 AAAAfake banger');
    assert.deepEqual(runner.calls[0]?.slice(0, 5), ['ssh-keygen', '-q', '-t', 'ed25519', '-N']);
    assert.equal((await stat(key)).mode & 0o777, 0o600);
    assert.equal((await stat(join(root, 'ssh'))).mode & 0o777, 0o700);

    assert.equal(await ensureSshKey(runner, key), 'ssh-ed25519 AAAAfake banger');
    assert.equal(runner.calls.length, 1, 'an existing key is reused');

    await rm(`${key}.pub`);
    assert.equal(await ensureSshKey(runner, key), 'ssh-ed25519 AAAAderived banger');
    assert.equal(await readFile(`${key}.pub`, 'utf8'), 'ssh-ed25519 AAAAderived banger\n');

    for (const mode of [0o644, 0o640, 0o700]) {
      await chmod(key, mode);
      await assert.rejects(ensureSshKey(runner, key), (e: unknown) => {
        assert.ok(e instanceof BangerError);
        assert.equal(e.code, 'precondition_failed');
        assert.match(e.message, new RegExp(mode.toString(8)));
        assert.equal(e.fix, `chmod 600 ${key}`);
        return true;
      });
    }
    await chmod(key, 0o400);
    assert.equal(await ensureSshKey(runner, key), 'ssh-ed25519 AAAAderived banger', 'stricter than 0600 is fine');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('ensureSshKey with the real ssh-keygen (when installed)', async (t) => {
  let hasKeygen = true;
  try {
    execFileSync('ssh-keygen', ['-?'], { stdio: 'ignore' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') hasKeygen = false;
  }
  if (missing(t, hasKeygen, 'ssh-keygen is not installed')) return;
  const { ProcessRunner } = await import('../../src/host/runner.js');
  const root = await mkdtemp(join(tmpdir(), 'banger-key-'));
  try {
    const key = join(root, 'id_ed25519');
    const pub = await ensureSshKey(new ProcessRunner(), key);
    assert.match(pub, /^ssh-ed25519 AAAA[A-Za-z0-9+/=]+ banger$/);
    assert.equal((await stat(key)).mode & 0o777, 0o600);
    assert.equal(await ensureSshKey(new ProcessRunner(), key), pub);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
