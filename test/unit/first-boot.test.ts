import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { FIRST_BOOT_SCRIPT, firstBootFiles, sshdInstallScript } from '../../src/guest/first-boot.js';
import { payloadEntries } from '../../src/guest/initramfs.js';

test('the first-boot script is valid POSIX sh (dash and busybox both parse it)', () => {
  for (const shell of ['sh', 'dash']) execFileSync(shell, ['-n', '-c', sshdInstallScript()]);
  execFileSync('busybox', ['sh', '-n', '-c', sshdInstallScript()]);
});

test('it tries each package manager, then starts sshd with banger’s key file and the VM’s host key', () => {
  const s = sshdInstallScript();
  for (const pm of ['apt-get', 'apk', 'dnf', 'yum', 'zypper', 'pacman']) assert.match(s, new RegExp(`command -v ${pm} `));
  assert.match(s, /-h \/etc\/ssh\/ssh_host_ed25519_key/);
  assert.match(s, /AuthorizedKeysFile .ssh\/authorized_keys \/etc\/ssh\/banger_authorized_keys/);
});

test('the payload carries the script, a systemd unit enabled for multi-user, and the first_boot key for banger-init', () => {
  const entries = payloadEntries({ agent: Buffer.from('agent'), hostname: 'vm1', extraFiles: firstBootFiles(), config: { first_boot: FIRST_BOOT_SCRIPT } });
  const byPath = new Map(entries.map((e) => [e.path, e]));
  const script = byPath.get(`banger/root${FIRST_BOOT_SCRIPT}`);
  assert.ok(script && script.type === 'file' && script.mode === 0o755);
  const link = byPath.get('banger/root/etc/systemd/system/multi-user.target.wants/banger-first-boot.service');
  assert.ok(link && link.type === 'symlink' && link.target === '/etc/systemd/system/banger-first-boot.service');
  const config = byPath.get('banger/config');
  assert.ok(config && config.type === 'file');
  assert.match(String(config.data), /^first_boot=\/etc\/banger\/first-boot\.sh$/m);
});
