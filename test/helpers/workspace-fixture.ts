/**
 * The host repository the workspace tests ship (a submodule, a binary file, an executable bit, a
 * symlink, an ignored file, an untracked file, staged and unstaged edits, deletions, a mode
 * change), git helpers that see no global or system config, and a store with the VMs the tests name.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { migrate, openDb } from '../../src/store/db.js';
import { Repos } from '../../src/store/repos.js';
import type { OpContext } from '../../src/util/op-context.js';

// Tests see neither the machine's global git config nor its system config.
export const GIT_ENV = {
  ...process.env,
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_DATE: '2026-01-01T00:00:00Z',
  GIT_COMMITTER_DATE: '2026-01-01T00:00:00Z',
};
const ID = ['-c', 'user.name=Test', '-c', 'user.email=test@example.com', '-c', 'protocol.file.allow=always', '-c', 'init.defaultBranch=main'];

export function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', [...ID, ...args], { cwd, env: GIT_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}
export function gitEnv(cwd: string, env: Record<string, string>, ...args: string[]): string {
  return execFileSync('git', [...ID, ...args], { cwd, env: { ...GIT_ENV, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** The tree of a working tree as `git add -A` would record it, computed in a throwaway index (the way the issue says to compare). */
export function worktreeTree(repo: string, scratch: string): string {
  const idx = join(scratch, `idx-${randomBytes(4).toString('hex')}`);
  const real = join(repo, '.git', 'index');
  if (existsSync(real)) writeFileSync(idx, readFileSync(real));
  else gitEnv(repo, { GIT_INDEX_FILE: idx }, 'read-tree', 'HEAD');
  gitEnv(repo, { GIT_INDEX_FILE: idx }, 'add', '-A');
  const tree = gitEnv(repo, { GIT_INDEX_FILE: idx }, 'write-tree');
  rmSync(idx, { force: true });
  return tree;
}

/** Every path of a working tree (not .git) with its type, mode and content hash: what "unchanged" is checked against. */
export function snapshot(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(dir, rel)).sort()) {
    if (name === '.git') continue;
    const p = join(rel, name);
    const s = lstatSync(join(dir, p));
    if (s.isDirectory()) out.push(`d ${p} ${s.mode.toString(8)}`, ...snapshot(dir, p));
    else if (s.isSymbolicLink()) out.push(`l ${p} -> ${readlinkSync(join(dir, p))}`);
    else
      out.push(
        `f ${p} ${s.mode.toString(8)} ${createHash('sha256')
          .update(readFileSync(join(dir, p)))
          .digest('hex')}`,
      );
  }
  return out;
}

export function ctx(): OpContext & { stages: string[]; logs: string[] } {
  const stages: string[] = [];
  const logs: string[] = [];
  return {
    id: 'test-op',
    signal: new AbortController().signal,
    stages,
    logs,
    stage: (name) => void stages.push(name),
    progress: () => undefined,
    log: (l) => void logs.push(l),
    setTarget: () => undefined,
    checkCancelled: () => undefined,
  };
}

/** Builds the host repository (and its submodule's source) under tmp. */
export function makeHostRepo(tmp: string): { host: string; sub: string } {
  // The submodule's own repository.
  const sub = join(tmp, 'subsrc');
  mkdirSync(sub);
  git(sub, 'init', '-q');
  writeFileSync(join(sub, 'lib.txt'), 'library\n');
  git(sub, 'add', '.');
  git(sub, 'commit', '-qm', 'sub 1');
  // The host repository.
  const host = join(tmp, 'host');
  mkdirSync(host);
  git(host, 'init', '-q');
  git(host, 'config', 'user.name', 'Host Person');
  git(host, 'config', 'user.email', 'host@example.com');
  writeFileSync(join(host, 'a.txt'), 'one\ntwo\n');
  writeFileSync(join(host, 'del.txt'), 'to be deleted\n');
  writeFileSync(join(host, 'staged-del.txt'), 'to be git rm-ed\n');
  writeFileSync(join(host, 'bin.dat'), Buffer.concat([Buffer.from([0, 1, 2, 255, 0]), randomBytes(4096)]));
  writeFileSync(join(host, 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  writeFileSync(join(host, 'mode.txt'), 'becomes executable\n');
  symlinkSync('a.txt', join(host, 'link'));
  writeFileSync(join(host, '.gitignore'), 'ignored.log\n');
  mkdirSync(join(host, 'dir'));
  writeFileSync(join(host, 'dir', 'nested.txt'), 'nested\n');
  git(host, 'add', '.');
  git(host, 'submodule', 'add', '-q', sub, 'sub');
  git(host, 'commit', '-qm', 'base 1');
  writeFileSync(join(host, 'a.txt'), 'one\ntwo\nthree\n');
  git(host, 'commit', '-qam', 'base 2');
  // Uncommitted state: staged and unstaged edits, a staged new file, deletions, a mode change; an ignored and an untracked file.
  writeFileSync(join(host, 'a.txt'), 'one\ntwo\nthree\nstaged\n');
  writeFileSync(join(host, 'staged-new.txt'), 'new and staged\n');
  git(host, 'add', 'a.txt', 'staged-new.txt');
  git(host, 'rm', '-q', 'staged-del.txt');
  writeFileSync(join(host, 'a.txt'), 'one\ntwo\nthree\nstaged\nunstaged\n');
  unlinkSync(join(host, 'del.txt'));
  chmodSync(join(host, 'mode.txt'), 0o755);
  writeFileSync(join(host, 'bin.dat'), Buffer.concat([Buffer.from([9, 0, 9]), randomBytes(2048)]));
  writeFileSync(join(host, 'ignored.log'), 'never shipped\n');
  writeFileSync(join(host, 'untracked.txt'), 'only with --include-untracked\n');
  return { host, sub };
}

/** An in-memory store with one kernel, one image and the given VMs (id, name, state). */
export function storeWithVms(tmp: string, vms: ReadonlyArray<readonly [string, string, string]>): Repos {
  const db = openDb(':memory:');
  migrate(db);
  const repos = new Repos(db);
  const now = new Date('2026-01-01T00:00:00Z').toISOString();
  repos.kernels.insert({
    id: 'k1',
    name: 'k',
    version: '6.1',
    dir: tmp,
    kernel_path: 'x',
    initrd_path: null,
    modules_dir: null,
    source: 't',
    managed: 1,
    size_bytes: 0,
    created_at: now,
  });
  repos.images.insert({
    id: 'i1',
    name: 'img',
    rootfs_path: 'x',
    kernel_id: 'k1',
    managed: 1,
    has_systemd: 1,
    has_sshd: 0,
    digest: null,
    size_bytes: 0,
    source: 't',
    created_at: now,
  });
  for (const [id, name, state] of vms) {
    repos.vms.insert({
      id,
      name,
      image_id: 'i1',
      kernel_id: 'k1',
      vcpus: 1,
      memory_mib: 256,
      disk_size_bytes: 1,
      vmm: 'qemu',
      accel: null,
      state,
      handle: null,
      last_error: null,
      dir: tmp,
      created_at: now,
      started_at: null,
      touched_at: now,
      nat: 0,
      tap: null,
      transient: 0,
      root_layer: null,
      work_layer: null,
      generation: 0,
      unpublished: 0,
    });
  }
  return repos;
}
