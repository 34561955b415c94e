import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BangerError } from '../../api/errors.js';
import type {
  WorkspaceBranchExport,
  WorkspaceExportFormat,
  WorkspacePlan,
  WorkspacePlanRequest,
  WorkspacePrepareRequest,
  WorkspacePrepareResult,
  WorkspaceRecord,
  WorkspaceStatus,
} from '../../api/workspace-schemas.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import type { CommandRunner, SpawnedCommand } from '../../host/runner.js';
import type { Repos, VmRow, WorkspaceRow } from '../../store/repos.js';
import { deadline } from '../../util/deadline.js';
import { formatDuration } from '../../util/duration.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import { gitArgs, type HostRepoPlan, hostGit, PORTABLE_DIFF, parseRefListing, planRepo, SAFE_GIT_CONFIG } from './workspace-git.js';

/** No background gc or maintenance left running in a repository after banger's fetch. */
const NO_MAINTENANCE = ['-c', 'gc.auto=0', '-c', 'maintenance.auto=false'];
/**
 * Packs for a guest on the same host: objects already packed keep their deltas (reused as they
 * are), but no new delta search and only light compression for loose ones. The delta search is
 * what dominated a 10k-file / 200 MB prepare (33 s of the host's CPU for the bundle; 1.6 s
 * without), for a transfer that crosses no network.
 */
const FAST_PACK = ['-c', 'pack.window=0', '-c', 'pack.compression=1'];
/** A fetch of exactly the refspec given: no tags, no FETCH_HEAD, no submodules. */
const ONE_REF_FETCH = ['fetch', '-q', '--no-tags', '--no-write-fetch-head', '--no-recurse-submodules'];

/** What a guest command answered (the shape of ProcessService.exec's result). */
/** Bound of `workspace status`'s guest commands (a request with no operation to cancel it). */
export const STATUS_GUEST_MS = 2 * 60_000;
/** Bound of an export's guest side (script, and the bundle's read under the workspace lock). */
export const EXPORT_GUEST_MS = 10 * 60_000;

/**
 * Runs `fn` with a signal that aborts after `ms`: a guest that stalls cannot hold a request, or
 * the workspace lock, forever. An abort by that deadline is a `timeout` naming `what`.
 */
async function withDeadline<T>(ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const { signal, clear } = deadline(ms);
  try {
    return await fn(signal);
  } catch (e) {
    if (!signal.aborted) throw e;
    throw new BangerError('timeout', `${what} did not finish within ${formatDuration(ms)} (the guest stalled)`, {
      fix: 'check the VM with `banger vm health` and `banger vm logs`, then retry',
      cause: e,
    });
  } finally {
    clear();
  }
}

export interface GuestExecResult {
  exitCode: number | null;
  /** Name of the signal that ended the command. */
  signal: string | null;
  stdout: string;
  stderr: string;
  truncated: boolean;
}
/** Runs a command in a VM's guest and waits for it (ProcessService.exec). */
export type GuestExec = (
  ref: string,
  spec: { argv: string[]; cwd?: string; env?: string[] },
  opts?: { maxBuffer?: number; signal?: AbortSignal },
) => Promise<{ proc: { id: string }; result: GuestExecResult }>;

export interface WorkspaceServiceDeps {
  repos: Repos;
  runner: CommandRunner;
  clock: Clock;
  locks: KeyedMutex;
  /** The VM's row by user ref (VmService.row): not_found / ambiguous errors come from there. */
  vmRow: (ref: string) => VmRow;
  guest: (ref: string) => Promise<GuestChannel>;
  exec: GuestExec;
  /** A daemon-private directory for packs on their way to guests and bundles read back from them. */
  stagingDir: string;
  /** Cap on a guest's branch bundle (hostile data, staged on the host's disk). */
  maxBundleBytes?: number;
  /** Bounds of the guest's side of status and export (default STATUS_GUEST_MS, EXPORT_GUEST_MS; tests shorten them). */
  statusDeadlineMs?: number;
  exportDeadlineMs?: number;
}

const DEFAULT_MAX_BUNDLE_BYTES = 4 * 1024 * 1024 * 1024;
const STATUS_CHANGES_SHOWN = 1000;
const BUNDLE_SIGNATURES = ['# v2 git bundle\n', '# v3 git bundle\n'];
const EXPORT_MESSAGE = 'banger: uncommitted changes in the guest workspace';

