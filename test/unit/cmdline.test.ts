import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildCmdline } from '../../src/guest/cmdline.js';
import { hostTscKhz } from '../../src/host/cpu.js';

test('the default command line is the one measured to boot reliably under TCG', () => {
  assert.equal(
    buildCmdline({ hostname: 'vm0', tscKhz: 2300000 }),
    'console=ttyS0 panic=-1 root=/dev/vda rootfstype=ext4 rootflags=rw,noatime quiet cryptomgr.notests tsc_early_khz=2300000 systemd.hostname=vm0',
  );
});

test('ip=, extra arguments and overrides', () => {
  const c = buildCmdline({
    hostname: 'dev-1',
    ip: '10.77.0.10::10.77.0.1:255.255.255.0:dev-1:eth0:off',
    extra: ['reboot=k', 'pci=off'],
    quiet: false,
    root: '/dev/vdc',
  });
  assert.equal(
    c,
    'console=ttyS0 panic=-1 root=/dev/vdc rootfstype=ext4 rootflags=rw,noatime cryptomgr.notests ip=10.77.0.10::10.77.0.1:255.255.255.0:dev-1:eth0:off systemd.hostname=dev-1 reboot=k pci=off',
  );
  assert.doesNotMatch(c, /tsc_early_khz/, 'no TSC hint unless known');
});

test('bad values are refused rather than producing a different command line', () => {
  assert.throws(() => buildCmdline({ hostname: 'bad name' }), /not a valid hostname/);
  assert.throws(() => buildCmdline({ hostname: '-x' }), /not a valid hostname/);
  assert.throws(() => buildCmdline({ hostname: 'ok', extra: ['a b'] }), /whitespace/);
  assert.throws(() => buildCmdline({ hostname: 'ok', extra: [''] }), /empty/);
  assert.throws(() => buildCmdline({ hostname: 'ok', tscKhz: 0 }), /TSC/);
  assert.throws(() => buildCmdline({ hostname: 'ok', tscKhz: 2.5 }), /TSC/);
});

test('hostTscKhz reads the first "cpu MHz" of /proc/cpuinfo, in kHz', () => {
  const cpuinfo = [
    'processor\t: 0',
    'vendor_id\t: AuthenticAMD',
    'model name\t: AMD EPYC 7B13',
    'cpu MHz\t\t: 2596.124',
    'cache size\t: 512 KB',
    '',
    'processor\t: 1',
    'cpu MHz\t\t: 2400.000',
    '',
  ].join('\n');
  assert.equal(hostTscKhz(cpuinfo), 2596124);
  assert.equal(hostTscKhz('cpu MHz\t\t: 2300\n'), 2300000);
  assert.equal(hostTscKhz('cpu MHz : 1999.9996'), 2000000);
  assert.equal(hostTscKhz('processor : 0\nBogoMIPS : 50.00\n'), undefined, 'arm64 has no cpu MHz');
  assert.equal(hostTscKhz('cpu MHz : 0.000'), undefined);
});
