import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Writable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { OperationEvent } from '../../api/schemas.js';
import type { WorkspaceExportFormat, WorkspaceMode, WorkspacePlan } from '../../api/workspace-schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, sanitizeForTerminal, sanitizeInline } from '../render.js';

interface PrepareOptions {
  guestPath?: string;
  mode: string;
  includeUntracked?: boolean;
  branch?: string;
  from?: string;
  dryRun?: boolean;
  json?: boolean;
}

function modeArg(v: string): WorkspaceMode {
  if (v !== 'full' && v !== 'shallow') throw new BangerError('bad_request', `--mode ${v}: use full or shallow`, { details: 'usage' });
  return v;
}

function formatArg(v: string): WorkspaceExportFormat {
  if (v !== 'patch' && v !== 'commits' && v !== 'branch')
    throw new BangerError('bad_request', `--format ${v}: use patch, commits or branch`, { details: 'usage' });
  return v;
}

/** The dry-run listing: one line per file shipped, then the counts (paths come from the user's own repository, printed sanitised). */
function printPlan(plan: WorkspacePlan, prefix = ''): void {
  for (const e of plan.entries) process.stdout.write(`${e.kind.padEnd(10)} ${formatBytes(e.size).padStart(10)}  ${sanitizeInline(prefix + e.path)}\n`);
  if (plan.entriesTruncated) process.stdout.write(`… (list cut at ${plan.entries.length} files)\n`);
  for (const d of plan.deleted) process.stdout.write(`${'deleted'.padEnd(10)} ${''.padStart(10)}  ${sanitizeInline(prefix + d)}\n`);
  for (const s of plan.submodules) {
    if (s.plan) printPlan(s.plan, `${prefix}${s.path}/`);
    else process.stdout.write(`${'submodule'.padEnd(10)} ${'(not initialised: skipped)'}  ${sanitizeInline(prefix + s.path)}\n`);
  }
}

/**
 * The guest wrote the patch: on a terminal it is read, not applied, so escape sequences in it are
 * removed (piped or written to a file it stays byte-exact, for git apply).
 */
function terminalSink(out: NodeJS.WriteStream): Writable {
  const decoder = new StringDecoder('utf8');
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.write(sanitizeForTerminal(decoder.write(chunk)), () => cb());
    },
    final(cb) {
      out.write(sanitizeForTerminal(decoder.end()), () => cb());
    },
  });
}

