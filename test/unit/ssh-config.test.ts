import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { bangerSshConfig, hasInclude, installInclude, knownHostsLines, shellQuote, uninstallInclude } from '../../src/host/ssh-config.js';

test('ssh_config: one block per VM with its address, strict host-key checking, banger known_hosts', () => {
  const text = bangerSshConfig({ keyPath: '/k/id', knownHostsPath: '/k/known', hosts: [{ name: 'dev', ip: '172.30.0.2' }] });
  assert.match(text, /^Host dev\.vm\n {2}HostName 172\.30\.0\.2\n {2}HostKeyAlias dev\.vm\n/m);
  assert.match(text, /StrictHostKeyChecking yes/);
  assert.doesNotMatch(text, /StrictHostKeyChecking no|UserKnownHostsFile \/dev\/null/);
  assert.match(text, /UserKnownHostsFile "\/k\/known"/);
  assert.match(text, /^Host \*\.vm$/m);
});

test('known_hosts lines are keyed by the alias', () => {
  assert.deepEqual(knownHostsLines([{ name: 'dev', hostKey: 'ssh-ed25519 AAAAC3Nz banger-dev' }]), ['dev.vm ssh-ed25519 AAAAC3Nz\n']);
});

test('Include: added at the top once, removed exactly', () => {
  const user = 'Host github.com\n  User git\n';
  const once = installInclude(user, '/s/ssh/config');
  assert.ok(once.startsWith('# >>> banger >>>\nInclude "/s/ssh/config"\n# <<< banger <<<\n'));
  assert.equal(installInclude(once, '/s/ssh/config'), once);
  assert.ok(hasInclude(once, '/s/ssh/config'));
  assert.equal(uninstallInclude(once), user);
  assert.equal(uninstallInclude(user), user);
  assert.equal(uninstallInclude(installInclude('', '/p')), '');
});

test('shellQuote round-trips tricky argv through a real shell', () => {
  const argv = ['a b', "it's", '$HOME', '', 'line\nbreak', '*', '"q"', '\\', 'plain-arg'];
  const out = execFileSync('sh', ['-c', `printf '%s\\0' ${shellQuote(argv)}`]).toString();
  assert.deepEqual(out.split('\0').slice(0, -1), argv);
});