/**
 * The guest half of export, run by /bin/sh in the workspace: the guest's work as one commit C on
 * top of HEAD, computed in a temporary index (a copy of the real one, so nothing the guest staged
 * or left unstaged is lost) — the guest's own index and working tree are never written. Then the
 * chosen format of base..C into $OUT (inside .git, not the working tree). Prints C.
 */
const EXPORT_SCRIPT = `set -eu
base=$1 out=$2 format=$3 ref=$4
tmp=$(mktemp -d "\${TMPDIR:-/tmp}/banger-export.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
gitdir=$(git rev-parse --absolute-git-dir)
if [ -f "$gitdir/index" ]; then cp "$gitdir/index" "$tmp/index"; fi
export GIT_INDEX_FILE="$tmp/index"
[ -f "$tmp/index" ] || git read-tree HEAD
git add -A
tree=$(git write-tree)
head=$(git rev-parse --verify HEAD^{commit})
git config user.name >/dev/null || export GIT_AUTHOR_NAME=banger GIT_COMMITTER_NAME=banger
git config user.email >/dev/null || export GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_EMAIL=banger@localhost
if [ "$tree" = "$(git rev-parse "$head^{tree}")" ]; then c=$head; else c=$(git commit-tree "$tree" -p "$head" -m "${EXPORT_MESSAGE}"); fi
unset GIT_INDEX_FILE
case $format in
patch) git -c color.ui=false diff ${PORTABLE_DIFF.join(' ')} "$base" "$c" -- >"$out" ;;
commits) git -c color.ui=false format-patch --stdout ${PORTABLE_DIFF.join(' ')} "$base..$c" -- >"$out" ;;
branch) if [ "$c" != "$base" ]; then git update-ref "$ref" "$c"; git bundle create -q "$out" "$ref" "^$base" || { git update-ref -d "$ref"; exit 1; }; git update-ref -d "$ref"; fi ;;
esac
echo "$c"
`;

export function workspaceRecordOf(r: WorkspaceRow | undefined): WorkspaceRecord | null {
  return r
    ? {
        hostPath: r.host_path,
        guestPath: r.guest_path,
        baseCommit: r.base_commit,
        mode: r.mode as WorkspaceRecord['mode'],
        branch: r.branch,
        preparedAt: r.prepared_at,
      }
    : null;
}

const DELETE_SCRIPT = 'xargs -0 rm -f -- <"$1"';

function shellArgv(script: string, ...args: string[]): string[] {
  return ['/bin/sh', '-c', script, 'banger', ...args];
}

/** Counts bytes on their way through (progress) without holding them. */
function counter(onBytes: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
}

/** Collects at most `max` bytes of a stream (stderr of a host tool), draining the rest. */
function capture(stream: Readable | null, max = 16 * 1024): () => string {
  const parts: Buffer[] = [];
  let n = 0;
  stream?.on('data', (b: Buffer) => {
    if (n < max) parts.push(b.subarray(0, max - n));
    n += b.length;
  });
  return () => Buffer.concat(parts).toString('utf8');
}

async function finished(cmd: SpawnedCommand<'pipe' | 'ignore', 'pipe', 'pipe'>, what: string, stderr: () => string): Promise<void> {
  const st = await cmd.done;
  if (st.code !== 0) throw new BangerError('host_command_failed', `${what} failed (${st.signal ?? st.code}): ${stderr().trim().slice(-500)}`);
}

/**
 * Waits for a host→guest stream to finish; when any side fails, the host commands still running
 * are killed (one blocked writing into a pipe nobody reads any more would otherwise stay forever)
 * and every side is let settle before the error goes up (to the cleanup).
 */
async function streamed<T extends unknown[]>(
  commands: Array<{ kill(signal?: NodeJS.Signals): void }>,
  work: [...{ [K in keyof T]: Promise<T[K]> }],
): Promise<T> {
  try {
    return (await Promise.all(work)) as T;
  } catch (e) {
    for (const c of commands) c.kill('SIGKILL');
    // The guest side ends too once the killed command's output closes (or the operation's signal
    // aborts it): wait, so no write lands in the staging directory after it was removed.
    await Promise.allSettled(work);
    throw e;
  }
}