export function registerWorkspaceCommands(vm: Command): void {
  const ws = vm.command('workspace').description('a git repository of the host in a VM, and the work done there brought back');

  ws.command('prepare')
    .description('ship a host repository (history, uncommitted changes) into a running VM')
    .argument('<vm>', 'VM name or id prefix')
    .argument('[path]', 'the host repository (default: the current directory)', '.')
    .option('--guest-path <dir>', 'where the repository goes in the guest', '/root/repo')
    .option('--mode <mode>', 'full (all history, submodules) or shallow (the HEAD commit only)', 'full')
    .option('--include-untracked', 'also ship untracked files (ignored files never go)')
    .option('--branch <name>', 'check out a new branch in the guest')
    .option('--from <rev>', 'the commit the new branch starts from (default HEAD)')
    .option('--dry-run', 'list what would be shipped; touch no VM')
    .option('--json', 'print the result (or the plan) as JSON')
    .addHelpText('after', '\nExamples:\n  banger vm workspace prepare dev .\n  banger vm workspace prepare dev ~/src/app --mode shallow --branch try-x\n')
    .action(async (vmRef: string, path: string, o: PrepareOptions) => {
      const mode = modeArg(o.mode);
      if (o.from && !o.branch) throw new BangerError('bad_request', '--from goes with --branch', { details: 'usage' });
      const hostPath = resolve(path);
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      if (o.dryRun) {
        const plan = await client.planWorkspace({ hostPath, mode, includeUntracked: !!o.includeUntracked });
        if (o.json) return printJson(plan);
        printPlan(plan);
        process.stdout.write(
          `${plan.files} files, ${formatBytes(plan.bytes)} from ${sanitizeInline(plan.hostPath)} at ${plan.head.slice(0, 12)} (${mode}); nothing was shipped\n`,
        );
        if (plan.untrackedSkipped) process.stdout.write(`${plan.untrackedSkipped} untracked files would be skipped (--include-untracked ships them)\n`);
        return;
      }
      const progress = new ProgressRenderer(process.stderr, !!o.json);
      let opId: string | undefined;
      const onEvent = (e: OperationEvent) => {
        if (e.type === 'snapshot') opId = e.operation.id;
        progress.onEvent(e);
      };
      const onSigint = () => {
        process.stderr.write('\ncancelling…\n');
        if (opId) void client.cancelOperation(opId).catch(() => {});
      };
      process.once('SIGINT', onSigint);
      try {
        const res = await client.prepareWorkspace(
          vmRef,
          {
            hostPath,
            mode,
            includeUntracked: !!o.includeUntracked,
            ...(o.guestPath ? { guestPath: o.guestPath } : {}),
            ...(o.branch ? { branch: o.branch } : {}),
            ...(o.from ? { from: o.from } : {}),
          },
          onEvent,
        );
        if (o.json) return printJson(res);
        process.stdout.write(
          `${sanitizeInline(res.workspace.guestPath)} in ${sanitizeInline(vmRef)}: ${res.files} files, ${formatBytes(res.bytes)} at ${res.workspace.baseCommit.slice(0, 12)} (${res.workspace.mode})\n`,
        );
        if (res.untrackedSkipped) process.stderr.write(`note: ${res.untrackedSkipped} untracked files were not shipped (--include-untracked ships them)\n`);
      } finally {
        process.off('SIGINT', onSigint);
      }
    });

  ws.command('status')
    .description("the workspace's base commit, the guest's changes, and whether the host repository moved")
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (vmRef: string, o: { json?: boolean }) => {
      const s = await new BangerClient().workspace(vmRef);
      if (o.json) return printJson(s);
      printKeyValues([
        ['host path', s.workspace.hostPath],
        ['guest path', s.workspace.guestPath],
        ['mode', s.workspace.mode],
        ['branch', s.workspace.branch],
        ['base', s.workspace.baseCommit],
        ['prepared', `${s.workspace.preparedAt} (${ago(s.workspace.preparedAt)})`],
        ['guest HEAD', s.guestHead],
        ['guest commits', s.guestCommits],
        ['changed files', s.changesTotal],
        [
          'host HEAD',
          s.hostHead === null
            ? 'unreadable'
            : s.hostMoved
              ? `${s.hostHead} (moved since prepare${s.hostCommitsSinceBase !== null ? `: ${s.hostCommitsSinceBase} commits ahead of base` : ', not a descendant of base'})`
              : `${s.hostHead} (unchanged)`,
        ],
      ]);
      // Paths come from the guest: sanitised before they reach the terminal.
      for (const c of s.changes) process.stdout.write(`  ${sanitizeInline(c.status)} ${sanitizeInline(c.path)}\n`);
      if (s.changesTotal > s.changes.length) process.stdout.write(`  … and ${s.changesTotal - s.changes.length} more\n`);
    });

  ws.command('export')
    .description("everything the guest changed since the base commit, without touching the guest's index or working tree")
    .argument('<vm>', 'VM name or id prefix')
    .option('--format <format>', 'patch (git apply --binary), commits (git am) or branch (refs/banger/<vm>/<name> in the host repository)', 'patch')
    .option('--name <name>', 'the branch name under refs/banger/<vm>/', 'wip')
    .option('-o, --output <file>', 'write the patch to FILE instead of stdout')
    .option('--json', 'print the branch result as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  banger vm workspace export dev | git apply --binary\n  banger vm workspace export dev --format commits -o work.mbox && git am work.mbox\n  banger vm workspace export dev --format branch && git log main..refs/banger/dev/wip\n',
    )
    .action(async (vmRef: string, o: { format: string; name: string; output?: string; json?: boolean }) => {
      const format = formatArg(o.format);
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      if (format === 'branch') {
        const r = await client.exportWorkspace(vmRef, { format, name: o.name });
        if (o.json) return printJson(r);
        if (r.format === 'branch') process.stdout.write(`${sanitizeInline(r.ref)} ${r.commit} (base ${r.baseCommit.slice(0, 12)})\n`);
        return;
      }
      if (!o.output) {
        if (!process.stdout.isTTY) {
          await client.exportWorkspace(vmRef, { format, name: o.name }, process.stdout);
          return;
        }
        const sink = terminalSink(process.stdout);
        await client.exportWorkspace(vmRef, { format, name: o.name }, sink);
        await new Promise<void>((ok) => sink.end(ok));
        return;
      }
      // Into a temporary file beside FILE, renamed once whole: a cut stream never leaves a partial patch under FILE's name.
      const target = resolve(o.output);
      const tmp = `${target}.banger-${process.pid}`;
      const file = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
      try {
        const r = await client.exportWorkspace(vmRef, { format, name: o.name }, file);
        await new Promise<void>((ok, fail) => file.end((e?: Error | null) => (e ? fail(e) : ok())));
        await rename(tmp, target);
        process.stderr.write(`wrote ${sanitizeInline(o.output)} (${format} of the guest's work, commit ${r.commit.slice(0, 12)})\n`);
      } catch (e) {
        file.destroy();
        await rm(tmp, { force: true });
        throw e;
      }
    });
}
