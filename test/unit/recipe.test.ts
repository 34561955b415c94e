import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { mmdebstrapArgs, tuneHook } from '../../src/images/recipe.js';

const recipe = { kind: 'recipe' as const, builder: 'mmdebstrap' as const, suite: 'bookworm', variant: 'minbase' as const, packages: ['openssh-server', 'git'] };

test('mmdebstrap writes a tar to stdout from the mirror, with the packages and the tuning hook', () => {
  const args = mmdebstrapArgs(recipe, 'http://deb.debian.org/debian');
  assert.deepEqual(args.slice(-4), ['--format=tar', 'bookworm', '-', 'http://deb.debian.org/debian']);
  assert.ok(args.includes('--variant=minbase'));
  assert.ok(args.includes('--include=openssh-server,git'));
  assert.ok(args.some((a) => a.startsWith('--customize-hook=')));
  assert.equal(mmdebstrapArgs({ ...recipe, mirror: 'http://m.example/debian' }, 'http://deb.debian.org/debian').at(-1), 'http://m.example/debian');
});

test('the tuning hook is valid sh and touches only paths under its chroot argument', () => {
  execFileSync('sh', ['-n', '-c', tuneHook()]);
  // Every path the hook writes or removes is spelled "$r/...", the chroot mmdebstrap passes as $1.
  const absolute = tuneHook()
    .split('\n')
    .flatMap((line) => [...line.matchAll(/(?:^|\s)(\/[a-z][^\s"']*)/g)].map((m) => m[1]))
    .filter((p) => p !== '/dev/null');
  assert.deepEqual(absolute, []);
});

test('the tuning hook leaves apt state and /tmp to mmdebstrap (regression: removing them made mmdebstrap clean the host’s apt lists)', () => {
  assert.doesNotMatch(tuneHook(), /var\/lib\/apt|var\/cache\/apt|"\$r"\/tmp|\$r\/tmp/);
});