/**
 * Git workspaces: a host repository shipped into a running guest (history as a git bundle or a
 * depth-1 pack, the uncommitted state on top, streamed through the guest channel), its status,
 * and the guest's work brought back as a patch, a patch series or a branch (docs/workspaces.md).
 */
export class WorkspaceService {
  private readonly maxBundleBytes: number;

  constructor(private readonly d: WorkspaceServiceDeps) {
    this.maxBundleBytes = d.maxBundleBytes ?? DEFAULT_MAX_BUNDLE_BYTES;
  }

  /** What a prepare would ship: no VM involved (`vm workspace prepare --dry-run`). */
  async plan(req: Required<WorkspacePlanRequest>): Promise<WorkspacePlan> {
    return (await planRepo(this.d.runner, req.hostPath, req.mode, req.includeUntracked)).plan;
  }

  record(vmId: string): WorkspaceRecord | null {
    return workspaceRecordOf(this.d.repos.workspaces.byVm(vmId));
  }

  private running(ref: string): VmRow {
    const row = this.d.vmRow(ref);
    if (row.state !== 'running') throw new BangerError('conflict', `VM ${row.name} is ${row.state}, not running`, { fix: `banger vm start ${row.name}` });
    return row;
  }

  private recorded(row: VmRow): WorkspaceRecord {
    const ws = this.record(row.id);
    if (!ws) throw new BangerError('not_found', `VM ${row.name} has no workspace`, { fix: `banger vm workspace prepare ${row.name} PATH` });
    return ws;
  }

  /** Runs a command in the guest; a failure is an error naming it, unless allowFailure. */
  private async g(
    ref: string,
    argv: string[],
    opts: { cwd?: string; allowFailure?: boolean; what?: string; signal?: AbortSignal } = {},
  ): Promise<GuestExecResult> {
    const { proc, result } = await this.d.exec(
      ref,
      { argv, ...(opts.cwd ? { cwd: opts.cwd } : {}) },
      { maxBuffer: 8 * 1024 * 1024, ...(opts.signal ? { signal: opts.signal } : {}) },
    );
    // The guest keeps at most 256 process directories: a prepare's dozens of git steps leave none behind.
    await (await this.d.guest(ref)).forgetProcess(proc.id).catch(() => undefined);
    if (!opts.allowFailure && result.exitCode !== 0) {
      const what = opts.what ?? argv.filter((a) => !a.includes('\n')).join(' ');
      throw new BangerError(
        'guest_command_failed',
        `in the guest, ${what} failed (${result.signal ? `signal ${result.signal}` : `exit ${result.exitCode}`}): ${result.stderr.trim().slice(-800)}`,
      );
    }
    return result;
  }

  // ---- prepare ---------------------------------------------------------------------------

