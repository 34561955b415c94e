import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { defaultConfig, parseConfig } from '../../src/config/config.js';
import { resolveSize } from '../../src/daemon/services/sizing.js';

const GiB = 1024 ** 3;

test('host-aware defaults: CPUs/4 (at least 1, at most 4), RAM/8 (at most 8 GiB), 8 GiB disk', () => {
  assert.deepEqual(resolveSize({}, defaultConfig(), { cpus: 2, memoryBytes: 24 * GiB }), { vcpus: 1, memoryMib: 3072, diskSizeBytes: 8 * GiB });
  assert.deepEqual(resolveSize({}, defaultConfig(), { cpus: 64, memoryBytes: 256 * GiB }), { vcpus: 4, memoryMib: 8192, diskSizeBytes: 8 * GiB });
});

test('[vm_defaults] override host defaults and flags override both', () => {
  const cfg = parseConfig('[vm_defaults]\nvcpu = 3\nmemory_mib = 2048\ndisk_size = "4G"\n', 'c.toml');
  const host = { cpus: 8, memoryBytes: 16 * GiB };
  assert.deepEqual(resolveSize({}, cfg, host), { vcpus: 3, memoryMib: 2048, diskSizeBytes: 4 * GiB });
  assert.deepEqual(resolveSize({ vcpus: 1, memoryMib: 512, diskSizeBytes: GiB }, cfg, host), { vcpus: 1, memoryMib: 512, diskSizeBytes: GiB });
});

test('invalid sizes are refused with the flag named', () => {
  const host = { cpus: 2, memoryBytes: 4 * GiB };
  const cases: Array<[Record<string, number>, RegExp]> = [
    [{ vcpus: 0 }, /--vcpus must be an integer from 1 to 64/],
    [{ vcpus: 65 }, /--vcpus/],
    [{ memoryMib: 64 }, /--memory must be at least 128 MiB/],
    [{ memoryMib: 8192 }, /more than this host has/],
    [{ diskSizeBytes: 1024 }, /--disk-size must be at least 256M/],
  ];
  for (const [req, re] of cases) {
    assert.throws(
      () => resolveSize(req, defaultConfig(), host),
      (e: unknown) => e instanceof BangerError && e.code === 'bad_request' && re.test(e.message),
    );
  }
});
