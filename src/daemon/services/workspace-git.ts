import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError } from '../../api/errors.js';
import type { WorkspaceMode, WorkspacePlan, WorkspacePlanEntry } from '../../api/workspace-schemas.js';
import type { CommandRunner } from '../../host/runner.js';

/**
 * The host side of workspaces: what git says about the user's repository, and the pure planning
 * of what a prepare ships (docs/workspaces.md). Git runs with the repository's own config except
 * what could run code or colour output: no fsmonitor, no hooks, no external diff or textconv.
 */

/** Bounds of what one listing may print (a 10k-file repo prints ~1 MiB). */
const MAX_LISTING_BYTES = 256 * 1024 * 1024;
/** How many entries a plan lists; counts always cover every file. */
export const MAX_PLAN_ENTRIES = 100_000;

export const SAFE_GIT_CONFIG = ['-c', 'core.fsmonitor=false', '-c', 'core.hooksPath=/dev/null', '-c', 'color.ui=false'];
/** Diff output that `git apply` reads back whatever the user's diff config says. */
export const PORTABLE_DIFF = ['--no-color', '--no-ext-diff', '--no-textconv', '--src-prefix=a/', '--dst-prefix=b/', '--full-index', '--binary'];

export function gitArgs(repo: string, args: readonly string[]): string[] {
  return ['-C', repo, ...SAFE_GIT_CONFIG, ...args];
}

export async function hostGit(runner: CommandRunner, repo: string, args: readonly string[], allowFailure = false) {
  return runner.run('git', gitArgs(repo, args), {
    maxOutputBytes: MAX_LISTING_BYTES,
    allowFailure,
    neededFor: 'workspaces read the host repository with git',
    env: { ...process.env, GIT_OPTIONAL_LOCKS: '0', GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C' },
  });
}

export const splitZ = (s: string): string[] => s.split('\0').filter((x) => x !== '');

/**
 * `git for-each-ref --format='%(objectname) %(refname)' refs/heads refs/tags`: [id, ref] pairs
 * for the guest's `git update-ref --stdin` (one line each, so a ref name can hold no whitespace:
 * git's own ref-name rules forbid it, and a line that breaks them is an error, never passed on).
 */
export function parseRefListing(out: string): Array<[string, string]> {
  const refs: Array<[string, string]> = [];
  for (const line of out.split('\n')) {
    if (line === '') continue;
    const m = /^([0-9a-f]{40}|[0-9a-f]{64}) (refs\/(?:heads|tags)\/[^\s\x00-\x1f\x7f]+)$/.exec(line);
    if (!m) throw new BangerError('internal', `unexpected git for-each-ref line: ${JSON.stringify(line.slice(0, 200))}`);
    refs.push([m[1] as string, m[2] as string]);
  }
  return refs;
}

export interface IndexEntry {
  mode: string;
  object: string;
  stage: number;
  path: string;
}

/** `git ls-files -s -z`: "MODE OBJECT STAGE\tPATH\0"… */
export function parseStageListing(out: string): IndexEntry[] {
  const entries: IndexEntry[] = [];
  for (const rec of splitZ(out)) {
    const tab = rec.indexOf('\t');
    const [mode, object, stage] = rec.slice(0, tab).split(' ');
    if (tab < 0 || !mode || !object || stage === undefined) throw new BangerError('internal', `unexpected git ls-files line: ${rec.slice(0, 200)}`);
    entries.push({ mode, object, stage: Number(stage), path: rec.slice(tab + 1) });
  }
  return entries;
}

/** `git diff --name-status -z --no-renames`: "STATUS\0PATH\0"… */
export function parseNameStatus(out: string): Array<{ status: string; path: string }> {
  const parts = out.split('\0');
  const res: Array<{ status: string; path: string }> = [];
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const status = parts[i] as string;
    const path = parts[i + 1] as string;
    if (status === '') break;
    res.push({ status: status.slice(0, 1), path });
  }
  return res;
}

export interface PlanInputs {
  top: string;
  head: string;
  branch: string | null;
  mode: WorkspaceMode;
  includeUntracked: boolean;
  /** The index (ls-files -s). */
  index: IndexEntry[];
  /** Working tree against HEAD (diff --name-status HEAD, submodules ignored). */
  changes: Array<{ status: string; path: string }>;
  untracked: string[];
  /** lstat sizes of the paths present in the working tree; a missing one counts 0. */
  sizeOf: (path: string) => number;
}

/** What a prepare of one repository ships (submodules are planned by the caller, each on its own). */
export interface RepoPlan {
  plan: WorkspacePlan;
  /** Paths to copy over the checkout of HEAD: uncommitted content and chosen untracked files. */
  overlay: string[];
  /** Submodules (gitlinks in the index) in path order. */
  gitlinks: IndexEntry[];
}

/**
 * Pure: the files a guest working tree will hold once prepared. Tracked = the index's paths
 * (staged additions included) minus what the working tree deleted; the overlay = what differs from
 * HEAD plus untracked files when asked; ignored files never appear (git lists none of them).
 */