  async prepare(ref: string, input: WorkspacePrepareRequest, ctx: OpContext): Promise<WorkspacePrepareResult> {
    const req = { guestPath: '/root/repo', mode: 'full' as const, includeUntracked: false, ...input };
    const row = this.running(ref);
    ctx.setTarget(row.name);
    return this.d.locks.run(`workspace:${row.id}`, async () => {
      ctx.stage('plan', req.hostPath);
      const plan = await planRepo(this.d.runner, req.hostPath, req.mode, req.includeUntracked);
      const top = plan.plan.hostPath;
      let base = plan.plan.head;
      if (req.branch !== undefined) {
        const ok = await hostGit(this.d.runner, top, ['check-ref-format', '--branch', req.branch], true);
        if (ok.code !== 0) throw new BangerError('bad_request', `"${req.branch}" is not a valid branch name`, { fix: 'see git check-ref-format' });
      }
      if (req.from !== undefined) {
        if (req.from.startsWith('-')) throw new BangerError('bad_request', `--from ${req.from} is not a revision`);
        const from = await hostGit(this.d.runner, top, ['rev-parse', '--verify', '-q', `${req.from}^{commit}`], true);
        if (from.code !== 0) throw new BangerError('bad_request', `--from ${req.from} is not a commit of ${top}`);
        base = from.stdout.trim();
        if (req.mode === 'shallow' && base !== plan.plan.head) {
          throw new BangerError('bad_request', `--from ${req.from} is not HEAD: a shallow workspace holds only HEAD's commit`, { fix: 'use --mode full' });
        }
      }
      ctx.log(`shipping ${plan.plan.files} files (${plan.plan.bytes} bytes) from ${top} at ${plan.plan.head.slice(0, 12)}`);
      if (plan.plan.untrackedSkipped > 0) ctx.log(`${plan.plan.untrackedSkipped} untracked files skipped (--include-untracked ships them)`);

      ctx.stage('check guest');
      const ch = await this.d.guest(row.name);
      await this.g(row.name, ['git', '--version'], { what: 'git --version' }).catch((e: BangerError) => {
        throw new BangerError('precondition_failed', `the guest has no usable git: ${e.message}`, {
          fix: 'use an image with git installed (or install it in the VM)',
        });
      });
      const exists = await ch.stat(req.guestPath).then(
        () => true,
        () => false,
      );
      if (exists) {
        throw new BangerError('conflict', `${req.guestPath} already exists in ${row.name}`, {
          fix: `choose another --guest-path, or remove it first (banger vm exec ${row.name} -- rm -rf ${req.guestPath})`,
        });
      }
      // Built beside the target, then renamed: a failed prepare leaves no half repository at guestPath.
      const parent = posix.dirname(req.guestPath);
      const staging = posix.join(parent, `.${posix.basename(req.guestPath)}.banger-${randomBytes(4).toString('hex')}`);
      await ch.mkdir(parent, { parents: true, mode: 0o755 });
      let sent = 0;
      const onBytes = (n: number) => {
        sent += n;
        ctx.progress(sent, undefined, 'bytes');
      };
      try {
        await this.shipRepo(row.name, ch, plan, staging, req.mode, ctx, onBytes, '');
        ctx.stage('finish');
        const identity = await this.identity(top);
        for (const [k, v] of identity) await this.g(row.name, ['git', 'config', '--', k, v], { cwd: staging });
        if (req.branch !== undefined) await this.g(row.name, ['git', 'checkout', '-q', '-b', req.branch, base], { cwd: staging });
        ctx.checkCancelled();
        await ch.move(staging, req.guestPath);
      } catch (e) {
        await ch.remove(staging, { recursive: true }).catch(() => undefined);
        throw e;
      }
      const ws: WorkspaceRecord = {
        hostPath: top,
        guestPath: req.guestPath,
        baseCommit: base,
        mode: req.mode,
        branch: req.branch ?? null,
        preparedAt: this.d.clock.now().toISOString(),
      };
      this.d.repos.workspaces.upsert({
        vm_id: row.id,
        host_path: ws.hostPath,
        guest_path: ws.guestPath,
        base_commit: ws.baseCommit,
        mode: ws.mode,
        branch: ws.branch,
        prepared_at: ws.preparedAt,
      });
      return { workspace: ws, untrackedSkipped: plan.plan.untrackedSkipped, files: plan.plan.files, bytes: plan.plan.bytes };
    });
  }

  /** The host repository's own (repo-level) identity, for the guest workspace's .git/config. */
  private async identity(top: string): Promise<Array<[string, string]>> {
    const out: Array<[string, string]> = [];
    for (const key of ['user.name', 'user.email']) {
      const r = await hostGit(this.d.runner, top, ['config', '--local', '--get', key], true);
      const v = r.stdout.trim();
      if (r.code === 0 && v && !v.includes('\n') && v.length < 512) out.push([key, v]);
    }
    return out;
  }

