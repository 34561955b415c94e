import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BangerError } from '../../src/api/errors.js';
import { missingTool, ProcessRunner } from '../../src/host/runner.js';

test('a host tool that is not installed is one missing_dependency error naming the tool and its package', async () => {
  await assert.rejects(
    new ProcessRunner().run('banger-no-such-tool', []),
    (e: unknown) => e instanceof BangerError && e.code === 'missing_dependency' && /banger-no-such-tool is not installed/.test(e.message),
  );
  const e = missingTool('qemu-img', 'disk overlays');
  assert.equal(e.code, 'missing_dependency');
  assert.match(e.message, /qemu-img is not installed \(disk overlays\)/);
  assert.match(e.fix ?? '', /apt-get install qemu-utils/);
});