export function assemblePlan(i: PlanInputs): RepoPlan {
  const deleted = new Set(i.changes.filter((c) => c.status === 'D').map((c) => c.path));
  const changed = new Map(i.changes.filter((c) => c.status !== 'D').map((c) => [c.path, c.status]));
  const gitlinks: IndexEntry[] = [];
  const entries: WorkspacePlanEntry[] = [];
  const seen = new Set<string>();
  let files = 0;
  let bytes = 0;
  const add = (path: string, kind: WorkspacePlanEntry['kind']) => {
    const size = i.sizeOf(path);
    files++;
    bytes += size;
    if (entries.length < MAX_PLAN_ENTRIES) entries.push({ path, kind, size });
  };
  for (const e of i.index) {
    if (seen.has(e.path)) continue; // a conflicted path has several stages: one file
    seen.add(e.path);
    if (e.mode === '160000') {
      gitlinks.push(e);
      continue;
    }
    if (deleted.has(e.path)) continue;
    const status = changed.get(e.path);
    add(e.path, status === undefined ? 'tracked' : status === 'A' ? 'added' : status === 'T' ? 'typechange' : 'modified');
  }
  // Untracked entries that name a directory ("dir/") are nested repositories that are not submodules: never shipped.
  const untracked = i.untracked.filter((p) => !p.endsWith('/') && !seen.has(p));
  if (i.includeUntracked) for (const p of untracked) add(p, 'untracked');
  const overlay = [...changed.keys()].filter((p) => seen.has(p));
  if (i.includeUntracked) overlay.push(...untracked);
  return {
    plan: {
      hostPath: i.top,
      head: i.head,
      branch: i.branch,
      mode: i.mode,
      files,
      bytes,
      deleted: [...deleted].sort(),
      untrackedSkipped: i.includeUntracked ? 0 : untracked.length,
      entries,
      entriesTruncated: files > entries.length,
      submodules: [],
    },
    overlay,
    gitlinks,
  };
}

/** Top level, HEAD and branch of the repository holding `path`; a clear error when it is none. */
export async function repoHead(runner: CommandRunner, path: string): Promise<{ top: string; head: string; branch: string | null }> {
  const top = await hostGit(runner, path, ['rev-parse', '--show-toplevel'], true);
  if (top.code !== 0) {
    throw new BangerError('bad_request', `${path} is not inside a git repository (${top.stderr.trim().split('\n').pop()})`, {
      fix: 'give the path of a git working tree (git init; git commit) or run from inside one',
    });
  }
  const dir = top.stdout.trim();
  const head = await hostGit(runner, dir, ['rev-parse', '--verify', '-q', 'HEAD^{commit}'], true);
  if (head.code !== 0) throw new BangerError('bad_request', `the repository at ${dir} has no commit yet`, { fix: 'commit once (git commit), then prepare' });
  const branch = await hostGit(runner, dir, ['symbolic-ref', '-q', '--short', 'HEAD'], true);
  return { top: dir, head: head.stdout.trim(), branch: branch.code === 0 ? branch.stdout.trim() || null : null };
}

export interface HostRepoPlan extends RepoPlan {
  submodulePlans: Array<{ entry: IndexEntry; host: string; plan: HostRepoPlan | null }>;
}

/** Plans one repository and, recursively, its initialised submodules (depth-bounded). */
export async function planRepo(runner: CommandRunner, path: string, mode: WorkspaceMode, includeUntracked: boolean, depth = 0): Promise<HostRepoPlan> {
  const { top, head, branch } = await repoHead(runner, path);
  const [index, changes, untracked] = await Promise.all([
    hostGit(runner, top, ['ls-files', '-s', '-z']),
    hostGit(runner, top, ['diff', '--name-status', '-z', '--no-renames', '--ignore-submodules=all', 'HEAD', '--']),
    hostGit(runner, top, ['ls-files', '-z', '--others', '--exclude-standard']),
  ]);
  const indexEntries = parseStageListing(index.stdout);
  const changeList = parseNameStatus(changes.stdout);
  const untrackedList = splitZ(untracked.stdout);
  const sizes = new Map<string, number>();
  const deleted = new Set(changeList.filter((c) => c.status === 'D').map((c) => c.path));
  const present = [...indexEntries.filter((e) => e.mode !== '160000' && !deleted.has(e.path)).map((e) => e.path), ...untrackedList];
  for (const p of present) {
    const s = await lstat(join(top, p)).catch(() => undefined);
    sizes.set(p, s && (s.isFile() || s.isSymbolicLink()) ? s.size : 0);
  }
  const repo = assemblePlan({
    top,
    head,
    branch,
    mode,
    includeUntracked,
    index: indexEntries,
    changes: changeList,
    untracked: untrackedList,
    sizeOf: (p) => sizes.get(p) ?? 0,
  });
  const submodulePlans: HostRepoPlan['submodulePlans'] = [];
  for (const entry of repo.gitlinks) {
    const host = join(top, entry.path);
    const initialized =
      depth < 8 &&
      (await lstat(join(host, '.git')).then(
        () => true,
        () => false,
      ));
    const plan = initialized ? await planRepo(runner, host, mode, includeUntracked, depth + 1) : null;
    submodulePlans.push({ entry, host, plan });
    repo.plan.submodules.push({ path: entry.path, commit: entry.object, initialized, plan: plan?.plan ?? null });
    if (plan) {
      repo.plan.files += plan.plan.files;
      repo.plan.bytes += plan.plan.bytes;
      repo.plan.untrackedSkipped += plan.plan.untrackedSkipped;
    }
  }
  return { ...repo, submodulePlans };
}