  /** One repository into guest directory `dir`: history, checkout of HEAD, staged state, working tree, submodules. */
  private async shipRepo(
    vm: string,
    ch: GuestChannel,
    plan: HostRepoPlan,
    dir: string,
    mode: 'full' | 'shallow',
    ctx: OpContext,
    onBytes: (n: number) => void,
    label: string,
  ): Promise<void> {
    const top = plan.plan.hostPath;
    const head = plan.plan.head;
    const gitDir = `${dir}/.git`;
    ctx.stage(`ship history${label}`, mode);
    await this.g(vm, ['git', 'init', '-q', '--', dir], { signal: ctx.signal });
    // The objects as one pack with its index, both written by the host's pack-objects (it knows
    // every object id already) and copied into the guest's object store as they are: the guest
    // hashes nothing (index-pack under TCG cost as much as shipping the tree). Then the refs.
    await mkdir(this.d.stagingDir, { recursive: true, mode: 0o700 });
    const packDir = await mkdtemp(join(this.d.stagingDir, 'pack-'));
    let refs: Array<[string, string]>;
    // No await between spawning rev-list and piping its output on: Node drops the unread output of
    // a child that has exited (a small listing is all out before the next tick).
    try {
      let revs: SpawnedCommand<'pipe' | 'ignore', 'pipe', 'pipe'>;
      if (mode === 'full') {
        // HEAD, branches and tags, with their ids: every commit the host has on them.
        const listing = await hostGit(this.d.runner, top, ['for-each-ref', '--format=%(objectname) %(refname)', 'refs/heads', 'refs/tags']);
        refs = parseRefListing(listing.stdout);
        const all = this.d.runner.spawn('git', gitArgs(top, ['rev-list', '--objects', '--stdin']), { signal: ctx.signal });
        all.stdin.end([head, ...refs.map(([id]) => id)].map((id) => `${id}\n`).join(''));
        revs = all;
      } else {
        // Depth 1: HEAD's commit and its tree, and .git/shallow naming the commit (its parents are not there).
        refs = plan.plan.branch ? [[head, `refs/heads/${plan.plan.branch}`]] : [];
        revs = this.d.runner.spawn('git', gitArgs(top, ['rev-list', '--objects', '-n', '1', head]), { stdin: 'ignore', signal: ctx.signal });
      }
      const pack = this.d.runner.spawn('git', gitArgs(top, [...FAST_PACK, 'pack-objects', '-q', join(packDir, 'p')]), { signal: ctx.signal });
      const revErr = capture(revs.stderr);
      const packErr = capture(pack.stderr);
      const packOut = capture(pack.stdout);
      await streamed([revs, pack], [pipeline(revs.stdout, pack.stdin), finished(revs, 'git rev-list', revErr), finished(pack, 'git pack-objects', packErr)]);
      const name = packOut().trim();
      if (!/^[0-9a-f]{40}$|^[0-9a-f]{64}$/.test(name))
        throw new BangerError('host_command_failed', `git pack-objects named its pack ${JSON.stringify(name.slice(0, 80))}`);
      // The pack before its index: git uses a pack only once its .idx is there.
      for (const ext of ['pack', 'idx']) {
        const local = createReadStream(join(packDir, `p-${name}.${ext}`));
        try {
          await ch.writeFile(`${gitDir}/objects/pack/pack-${name}.${ext}`, local.pipe(counter(onBytes)), {
            mode: 0o444,
            mkdirs: false,
            signal: ctx.signal,
          });
        } finally {
          local.destroy(); // a failed write leaves no descriptor holding the removed pack's space
        }
      }
    } finally {
      await rm(packDir, { recursive: true, force: true });
    }
    if (mode === 'shallow') {
      await ch.writeFile(`${gitDir}/shallow`, Readable.from([Buffer.from(`${head}\n`)]), { mode: 0o644, mkdirs: false, signal: ctx.signal });
    }
    if (refs.length > 0) {
      const updates = refs.map(([id, name]) => `create ${name} ${id}\n`).join('');
      await ch.pipeIn(['git', 'update-ref', '--stdin'], dir, Readable.from([Buffer.from(updates)]), { signal: ctx.signal });
    }
    if (plan.plan.branch) await this.g(vm, ['git', 'symbolic-ref', 'HEAD', `refs/heads/${plan.plan.branch}`], { cwd: dir });
    else await this.g(vm, ['git', 'update-ref', '--no-deref', 'HEAD', head], { cwd: dir });
    ctx.stage(`check out${label}`, head.slice(0, 12));
    // Parallel checkout (git >= 2.32, one worker per CPU; older git ignores the key): the checkout is most of a large prepare.
    await this.g(vm, ['git', '-c', 'checkout.workers=0', 'reset', '-q', '--hard', 'HEAD'], { cwd: dir, signal: ctx.signal });

    ctx.stage(`ship changes${label}`, `${plan.overlay.length} changed, ${plan.plan.deleted.length} deleted`);
    // Staged changes: the host's index against HEAD as a binary patch, applied to the guest's index only.
    const staged = this.d.runner.spawn('git', gitArgs(top, ['diff', '--cached', ...PORTABLE_DIFF, '--no-renames', '--ignore-submodules=all', 'HEAD', '--']), {
      stdin: 'ignore',
      signal: ctx.signal,
    });
    const stagedErr = capture(staged.stderr);
    const patchPath = `${gitDir}/banger-staged.patch`;
    const [written] = await streamed(
      [staged],
      [
        ch.writeFile(patchPath, staged.stdout.pipe(counter(onBytes)), { mode: 0o600, mkdirs: false, signal: ctx.signal }),
        finished(staged, 'git diff --cached', stagedErr),
      ],
    );
    if (written.size > 0) await this.g(vm, ['git', 'apply', '--cached', '--binary', patchPath], { cwd: dir, signal: ctx.signal });
    await this.g(vm, ['rm', '-f', '--', patchPath]);
    // The working tree: every path that differs from HEAD (and chosen untracked files) as one tar stream.
    if (plan.overlay.length > 0) {
      const tar = this.d.runner.spawn('tar', ['-c', '-f', '-', '-C', top, '--no-recursion', '--null', '-T', '-'], {
        signal: ctx.signal,
        neededFor: 'workspaces ship the working tree',
      });
      const tarErr = capture(tar.stderr);
      tar.stdin.end(Buffer.from(plan.overlay.map((p) => `${p}\0`).join('')));
      await streamed([tar], [ch.tarIn(dir, tar.stdout.pipe(counter(onBytes)), { signal: ctx.signal }), finished(tar, 'tar of the working tree', tarErr)]);
    }
    if (plan.plan.deleted.length > 0) {
      const listPath = `${gitDir}/banger-deleted`;
      await ch.writeFile(listPath, Readable.from([Buffer.from(plan.plan.deleted.map((p) => `${p}\0`).join(''))]), {
        mode: 0o600,
        mkdirs: false,
        signal: ctx.signal,
      });
      await this.g(vm, shellArgv(DELETE_SCRIPT, listPath), { cwd: dir, what: 'removing deleted files' });
      await this.g(vm, ['rm', '-f', '--', listPath]);
    }
    await this.g(vm, ['git', 'update-index', '-q', '--refresh'], { cwd: dir, allowFailure: true });
    for (const sub of plan.submodulePlans) {
      if (!sub.plan) continue;
      await this.shipRepo(vm, ch, sub.plan, `${dir}/${sub.entry.path}`, mode, ctx, onBytes, `${label} (${sub.entry.path})`);
    }
  }

