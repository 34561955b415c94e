/**
 * Workspaces end to end against the FAKE guest channel (test/helpers/fake-guest.ts: "the guest" is
 * this host, its paths are temp dirs here): a real host repository with a submodule, a binary
 * file, an executable bit, a symlink, an ignored file, an untracked file and staged and unstaged
 * edits; prepare full and shallow; work "in the guest"; export in the three formats; the result's
 * tree on a fresh checkout of the base equals the guest's tree; export never touches the guest's
 * index or working tree; a hostile guest cannot write a ref outside refs/banger/<vm>/.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir } from 'node:fs/promises';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { BangerError } from '../../src/api/errors.js';
import type { OperationEvent } from '../../src/api/schemas.js';
import { WorkspaceExportRequestSchema, WorkspacePrepareRequestSchema } from '../../src/api/workspace-schemas.js';
import { BangerClient } from '../../src/client/client.js';
import { resolveLayout } from '../../src/config/layout.js';
import type { App } from '../../src/daemon/app.js';
import { Router } from '../../src/daemon/http.js';
import { OperationRegistry } from '../../src/daemon/operations.js';
import { coreRoutes } from '../../src/daemon/routes-core.js';
import { workspaceRoutes } from '../../src/daemon/routes-workspace.js';
import { type GuestExec, WorkspaceService } from '../../src/daemon/services/workspaces.js';
import { ProcessRunner } from '../../src/host/runner.js';
import type { Repos } from '../../src/store/repos.js';
import { KeyedMutex } from '../../src/util/keyed-mutex.js';
import { HostFakeGuest } from '../helpers/fake-guest.js';
import { requires } from '../helpers/prereq.js';
import { ctx, git, makeHostRepo, snapshot, storeWithVms, worktreeTree } from '../helpers/workspace-fixture.js';

const hasGit = spawnSync('git', ['--version']).status === 0;
const skip = requires(hasGit, 'git on the host');

/** ProcessService.exec's shape over the FAKE channel: start, follow to the end, collect. */
function execOver(guest: HostFakeGuest): GuestExec {
  let n = 0;
  return async (_ref, spec) => {
    const id = `ws-${++n}`;
    await guest.startProcess({ id, argv: spec.argv, ...(spec.cwd ? { cwd: spec.cwd } : {}), env: ['GIT_CONFIG_GLOBAL=/dev/null', 'GIT_CONFIG_NOSYSTEM=1'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const proc = await guest.output(id, { stdoutFrom: 0, stderrFrom: 0, follow: true }, (s, d) => void (s === 'stdout' ? out : err).push(d));
    return {
      proc: { id },
      result: {
        exitCode: proc.exitCode,
        signal: proc.signal === null ? null : `signal ${proc.signal}`,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        truncated: false,
      },
    };
  };
}

describe('workspaces over the fake guest channel', { skip }, () => {
  let tmp: string;
  let host: string;
  let svc: WorkspaceService;
  let repos: Repos;
  let guest: HostFakeGuest;
  let exec: GuestExec;
  let hostileExec: ((argv: string[]) => string[] | undefined) | undefined;
  let stagingDir: string;
  const guestPath = (vm: string) => join(tmp, `guest-${vm}`, 'root', 'repo');
  let serviceWith: (maxBundleBytes: number) => WorkspaceService;

  before(async () => {
    tmp = await mkdtemp('/tmp/bg-ws-');
    process.env.GIT_CONFIG_GLOBAL = '/dev/null';
    process.env.GIT_CONFIG_NOSYSTEM = '1';
    ({ host } = makeHostRepo(tmp));
    repos = storeWithVms(tmp, [
      ['v1', 'full', 'running'],
      ['v2', 'shallow', 'running'],
      ['v3', 'stopped', 'stopped'],
      ['v4', 'api', 'running'],
    ]);
    guest = new HostFakeGuest();
    const plainExec = execOver(guest);
    exec = (ref, spec, opts) => {
      const swapped = hostileExec?.(spec.argv);
      return plainExec(ref, swapped ? { ...spec, argv: swapped } : spec, opts);
    };
    stagingDir = join(tmp, 'daemon-staging');
    serviceWith = (maxBundleBytes) =>
      new WorkspaceService({
        repos,
        runner: new ProcessRunner(),
        clock: { now: () => new Date('2026-01-01T00:00:00Z') },
        locks: new KeyedMutex(),
        vmRow: (ref) => {
          const r = repos.vms.byName(ref);
          if (!r) throw new BangerError('not_found', `no VM ${ref}`);
          return r;
        },
        guest: async () => guest,
        exec: (ref, spec, opts) => exec(ref, spec, opts),
        stagingDir,
        maxBundleBytes,
      });
    svc = serviceWith(64 * 1024 * 1024);
  });
  after(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('plan: tracked and uncommitted files, untracked only on request, ignored never, submodules', async () => {
    const plan = await svc.plan({ hostPath: join(host, 'dir'), mode: 'full', includeUntracked: false });
    assert.equal(plan.hostPath, host);
    assert.equal(plan.head, git(host, 'rev-parse', 'HEAD'));
    const kinds = Object.fromEntries(plan.entries.map((e) => [e.path, e.kind]));
    assert.equal(kinds['a.txt'], 'modified');
    assert.equal(kinds['staged-new.txt'], 'added');
    assert.equal(kinds['mode.txt'], 'modified');
    assert.equal(kinds['dir/nested.txt'], 'tracked');
    assert.equal(kinds.link, 'tracked');
    assert.equal(kinds['del.txt'], undefined);
    assert.equal(kinds['staged-del.txt'], undefined);
    assert.equal(kinds['ignored.log'], undefined);
    assert.equal(kinds['untracked.txt'], undefined);
    assert.deepEqual(plan.deleted, ['del.txt', 'staged-del.txt']);
    assert.equal(plan.untrackedSkipped, 1);
    assert.equal(plan.submodules.length, 1);
    assert.equal(plan.submodules[0]?.path, 'sub');
    assert.equal(plan.submodules[0]?.initialized, true);
    // files: host entries + the submodule's lib.txt; bytes: their lstat sizes.
    assert.equal(plan.files, plan.entries.length + 1);
    assert.equal(plan.bytes, plan.entries.reduce((n, e) => n + e.size, 0) + 'library\n'.length);
    const withUntracked = await svc.plan({ hostPath: host, mode: 'shallow', includeUntracked: true });
    assert.equal(withUntracked.entries.find((e) => e.path === 'untracked.txt')?.kind, 'untracked');
    assert.equal(withUntracked.untrackedSkipped, 0);
    assert.equal(
      withUntracked.entries.find((e) => e.path === 'ignored.log'),
      undefined,
    );
  });

  test('prepare full: same HEAD and history, staged state staged, working tree exact, submodule, identity, record', async () => {
    const c = ctx();
    const res = await svc.prepare('full', { hostPath: host, guestPath: guestPath('full') }, c);
    const g = guestPath('full');
    assert.equal(res.workspace.baseCommit, git(host, 'rev-parse', 'HEAD'));
    assert.equal(res.untrackedSkipped, 1);
    assert.equal(git(g, 'rev-parse', 'HEAD'), git(host, 'rev-parse', 'HEAD'));
    assert.equal(git(g, 'symbolic-ref', '--short', 'HEAD'), 'main');
    assert.equal(git(g, 'rev-list', '--count', 'HEAD'), '2');
    assert.equal(existsSync(join(g, '.git', 'shallow')), false);
    // The index: the host's staged state (same tree), not the working tree.
    assert.equal(git(g, 'write-tree'), git(host, 'write-tree'));
    // The working tree: the host's, minus untracked and ignored files.
    const hostSnap = snapshot(host).filter((l) => !l.includes('untracked.txt') && !l.includes('ignored.log'));
    assert.deepEqual(snapshot(g), hostSnap);
    assert.equal(readlinkSync(join(g, 'link')), 'a.txt');
    assert.equal(lstatSync(join(g, 'mode.txt')).mode & 0o111, 0o111);
    assert.equal(git(join(g, 'sub'), 'rev-parse', 'HEAD'), git(join(host, 'sub'), 'rev-parse', 'HEAD'));
    assert.equal(git(g, 'config', '--local', 'user.name'), 'Host Person');
    assert.equal(git(g, 'config', '--local', 'user.email'), 'host@example.com');
    // Nothing of banger's staging is left in the guest.
    assert.deepEqual((await readdir(join(tmp, 'guest-full', 'root'))).sort(), ['repo']);
    assert.deepEqual(
      readdirSync(join(g, '.git')).filter((n) => n.startsWith('banger')),
      [],
    );
    assert.deepEqual(repos.workspaces.byVm('v1')?.guest_path, g);
    assert.ok(c.stages.includes('ship history'));
    // A second prepare to the same path is refused, the first one stays.
    await assert.rejects(svc.prepare('full', { hostPath: host, guestPath: g }, ctx()), (e: BangerError) => e.code === 'conflict');
    await assert.rejects(svc.prepare('stopped', { hostPath: host, guestPath: g }, ctx()), (e: BangerError) => e.code === 'conflict');
  });

  test('guest work exported as patch, commits and branch reproduces the guest tree on a fresh checkout of base', async () => {
    const g = guestPath('full');
    const base = git(host, 'rev-parse', 'HEAD');
    // "In the guest": a commit, then staged and unstaged edits, a new binary, a deletion, a mode change, a new symlink.
    writeFileSync(join(g, 'guest-commit.txt'), 'committed in the guest\n');
    git(g, 'add', 'guest-commit.txt');
    git(g, 'commit', '-qm', 'guest commit');
    writeFileSync(join(g, 'staged-in-guest.txt'), 'staged in guest\n');
    git(g, 'add', 'staged-in-guest.txt');
    writeFileSync(join(g, 'a.txt'), 'rewritten in the guest\n');
    writeFileSync(join(g, 'new.bin'), Buffer.concat([Buffer.from([0, 0, 7]), randomBytes(1000)]));
    unlinkSync(join(g, 'dir', 'nested.txt'));
    chmodSync(join(g, 'run.sh'), 0o644);
    symlinkSync('dir', join(g, 'dirlink'));
    const guestTree = worktreeTree(g, tmp);
    const indexBefore = readFileSync(join(g, '.git', 'index'));
    const treeBefore = snapshot(g);
    const headBefore = git(g, 'rev-parse', 'HEAD');

    const status = await svc.status('full');
    assert.equal(status.guestCommits, 1);
    assert.equal(status.hostMoved, false);
    assert.equal(status.hostCommitsSinceBase, 0);
    const paths = status.changes.map((c) => c.path).sort();
    for (const p of ['a.txt', 'new.bin', 'dir/nested.txt', 'run.sh', 'staged-in-guest.txt', 'dirlink'])
      assert.ok(paths.includes(p), `status lists ${p}: ${paths}`);

    const fresh = (name: string) => {
      const d = join(tmp, name);
      git(tmp, 'clone', '-q', '--no-local', host, d);
      git(d, 'checkout', '-q', '--detach', base);
      return d;
    };
    const collect = async (format: 'patch' | 'commits') => {
      const r = await svc.exportText('full', format);
      const parts: Buffer[] = [];
      for await (const b of r.stream) parts.push(b as Buffer);
      await r.done;
      return Buffer.concat(parts);
    };

    const patch = await collect('patch');
    const p1 = fresh('apply-patch');
    writeFileSync(join(tmp, 'x.patch'), patch);
    git(p1, 'apply', '--binary', '--index', join(tmp, 'x.patch'));
    assert.equal(git(p1, 'write-tree'), guestTree);

    const series = await collect('commits');
    const p2 = fresh('apply-commits');
    writeFileSync(join(tmp, 'x.mbox'), series);
    git(p2, 'am', '-q', join(tmp, 'x.mbox'));
    assert.equal(git(p2, 'rev-list', '--count', `${base}..HEAD`), '2');
    assert.equal(git(p2, 'write-tree'), guestTree);
    assert.equal(git(p2, 'rev-parse', 'HEAD^{tree}'), guestTree);

    const branch = await svc.exportBranch('full', 'wip');
    assert.equal(branch.ref, 'refs/banger/full/wip');
    assert.equal(git(host, 'rev-parse', 'refs/banger/full/wip^{tree}'), guestTree);
    assert.equal(git(host, 'rev-parse', 'refs/banger/full/wip~1'), headBefore);
    assert.equal(git(host, 'rev-parse', 'refs/banger/full/wip~2'), base);
    assert.deepEqual(readdirSync(stagingDir), []);

    // The guest's index, working tree and HEAD are exactly as they were; no temporary ref or file stays.
    assert.deepEqual(readFileSync(join(g, '.git', 'index')), indexBefore);
    assert.deepEqual(snapshot(g), treeBefore);
    assert.equal(git(g, 'rev-parse', 'HEAD'), headBefore);
    assert.equal(git(g, 'for-each-ref', 'refs/banger-export'), '');
    assert.deepEqual(
      readdirSync(join(g, '.git')).filter((n) => n.startsWith('banger')),
      [],
    );
  });

  test('prepare shallow: depth 1 with the same commit id, untracked on request, new branch', async () => {
    const g = guestPath('shallow');
    const res = await svc.prepare('shallow', { hostPath: host, guestPath: g, mode: 'shallow', includeUntracked: true, branch: 'feature/x' }, ctx());
    assert.equal(res.untrackedSkipped, 0);
    assert.equal(git(g, 'rev-parse', 'HEAD'), git(host, 'rev-parse', 'HEAD'));
    assert.equal(readFileSync(join(g, '.git', 'shallow'), 'utf8').trim(), git(host, 'rev-parse', 'HEAD'));
    assert.equal(git(g, 'rev-list', '--count', 'HEAD'), '1');
    assert.equal(git(g, 'symbolic-ref', '--short', 'HEAD'), 'feature/x');
    assert.equal(git(g, 'fsck', '--no-progress'), '');
    assert.equal(readFileSync(join(g, 'untracked.txt'), 'utf8'), 'only with --include-untracked\n');
    assert.equal(existsSync(join(g, 'ignored.log')), false);
    assert.equal(git(join(g, 'sub'), 'rev-parse', 'HEAD'), git(join(host, 'sub'), 'rev-parse', 'HEAD'));
    assert.equal(git(g, 'write-tree'), git(host, 'write-tree'));
    // Work in the shallow guest comes back as a branch too (the bundle's prerequisite is the base).
    writeFileSync(join(g, 'shallow-work.txt'), 'x\n');
    const guestTree = worktreeTree(g, tmp);
    const b = await svc.exportBranch('shallow', 'wip');
    assert.equal(git(host, 'rev-parse', `${b.ref}^{tree}`), guestTree);
    await assert.rejects(
      svc.prepare('shallow', { hostPath: host, guestPath: `${g}2`, mode: 'shallow', branch: 'b', from: 'HEAD~1' }, ctx()),
      (e: BangerError) => e.code === 'bad_request',
    );
  });

  test('a cancelled prepare leaves nothing in the guest and records nothing', async () => {
    const g = join(tmp, 'guest-cancel', 'root', 'repo');
    const c = ctx();
    const controller = new AbortController();
    // Cancelled while checking out: the steps under way finish or fail, the staging directory goes.
    c.stage = (name) => {
      c.stages.push(name);
      if (name === 'check out') controller.abort();
    };
    Object.assign(c, { signal: controller.signal });
    c.checkCancelled = () => {
      if (controller.signal.aborted) throw new BangerError('cancelled', 'cancelled');
    };
    await assert.rejects(svc.prepare('api', { hostPath: host, guestPath: g }, c), (e: BangerError) => e.code === 'cancelled' || e.name === 'AbortError');
    assert.deepEqual(readdirSync(join(tmp, 'guest-cancel', 'root')), []);
    assert.equal(repos.workspaces.byVm('v4'), undefined);
  });

  test('a guest that stops reading fails the prepare and leaves no host git or tar process behind', { timeout: 120_000 }, async () => {
    // A repository whose bundle is larger than a pipe's buffer: the host's git would block writing it.
    const bigRepo = join(tmp, 'big-host');
    mkdirSync(bigRepo);
    git(bigRepo, 'init', '-q');
    writeFileSync(join(bigRepo, 'noise.bin'), randomBytes(4 * 1024 * 1024));
    git(bigRepo, 'add', '.');
    git(bigRepo, 'commit', '-qm', 'noise');
    /** A FAKE guest whose writeFile refuses at once without reading a byte. */
    class RefusingWrites extends HostFakeGuest {
      override async writeFile(): Promise<{ size: number }> {
        throw new BangerError('unavailable', 'FAKE: the guest stopped reading');
      }
    }
    const refusing = new RefusingWrites();
    const exec = execOver(refusing);
    const broken = new WorkspaceService({
      repos,
      runner: new ProcessRunner(),
      clock: { now: () => new Date() },
      locks: new KeyedMutex(),
      vmRow: (ref) => repos.vms.byName(ref) as NonNullable<ReturnType<Repos['vms']['byName']>>,
      guest: async () => refusing,
      exec,
      stagingDir,
    });
    for (const mode of ['full', 'shallow'] as const) {
      await assert.rejects(broken.prepare('api', { hostPath: bigRepo, guestPath: join(tmp, 'guest-refusing', mode), mode }, ctx()), /stopped reading/);
    }
    // Killed children are reaped a moment after the kill: wait for their exit, not for a time.
    const children = () =>
      readdirSync('/proc')
        .filter((e) => /^\d+$/.test(e))
        .filter((pid) => {
          try {
            const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
            return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === process.pid && /\((git|tar)\)/.test(stat);
          } catch {
            return false;
          }
        });
    while (children().length > 0) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(children(), []);
    assert.deepEqual(
      readdirSync(join(tmp, 'guest-refusing')).filter((n) => n.includes('banger')),
      [],
    );
  });

  test('a hostile guest cannot write a ref outside refs/banger/<vm>/ nor make git read another repository', async () => {
    const refsBefore = git(host, 'for-each-ref', '--format=%(refname) %(objectname)');
    const evil = join(tmp, 'evil');
    // The guest answers the export with a bundle of its own making: other refs, not the one asked for.
    const makeBundle = (refs: string[]) => {
      rmSync(evil, { recursive: true, force: true });
      git(tmp, 'clone', '-q', '--no-local', host, evil);
      writeFileSync(join(evil, 'evil.txt'), 'evil\n');
      git(evil, 'add', 'evil.txt');
      git(evil, 'commit', '-qm', 'evil');
      for (const r of refs) git(evil, 'update-ref', r, 'HEAD');
      git(evil, 'bundle', 'create', '-q', join(tmp, 'evil.bundle'), ...refs);
    };
    const answerWith = (content: string | Buffer) => (argv: string[]) => {
      if (!argv[2]?.includes('git bundle create')) return undefined;
      writeFileSync(join(tmp, 'evil.payload'), content);
      // argv: sh -c SCRIPT banger BASE OUT FORMAT REF — copy the payload to OUT and answer a commit id.
      return ['/bin/sh', '-c', 'cp "$1" "$2" && echo 1111111111111111111111111111111111111111', 'banger', join(tmp, 'evil.payload'), argv[5] as string];
    };
    try {
      makeBundle(['refs/heads/main', 'refs/tags/evil', 'refs/banger/other/wip']);
      hostileExec = answerWith(readFileSync(join(tmp, 'evil.bundle')));
      await assert.rejects(svc.exportBranch('full', 'wip2'), (e: BangerError) => e.code === 'rejected_content');
      assert.equal(git(host, 'for-each-ref', '--format=%(refname) %(objectname)'), refsBefore);
      // A "bundle" that is a gitfile pointing at another repository is refused before git sees it.
      hostileExec = answerWith(`gitdir: ${evil}/.git\n`);
      await assert.rejects(svc.exportBranch('full', 'wip3'), (e: BangerError) => e.code === 'rejected_content');
      assert.equal(git(host, 'for-each-ref', '--format=%(refname) %(objectname)'), refsBefore);
      // Objects git's fsck refuses (a tree with a `.git` entry): a bundle alone is not fsck'ed by
      // git before 2.46, so it goes through a quarantine; nothing of it reaches the host repository.
      rmSync(evil, { recursive: true, force: true });
      git(tmp, 'clone', '-q', '--no-local', host, evil);
      const dotGit = [
        'set -e; cd "$1"',
        'blob=$(echo evil | git hash-object -w --stdin)',
        'tree=$(printf "100644 blob %s\t.git\n" "$blob" | git mktree)',
        'c=$(git -c user.name=e -c user.email=e@e commit-tree "$tree" -p HEAD -m evil)',
        'ref=refs/banger-export/$(basename "$2" | sed "s/^banger-export-//")',
        'git update-ref "$ref" "$c"',
        'git bundle create -q "$2" "$ref" ^HEAD',
        'echo "$c"',
      ].join('\n');
      let evilCommit = '';
      hostileExec = (argv: string[]) => {
        if (!argv[2]?.includes('git bundle create')) return undefined;
        return ['/bin/sh', '-c', `${dotGit}\necho "$c" > "$1/../evil-commit"`, 'banger', evil, argv[5] as string];
      };
      await assert.rejects(svc.exportBranch('full', 'dotgit'), (e: BangerError) => e.code === 'rejected_content' && /dotgit|\.git|fsck/i.test(e.message));
      evilCommit = readFileSync(join(tmp, 'evil-commit'), 'utf8').trim();
      assert.match(evilCommit, /^[0-9a-f]{40}$/);
      assert.equal(git(host, 'for-each-ref', '--format=%(refname) %(objectname)'), refsBefore);
      assert.throws(() => git(host, 'cat-file', '-e', evilCommit), 'the refused commit is not in the host repository');
      assert.deepEqual(readdirSync(stagingDir), [], 'the quarantine is gone');
      // Too large: refused while streaming, nothing staged stays.
      hostileExec = answerWith(randomBytes(4096));
      await assert.rejects(serviceWith(1024).exportBranch('full', 'wip4'), (e: BangerError) => e.code === 'payload_too_large');
      assert.deepEqual(readdirSync(stagingDir), []);
      assert.equal(git(host, 'for-each-ref', '--format=%(refname) %(objectname)'), refsBefore);
    } finally {
      hostileExec = undefined;
    }
    // Names that would leave refs/banger/<vm>/ never reach the service.
    for (const name of ['../heads/main', 'a/b', '..', 'x.lock', '-x', 'a b']) {
      assert.equal(WorkspaceExportRequestSchema.safeParse({ format: 'branch', name }).success, false, name);
    }
    await assert.rejects(svc.exportBranch('full', '../../heads/main'), (e: BangerError) => e.code === 'bad_request');
    assert.equal(git(host, 'for-each-ref', '--format=%(refname) %(objectname)'), refsBefore);
    assert.equal(WorkspacePrepareRequestSchema.safeParse({ hostPath: 'relative/repo' }).success, false);
    assert.equal(WorkspacePrepareRequestSchema.safeParse({ hostPath: host, branch: 'b', from: '--output=/tmp/x' }).success, false);
    assert.equal(WorkspacePrepareRequestSchema.safeParse({ hostPath: host, from: 'HEAD' }).success, false, '--from needs --branch');
    for (const guestPath of ['relative', '/a/../b', '/', '/a/']) {
      assert.equal(WorkspacePrepareRequestSchema.safeParse({ hostPath: host, guestPath }).success, false, guestPath);
    }
  });

  test('a guest whose commands never finish: status and export fail with timeout and free the workspace lock', { timeout: 60_000 }, async () => {
    /** FAKE exec of a stalled guest: nothing ever finishes; only the caller's signal ends the wait. */
    const stalledExec: GuestExec = (_ref, _spec, opts) =>
      new Promise((_resolve, reject) => {
        const signal = opts?.signal;
        if (!signal) return; // what status and export did before: wait forever
        const stop = () => reject(new BangerError('cancelled', 'FAKE: stopped waiting'));
        if (signal.aborted) stop();
        else signal.addEventListener('abort', stop, { once: true });
      });
    const locks = new KeyedMutex();
    const stalled = new WorkspaceService({
      repos,
      runner: new ProcessRunner(),
      clock: { now: () => new Date() },
      locks,
      vmRow: (ref) => repos.vms.byName(ref) as NonNullable<ReturnType<Repos['vms']['byName']>>,
      guest: async () => guest,
      exec: stalledExec,
      stagingDir,
      statusDeadlineMs: 200,
      exportDeadlineMs: 200,
    });
    const timedOut = (e: BangerError) => e.code === 'timeout' && /did not finish within .* \(the guest stalled\)/.test(e.message);
    await assert.rejects(stalled.status('full'), timedOut);
    await assert.rejects(stalled.exportBranch('full', 'stalled'), timedOut);
    await assert.rejects(stalled.exportText('full', 'patch'), timedOut);
    const id = repos.vms.byName('full')?.id as string;
    assert.equal(await locks.run(`workspace:${id}`, async () => 'free'), 'free');
  });

  test('over the API: plan, prepare as an operation, status, streamed patch export, branch export, errors as JSON', async () => {
    const layout = resolveLayout({ BANGER_HOME: join(tmp, 'api-home') });
    await mkdir(layout.runtimeDir, { recursive: true });
    await chmod(layout.runtimeDir, 0o700);
    const router = new Router(pino({ level: 'silent' }));
    // A FAKE App: only the operation registry is real (the operation and event routes use nothing else); /v1/daemon answers a stub.
    const fakeApp = { ops: new OperationRegistry(), status: () => ({}) } as unknown as App;
    router.add(
      { method: 'GET', path: '/v1/daemon', handler: () => ({ ok: true }) },
      ...coreRoutes(fakeApp).filter((r) => r.path.startsWith('/v1/operations')),
      ...workspaceRoutes(fakeApp, svc),
    );
    const server = createServer((req, res) => void router.handle(req, res));
    await new Promise<void>((r) => server.listen(layout.socketPath, r));
    try {
      const client = new BangerClient({ layout, autostart: false });
      const plan = await client.planWorkspace({ hostPath: host });
      assert.equal(plan.head, git(host, 'rev-parse', 'HEAD'));
      assert.equal(plan.untrackedSkipped, 1);
      const events: OperationEvent[] = [];
      const g = guestPath('api');
      const res = await client.prepareWorkspace('api', { hostPath: host, guestPath: g }, (e) => events.push(e));
      assert.equal(res.workspace.guestPath, g);
      assert.equal(res.files, plan.files);
      assert.ok(events.some((e) => e.type === 'done' && e.operation.stages.some((st) => st.name === 'ship history')));
      writeFileSync(join(g, 'api.txt'), 'from the api test\n');
      const guestTree = worktreeTree(g, tmp);
      const status = await client.workspace('api');
      // The host's uncommitted state is the guest's too (a.txt staged and further edited: MM), plus the guest's new file.
      const byPath = Object.fromEntries(status.changes.map((c) => [c.path, c.status]));
      assert.equal(byPath['api.txt'], '??');
      assert.equal(byPath['a.txt'], 'MM');
      assert.equal(byPath['staged-del.txt'], 'D ');
      assert.equal(byPath['del.txt'], ' D');
      assert.equal(byPath['staged-new.txt'], 'A ');
      assert.equal(status.guestCommits, 0);
      const sink = new PassThrough();
      const parts: Buffer[] = [];
      sink.on('data', (b: Buffer) => parts.push(b));
      const exported = await client.exportWorkspace('api', { format: 'patch' }, sink);
      assert.equal(exported.format, 'patch');
      const p = join(tmp, 'api-apply');
      git(tmp, 'clone', '-q', '--no-local', host, p);
      git(p, 'checkout', '-q', '--detach', res.workspace.baseCommit);
      writeFileSync(join(tmp, 'api.patch'), Buffer.concat(parts));
      git(p, 'apply', '--binary', '--index', join(tmp, 'api.patch'));
      assert.equal(git(p, 'write-tree'), guestTree);
      assert.equal(git(g, 'rev-parse', `${exported.format === 'patch' ? exported.commit : ''}^{tree}`), guestTree);
      const branch = await client.exportWorkspace('api', { format: 'branch', name: 'from-api' });
      assert.equal(branch.format === 'branch' && branch.ref, 'refs/banger/api/from-api');
      assert.equal(git(host, 'rev-parse', 'refs/banger/api/from-api^{tree}'), guestTree);
      await assert.rejects(client.exportWorkspace('stopped', { format: 'patch' }, new PassThrough()), (e: BangerError) => e.code === 'conflict');
      await assert.rejects(client.workspace('shallow-nope'), (e: BangerError) => e.code === 'not_found');
      await assert.rejects(client.exportWorkspace('api', { format: 'branch', name: '../main' }), (e: BangerError) => e.code === 'bad_request');
      // The host moves on: status reports the drift against the base.
      git(host, 'commit', '-qm', 'host moved on');
      const drift = await client.workspace('api');
      assert.equal(drift.hostMoved, true);
      assert.equal(drift.hostHead, git(host, 'rev-parse', 'HEAD'));
      assert.equal(drift.hostCommitsSinceBase, 1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
