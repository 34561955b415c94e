import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { lookupUserIn } from '../../src/host/users.js';
import { QEMU_SANDBOX_POLICY, QemuConfinementCheck } from '../../src/vmm/qemu/sandbox.js';
import { type FakeOutcome, FakeRunner } from '../helpers/fake-runner.js';

/** A FAKE runner standing in for qemu-system-x86_64: answers by argv, records every call (argv only). */
class FakeQemu extends FakeRunner {
  constructor(answer: (args: readonly string[]) => Exclude<FakeOutcome, 'missing'>) {
    super((_command, args) => answer(args));
  }
  get argvs(): string[][] {
    return this.calls.map((c) => c.slice(1));
  }
}

test('the sandbox check runs QEMU with the exact policy and -version, once per binary', async () => {
  const qemu = new FakeQemu(() => ({ stdout: 'QEMU emulator version 7.2.22\n' }));
  const check = new QemuConfinementCheck(qemu);
  assert.equal(await check.check('qemu-system-x86_64'), 'runas');
  await check.check('qemu-system-x86_64');
  assert.deepEqual(qemu.argvs, [['-sandbox', QEMU_SANDBOX_POLICY, '-version']]);
});

test('a QEMU without seccomp support is refused with a BangerError naming the fix, and re-checked next time', async () => {
  let supported = false;
  const qemu = new FakeQemu(() => (supported ? {} : { code: 1, stderr: 'qemu-system-x86_64: -sandbox support is not enabled in this QEMU binary\n' }));
  const check = new QemuConfinementCheck(qemu);
  await assert.rejects(check.check('/opt/qemu'), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'missing_dependency');
    assert.match(e.message, /seccomp sandbox.*-sandbox support is not enabled/);
    assert.match(e.fix ?? '', /--enable-seccomp/);
    return true;
  });
  supported = true;
  assert.equal(await check.check('/opt/qemu'), 'runas');
  assert.equal(qemu.argvs.length, 2);
});

test('a vmm user QEMU cannot find is an invalid_config error naming the user', async () => {
  const qemu = new FakeQemu((args) =>
    args.includes('-help')
      ? { stdout: '-runas user     change to user id user\n' }
      : { code: 1, stderr: 'qemu-system-x86_64: User "banger-vmm" doesn\'t exist\n' },
  );
  await assert.rejects(new QemuConfinementCheck(qemu).check('qemu', { runAs: 'banger-vmm' }), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'invalid_config');
    assert.match(e.message, /banger-vmm/);
    assert.match(e.fix ?? '', /useradd/);
    return true;
  });
  assert.deepEqual(qemu.argvs[1], ['-sandbox', 'on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny', '-runas', 'banger-vmm', '-version']);
});

test('a newer QEMU that only offers -run-with gets user= there', async () => {
  const qemu = new FakeQemu((args) => (args.includes('-help') ? { stdout: '-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]\n' } : {}));
  assert.equal(await new QemuConfinementCheck(qemu).check('qemu', { runAs: 'nobody' }), 'run-with');
  assert.deepEqual(qemu.argvs[1]?.slice(2), ['-run-with', 'user=nobody', '-version']);
});

test('vmm users resolve from passwd text or uid:gid; unknown ones do not', () => {
  const passwd = 'root:x:0:0:root:/root:/bin/bash\nbanger-vmm:x:998:997::/nonexistent:/usr/sbin/nologin\nbroken:x:abc:1::/:/bin/sh\n';
  assert.deepEqual(lookupUserIn(passwd, 'banger-vmm'), { uid: 998, gid: 997 });
  assert.deepEqual(lookupUserIn(passwd, '1000:1001'), { uid: 1000, gid: 1001 });
  assert.equal(lookupUserIn(passwd, 'nobody'), undefined);
  assert.equal(lookupUserIn(passwd, 'broken'), undefined);
  assert.equal(lookupUserIn(passwd, 'banger'), undefined);
});

test('a QEMU that fails the check for another reason is not blamed on seccomp', async () => {
  const qemu = new FakeQemu(() => ({ code: 1, stderr: 'qemu-system-x86_64: -no-such-option: invalid option\n' }));
  await assert.rejects(new QemuConfinementCheck(qemu).check('qemu'), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'vmm_failed');
    assert.match(e.message, /QEMU failed to start: .*-no-such-option: invalid option/);
    assert.doesNotMatch(e.message, /seccomp/);
    return true;
  });
});