  // ---- status ----------------------------------------------------------------------------

  async status(ref: string): Promise<WorkspaceStatus> {
    const row = this.running(ref);
    const ws = this.recorded(row);
    const cwd = ws.guestPath;
    const { head, count, st } = await withDeadline(this.d.statusDeadlineMs ?? STATUS_GUEST_MS, `workspace status of ${row.name}`, async (signal) => ({
      head: (await this.g(row.name, ['git', 'rev-parse', '--verify', 'HEAD^{commit}'], { cwd, signal })).stdout.trim(),
      count: await this.g(row.name, ['git', 'rev-list', '--count', `${ws.baseCommit}..HEAD`], { cwd, allowFailure: true, signal }),
      st: await this.g(row.name, ['git', '--no-optional-locks', 'status', '--porcelain=v1', '-z', '--no-renames', '--untracked-files=all'], {
        cwd,
        signal,
      }),
    }));
    const records = st.stdout.split('\0').filter((x) => x.length > 3);
    const changes = records.slice(0, STATUS_CHANGES_SHOWN).map((r) => ({ status: r.slice(0, 2), path: r.slice(3) }));
    let hostHead: string | null = null;
    let hostCommitsSinceBase: number | null = null;
    const h = await hostGit(this.d.runner, ws.hostPath, ['rev-parse', '--verify', '-q', 'HEAD^{commit}'], true).catch(() => undefined);
    if (h?.code === 0) {
      hostHead = h.stdout.trim();
      const n = await hostGit(this.d.runner, ws.hostPath, ['rev-list', '--count', `${ws.baseCommit}..HEAD`], true);
      const anc = await hostGit(this.d.runner, ws.hostPath, ['merge-base', '--is-ancestor', ws.baseCommit, 'HEAD'], true);
      if (n.code === 0 && anc.code === 0) hostCommitsSinceBase = Number(n.stdout.trim());
    }
    const guestCommits = Number(count.stdout.trim());
    return {
      workspace: ws,
      guestHead: head,
      guestCommits: count.exitCode === 0 && Number.isFinite(guestCommits) ? guestCommits : 0,
      changes,
      changesTotal: records.length,
      hostHead,
      hostMoved: hostHead !== null && hostHead !== ws.baseCommit,
      hostCommitsSinceBase,
    };
  }

