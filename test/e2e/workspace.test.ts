import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { guestAssets, TestHome } from '../helpers/banger.js';
import { requires } from '../helpers/prereq.js';
import { git, makeHostRepo } from '../helpers/workspace-fixture.js';

/**
 * Workspaces on a real VM through the CLI: a repo with a submodule, a binary file, an executable
 * bit, a symlink, an ignored and an untracked file and uncommitted edits is prepared (full and
 * shallow), worked on in the guest (a commit, edits, a deletion, a mode change, a new binary), and
 * exported in the three formats; on the host each result's TREE equals the guest's, and export
 * left the guest's index and working tree as they were. One VM for the file; the guest has git.
 */
const assets = guestAssets();

/** The guest's tree as `git add -A` would record it, in a throwaway index (the real one untouched). */
const GUEST_TREE = 'cd /root/repo && cp .git/index /tmp/tree-idx && GIT_INDEX_FILE=/tmp/tree-idx git add -A && GIT_INDEX_FILE=/tmp/tree-idx git write-tree';
/** The guest's index bytes and every working-tree file's type, mode and content hash. */
const GUEST_STATE =
  "cd /root/repo && sha256sum .git/index && find . -path ./.git -prune -o -print0 | sort -z | xargs -0 stat -c '%n %F %a %s' && find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum";

describe('workspaces on a real VM', { skip: requires(assets, 'guest assets missing: run scripts/guest-assets.sh') }, () => {
  let home: TestHome;
  let tmp: string;
  let host: string;
  const sh = async (script: string) => {
    const r = await home.banger(['vm', 'exec', 'dev', '--', 'sh', '-c', script]);
    assert.equal(r.code, 0, `guest: ${script}\n${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    tmp = await mkdtemp('/tmp/bg-ws-e2e-');
    host = makeHostRepo(tmp).host;
    home = await TestHome.create(['accel = "tcg"', '[vm_defaults]', 'vcpu = 2', 'memory_mib = 512', 'disk_size = "1G"', ''].join('\n'), { netns: true });
    const a = assets as NonNullable<typeof assets>;
    await home.ok(['kernel', 'import', 'debian-cloud', '--from', a.kernelDir]);
    await home.ok(['image', 'register', '--name', 'img', '--rootfs', a.rootfs, '--kernel-ref', 'debian-cloud']);
    await home.ok(['vm', 'create', '--name', 'dev', '--image', 'img', '--wait-for', 'agent']);
  });
  after(async () => {
    await home?.destroy();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('prepare full: the guest repo has the host HEAD and the host working tree', async () => {
    const r = await home.banger(['vm', 'workspace', 'prepare', 'dev', host, '--include-untracked']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await sh('cd /root/repo && git rev-parse HEAD')).trim(), git(host, 'rev-parse', 'HEAD'));
    assert.equal((await sh('cd /root/repo && git rev-parse --is-shallow-repository')).trim(), 'false');
    assert.equal((await sh('cat /root/repo/untracked.txt')).trim(), 'only with --include-untracked');
    assert.equal((await sh('test -e /root/repo/ignored.log && echo yes || echo no')).trim(), 'no');
    assert.equal((await sh('stat -c %a /root/repo/mode.txt')).trim(), '755');
    assert.equal((await sh('readlink /root/repo/link')).trim(), 'a.txt');
    assert.equal((await sh('cat /root/repo/sub/lib.txt')).trim(), 'library');
    // The host's own identity is the workspace's.
    assert.equal((await sh('cd /root/repo && git config user.email')).trim(), 'host@example.com');
  });

  test('guest work exported as patch, commits and branch: each reproduces the guest tree on base; the guest index and worktree are untouched', async () => {
    await sh(
      [
        'cd /root/repo',
        'git add -A && git -c user.name=G -c user.email=g@g commit -qm "guest commit 1"',
        'echo committed > guest-commit.txt && git add guest-commit.txt && git -c user.name=G -c user.email=g@g commit -qm "guest commit 2"',
        'echo rewritten > a.txt && rm dir/nested.txt && chmod +x a.txt',
        'head -c 3000 /dev/urandom > new.bin && echo staged > staged.txt && git add staged.txt',
      ].join(' && '),
    );
    const guestTree = (await sh(GUEST_TREE)).trim();
    const before = await sh(GUEST_STATE);
    const base = git(host, 'rev-parse', 'HEAD');

    const patchFile = join(tmp, 'work.patch');
    assert.equal((await home.banger(['vm', 'workspace', 'export', 'dev', '-o', patchFile])).code, 0);
    const commitsFile = join(tmp, 'work.mbox');
    assert.equal((await home.banger(['vm', 'workspace', 'export', 'dev', '--format', 'commits', '-o', commitsFile])).code, 0);
    const branch = await home.banger(['vm', 'workspace', 'export', 'dev', '--format', 'branch', '--name', 'try']);
    assert.equal(branch.code, 0, branch.stderr);

    // Export wrote neither the guest's index nor its working tree.
    assert.equal(await sh(GUEST_STATE), before);

    // patch: git apply --binary on a fresh checkout of base.
    const viaPatch = join(tmp, 'via-patch');
    git(tmp, 'clone', '-q', '--no-checkout', host, viaPatch);
    git(viaPatch, 'checkout', '-q', base);
    git(viaPatch, 'apply', '--binary', patchFile);
    git(viaPatch, 'add', '-A');
    assert.equal(git(viaPatch, 'write-tree'), guestTree, 'patch → the guest tree');
    // commits: git am on base.
    const viaAm = join(tmp, 'via-am');
    git(tmp, 'clone', '-q', '--no-checkout', host, viaAm);
    git(viaAm, 'checkout', '-q', base);
    git(viaAm, 'am', '-q', commitsFile);
    assert.equal(git(viaAm, 'rev-parse', 'HEAD^{tree}'), guestTree, 'commits → the guest tree');
    assert.ok(Number(git(viaAm, 'rev-list', '--count', `${base}..HEAD`)) >= 3, 'the guest commits plus one of the uncommitted state');
    // branch: refs/banger/dev/try in the host repo.
    assert.equal(git(host, 'rev-parse', 'refs/banger/dev/try^{tree}'), guestTree, 'branch → the guest tree');
    assert.equal(git(host, 'merge-base', 'refs/banger/dev/try', base), base);
  });

  test('prepare shallow: depth 1 with the host HEAD id; status reports base and guest changes', async () => {
    const r = await home.banger(['vm', 'workspace', 'prepare', 'dev', host, '--mode', 'shallow', '--guest-path', '/root/shallow']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await sh('cd /root/shallow && git rev-parse --is-shallow-repository')).trim(), 'true');
    assert.equal((await sh('cd /root/shallow && git rev-parse HEAD')).trim(), git(host, 'rev-parse', 'HEAD'));
    assert.equal((await sh('cd /root/shallow && git rev-list --count HEAD')).trim(), '1');
    const status = await home.banger(['vm', 'workspace', 'status', 'dev']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, new RegExp(git(host, 'rev-parse', '--short', 'HEAD')));
  });
});
