import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { BANGER } from '../helpers/banger.js';
import { missing } from '../helpers/prereq.js';

let dir: string;
const scripts: Record<string, string> = {};
let topLevel: string[] = [];

function banger(args: string[]): { status: number | null; stdout: string; stderr: string } {
  // BANGER_HOME points at an empty dir: completion must never need (or start) a daemon.
  const r = spawnSync(process.execPath, [BANGER, ...args], { env: { ...process.env, BANGER_HOME: join(dir, 'home') }, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function hasShell(shell: string): boolean {
  return spawnSync(shell, ['-c', 'exit 0'], { stdio: 'ignore' }).status === 0;
}

before(async () => {
  dir = await mkdtemp('/tmp/bg-comp-');
  for (const shell of ['bash', 'zsh', 'fish']) {
    const r = banger(['completion', shell]);
    assert.equal(r.status, 0, r.stderr);
    scripts[shell] = r.stdout;
    await writeFile(join(dir, `banger.${shell}`), r.stdout);
  }
  // The ground truth is the CLI's own help, so a command added later must also reach completions.
  const help = banger(['--help']);
  assert.equal(help.status, 0);
  const section = help.stdout.split(/^Commands:$/m)[1] ?? '';
  topLevel = [...section.matchAll(/^ {2}([a-z][a-z0-9-]*)/gm)].map((m) => m[1] as string).filter((c) => c !== 'help');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the help output lists the expected top-level commands', () => {
  for (const c of ['vm', 'image', 'daemon', 'version', 'doctor', 'completion'])
    assert.ok(topLevel.includes(c), `${c} missing from banger --help: ${topLevel.join(' ')}`);
});

for (const shell of ['bash', 'zsh', 'fish']) {
  test(`${shell} script names every top-level command, the daemon subcommands and --json`, () => {
    const s = scripts[shell] as string;
    const words = new Set(s.split(/[\s'"()=]+/));
    for (const c of topLevel) assert.ok(words.has(c), `${shell}: top-level command ${c} missing`);
    for (const c of ['start', 'stop', 'restart', 'status', 'logs', 'ops']) assert.ok(words.has(c), `${shell}: daemon ${c} missing`);
    if (shell === 'fish') {
      assert.match(s, /-l 'json'/);
      assert.match(s, /-l 'help'/);
    } else {
      assert.ok(words.has('--json'), `${shell}: --json missing`);
      assert.ok(words.has('--help'), `${shell}: --help missing`);
    }
  });
}

test('an unsupported shell is a usage error (exit 2)', () => {
  const r = banger(['completion', 'tcsh']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unsupported shell "tcsh"/);
  assert.equal(r.stdout, '');
});

test('the bash script passes bash -n', () => {
  const r = spawnSync('bash', ['-n', join(dir, 'banger.bash')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

/** Runs the bash completion function for a command line whose last word is being completed. */
function complete(words: string[]): string[] {
  const script = `
source ${JSON.stringify(join(dir, 'banger.bash'))}
COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')})
COMP_CWORD=${words.length - 1}
_banger
printf '%s\\n' "\${COMPREPLY[@]}"
`;
  const r = spawnSync('bash', ['--norc', '--noprofile', '-c', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean).sort();
}

test('the bash completion function completes commands, subcommands and flags by position', () => {
  const first = complete(['banger', '']);
  for (const c of topLevel) assert.ok(first.includes(c), `banger <TAB> lacks ${c}`);
  assert.deepEqual(complete(['banger', 'da']), ['daemon']);
  assert.deepEqual(
    complete(['banger', 'daemon', '']).filter((w) => !w.startsWith('-')),
    ['logs', 'ops', 'restart', 'start', 'status', 'stop'],
  );
  assert.deepEqual(complete(['banger', 'daemon', 'status', '--']), ['--help', '--json']);
  // Flags already typed do not change the command path.
  assert.deepEqual(complete(['banger', 'daemon', 'logs', '-n', '5', '--r']), ['--raw']);
});

test('the zsh script passes zsh -n', (t) => {
  if (missing(t, hasShell('zsh'), 'zsh is not installed')) return;
  const r = spawnSync('zsh', ['-n', join(dir, 'banger.zsh')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

test('the fish script passes fish -n', (t) => {
  if (missing(t, hasShell('fish'), 'fish is not installed')) return;
  const r = spawnSync('fish', ['-n', join(dir, 'banger.fish')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

test('the fish completions follow the command path', (t) => {
  if (missing(t, hasShell('fish'), 'fish is not installed')) return;
  const suggest = (line: string) => {
    const r = spawnSync('fish', ['--no-config', '-c', `source ${JSON.stringify(join(dir, 'banger.fish'))}; complete -C ${JSON.stringify(line)}`], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout
      .split('\n')
      .map((l) => l.split('\t')[0] as string)
      .filter(Boolean);
  };
  const top = suggest('banger ');
  for (const c of topLevel) assert.ok(top.includes(c), `banger <TAB> lacks ${c}`);
  assert.ok(suggest('banger daemon ').includes('restart'));
  // Once a leaf command is typed, its parent's subcommands are no longer offered.
  const afterCreate = suggest('banger vm create ');
  assert.ok(!afterCreate.includes('delete'), `banger vm create <TAB> offers ${afterCreate.join(' ')}`);
  assert.ok(suggest('banger vm create --').includes('--image'));
});
