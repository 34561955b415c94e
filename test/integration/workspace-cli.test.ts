/**
 * `banger vm workspace …` through the real CLI and daemon, without a VM: the dry run lists what a
 * prepare would ship (the daemon plans; nothing boots), and the verbs' refusals are clear.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import type { WorkspacePlan } from '../../src/api/workspace-schemas.js';
import { TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';
import { git, makeHostRepo } from '../helpers/workspace-fixture.js';

describe('vm workspace CLI without a VM', { skip: requires(spawnSync('git', ['--version']).status === 0, 'git on the host') }, () => {
  let home: TestHome;
  let tmp: string;
  let host: string;

  before(async () => {
    tmp = await mkdtemp('/tmp/bg-ws-cli-');
    process.env.GIT_CONFIG_GLOBAL = '/dev/null';
    ({ host } = makeHostRepo(tmp));
    home = await TestHome.create('');
  });
  after(async () => {
    await home?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('prepare --dry-run lists the files a prepare would ship, their counts, the skipped untracked ones; no VM is needed', async () => {
    const out = await home.ok(['vm', 'workspace', 'prepare', 'no-such-vm', host, '--dry-run']);
    assert.match(out, /^modified\s+.*\sa\.txt$/m);
    assert.match(out, /^added\s+.*\sstaged-new\.txt$/m);
    assert.match(out, /^tracked\s+.*\ssub\/lib\.txt$/m);
    assert.match(out, /^deleted\s+del\.txt$/m);
    assert.doesNotMatch(out, /ignored\.log/);
    assert.doesNotMatch(out, /^untracked/m);
    assert.match(out, /nothing was shipped/);
    assert.match(out, /1 untracked files would be skipped/);
    const plan = JSON.parse(
      await home.ok(['vm', 'workspace', 'prepare', 'x', host, '--dry-run', '--include-untracked', '--mode', 'shallow', '--json']),
    ) as WorkspacePlan;
    assert.equal(plan.head, git(host, 'rev-parse', 'HEAD'));
    assert.equal(plan.mode, 'shallow');
    assert.ok(plan.entries.some((e) => e.path === 'untracked.txt' && e.kind === 'untracked'));
  });

  test('refusals: not a repository, an unknown VM, a bad format or mode', async () => {
    const notRepo = await home.banger(['vm', 'workspace', 'prepare', 'x', tmp, '--dry-run']);
    assert.notEqual(notRepo.code, 0);
    assert.match(notRepo.stderr, /not inside a git repository/);
    const noVm = await home.banger(['vm', 'workspace', 'status', 'no-such-vm']);
    assert.notEqual(noVm.code, 0);
    assert.match(noVm.stderr, /no-such-vm/);
    const prepareNoVm = await home.banger(['vm', 'workspace', 'prepare', 'no-such-vm', host]);
    assert.notEqual(prepareNoVm.code, 0);
    assert.match(prepareNoVm.stderr, /no-such-vm/);
    const badFormat = await home.banger(['vm', 'workspace', 'export', 'x', '--format', 'zip']);
    assert.notEqual(badFormat.code, 0);
    assert.match(badFormat.stderr, /use patch, commits or branch/);
    const badMode = await home.banger(['vm', 'workspace', 'prepare', 'x', host, '--mode', 'deep', '--dry-run']);
    assert.notEqual(badMode.code, 0);
    assert.match(badMode.stderr, /use full or shallow/);
  });
});
