import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ProcessRunner } from '../../src/host/runner.js';
import { removeAsItsOwner } from '../../src/system/install.js';

const skip = process.getuid?.() === 0 ? false : 'needs root: the directory under test belongs to another uid';
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test("purge removes the owner's runtime dir (its contents as the owner) and follows no link in it or in its place", { skip }, async () => {
  const base = mkdtempSync(join(tmpdir(), 'purge-'));
  dirs.push(base);
  chmodSync(base, 0o755); // like /run: the owner can reach its dir, not replace it
  const canaryDir = join(base, 'roots-files');
  mkdirSync(canaryDir);
  writeFileSync(join(canaryDir, 'canary'), 'root data');
  const run = join(base, 'run-banger');
  mkdirSync(join(run, 'vms', 'x'), { recursive: true });
  writeFileSync(join(run, 'vms', 'x', 'agent.sock'), '');
  symlinkSync(canaryDir, join(run, 'vms', 'link'));
  for (const p of [run, join(run, 'vms'), join(run, 'vms', 'x'), join(run, 'vms', 'x', 'agent.sock')]) chownSync(p, 65534, 65534);

  assert.equal(await removeAsItsOwner(run, new ProcessRunner()), true);
  assert.equal(existsSync(run), false, 'the runtime dir is gone');
  assert.equal(readFileSync(join(canaryDir, 'canary'), 'utf8'), 'root data', 'the canary behind the link is untouched');

  // A link in the runtime dir's own place is unlinked, not followed.
  symlinkSync(canaryDir, run);
  assert.equal(await removeAsItsOwner(run, new ProcessRunner()), true);
  assert.equal(existsSync(join(canaryDir, 'canary')), true);
  assert.equal(await removeAsItsOwner(run, new ProcessRunner()), false, 'absent: nothing to do');
});