  // ---- export ----------------------------------------------------------------------------

  /** Runs the export script in the guest; answers the commit C and the guest file holding the format's output. */
  private async exportInGuest(
    vmName: string,
    ws: WorkspaceRecord,
    format: WorkspaceExportFormat,
    signal: AbortSignal,
  ): Promise<{ commit: string; file: string }> {
    const gitDir = (await this.g(vmName, ['git', 'rev-parse', '--absolute-git-dir'], { cwd: ws.guestPath, signal })).stdout.trim();
    if (!gitDir.startsWith('/') || gitDir.includes('\n')) throw new BangerError('guest_command_failed', 'the guest answered an unusable git dir');
    const id = randomBytes(6).toString('hex');
    const file = `${gitDir}/banger-export-${id}`;
    const r = await this.g(vmName, shellArgv(EXPORT_SCRIPT, ws.baseCommit, file, format, `refs/banger-export/${id}`), {
      cwd: ws.guestPath,
      what: `export (${format})`,
      signal,
    });
    const commit = r.stdout.trim().split('\n').pop() ?? '';
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(commit)) throw new BangerError('guest_command_failed', 'the guest answered no commit id for its work');
    return { commit, file: format === 'branch' && commit === ws.baseCommit ? '' : file };
  }

  /**
   * patch/commits: the text as a stream (guest → daemon → client, never whole in memory). `done`
   * settles after the stream ended and the guest's temporary file is gone.
   */
  async exportText(ref: string, format: 'patch' | 'commits'): Promise<{ commit: string; stream: Readable; done: Promise<void> }> {
    const row = this.running(ref);
    const ws = this.recorded(row);
    const { commit, file } = await withDeadline(this.d.exportDeadlineMs ?? EXPORT_GUEST_MS, `workspace export of ${row.name}`, (signal) =>
      this.exportInGuest(row.name, ws, format, signal),
    );
    const ch = await this.d.guest(row.name);
    // Streamed at the client's pace (no deadline); a guest that stalls is ended by the data channel's idle timeout.
    const read = await ch.readFile(file);
    read.done.catch(() => undefined); // awaited below; an early stream error must not be unhandled
    const out = new PassThrough();
    const done = pipeline(read.stream, out)
      .then(() => read.done)
      .then(() => undefined)
      .finally(() => ch.remove(file).catch(() => undefined));
    done.catch(() => undefined);
    return { commit, stream: out, done };
  }

  /**
   * branch: the guest's bundle of base..C, staged in the daemon's directory (bounded), checked,
   * and fetched into the host repository as refs/banger/<vm>/<name> with every object fsck'ed.
   * The destination is computed here; nothing the guest names becomes a ref or a path.
   */
  async exportBranch(ref: string, name: string): Promise<WorkspaceBranchExport> {
    const row = this.running(ref);
    const ws = this.recorded(row);
    const target = `refs/banger/${row.name}/${name}`;
    const valid = await hostGit(this.d.runner, ws.hostPath, ['check-ref-format', target], true);
    if (valid.code !== 0 || !target.startsWith(`refs/banger/${row.name}/`) || name.includes('/')) {
      throw new BangerError('bad_request', `${target} is not a valid ref name`, { fix: 'use --name with letters, digits, ".", "_" and "-"' });
    }
    // Under the workspace lock: the guest's side is bounded as a whole.
    return this.d.locks.run(`workspace:${row.id}`, () =>
      withDeadline(this.d.exportDeadlineMs ?? EXPORT_GUEST_MS, `workspace export of ${row.name}`, (signal) => this.exportBranchLocked(row, ws, target, signal)),
    );
  }

  private async exportBranchLocked(
    row: { id: string; name: string },
    ws: WorkspaceRecord,
    target: string,
    signal: AbortSignal,
  ): Promise<WorkspaceBranchExport> {
    const { commit, file } = await this.exportInGuest(row.name, ws, 'branch', signal);
    if (file === '') {
      await hostGit(this.d.runner, ws.hostPath, ['update-ref', target, ws.baseCommit]);
      return { ref: target, commit: ws.baseCommit, baseCommit: ws.baseCommit };
    }
    const ch = await this.d.guest(row.name);
    await mkdir(this.d.stagingDir, { recursive: true, mode: 0o700 });
    const local = join(this.d.stagingDir, `export-${randomBytes(8).toString('hex')}.bundle`);
    const cleanup = [local];
    try {
      const read = await ch.readFile(file, signal);
      read.done.catch(() => undefined); // settles with the stream; its error is the pipeline's
      let n = 0;
      const limit = this.maxBundleBytes;
      const bound = new Transform({
        transform(chunk: Buffer, _e, cb) {
          n += chunk.length;
          if (n > limit) cb(new BangerError('payload_too_large', `the guest's bundle is larger than ${limit} bytes`));
          else cb(null, chunk);
        },
      });
      try {
        await pipeline(read.stream, bound, createWriteStream(local, { flags: 'wx', mode: 0o600 }));
        await read.done;
      } finally {
        await ch.remove(file).catch(() => undefined);
      }
      // Only a bundle is fetched (a path holding anything else could name another repository to git).
      const fh = await open(local, 'r');
      const head = Buffer.alloc(16);
      await fh.read(head, 0, 16, 0).finally(() => fh.close());
      if (!BUNDLE_SIGNATURES.some((s) => head.toString('latin1') === s)) {
        throw new BangerError('rejected_content', 'the guest sent something that is not a git bundle');
      }
      const srcRef = `refs/banger-export/${posix.basename(file).replace(/^banger-export-/, '')}`;
      // git does not fsck what it fetches from a bundle (before 2.46): the bundle goes into a
      // quarantine repository first (borrowing the user's objects through alternates, so it
      // needs only the guest's), and the user's repository fetches from there, where
      // transfer.fsckObjects applies. Objects git refuses never reach the user's repository.
      const quarantine = `${local}.git`;
      cleanup.push(quarantine);
      await this.d.runner.run('git', ['init', '-q', '--bare', '--', quarantine], { maxOutputBytes: 64 * 1024 });
      const commonDir = (await hostGit(this.d.runner, ws.hostPath, ['rev-parse', '--path-format=absolute', '--git-common-dir'])).stdout.trim();
      await writeFile(join(quarantine, 'objects', 'info', 'alternates'), `${join(commonDir, 'objects')}\n`, { flag: 'w', mode: 0o600 });
      const quarantined = await this.d.runner.run(
        'git',
        gitArgs(quarantine, [...NO_MAINTENANCE, ...ONE_REF_FETCH, '--', local, `+${srcRef}:refs/quarantine/export`]),
        { allowFailure: true, env: { ...process.env, GIT_TERMINAL_PROMPT: '0' }, maxOutputBytes: 64 * 1024 },
      );
      if (quarantined.code !== 0) throw new BangerError('rejected_content', `git refused the guest's bundle: ${quarantined.stderr.trim().slice(-800)}`);
      const fetched = await this.d.runner.run(
        'git',
        [
          '-C',
          ws.hostPath,
          ...SAFE_GIT_CONFIG,
          '-c',
          'transfer.fsckObjects=true',
          '-c',
          'fetch.fsckObjects=true',
          ...NO_MAINTENANCE,
          ...ONE_REF_FETCH,
          '--',
          quarantine,
          `+refs/quarantine/export:${target}`,
        ],
        { allowFailure: true, env: { ...process.env, GIT_TERMINAL_PROMPT: '0' }, maxOutputBytes: 64 * 1024 },
      );
      if (fetched.code !== 0) throw new BangerError('rejected_content', `git refused the guest's bundle: ${fetched.stderr.trim().slice(-800)}`);
      const got = (await hostGit(this.d.runner, ws.hostPath, ['rev-parse', '--verify', `${target}^{commit}`])).stdout.trim();
      if (got !== commit) {
        await hostGit(this.d.runner, ws.hostPath, ['update-ref', '-d', target], true);
        throw new BangerError('rejected_content', `the guest's bundle holds ${got.slice(0, 12)} where it announced ${commit.slice(0, 12)}`);
      }
      return { ref: target, commit: got, baseCommit: ws.baseCommit };
    } finally {
      for (const path of cleanup) await rm(path, { recursive: true, force: true });
    }
  }
}
