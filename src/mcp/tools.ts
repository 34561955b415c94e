/**
 * The MCP tools of `banger mcp`: each one a small function over the daemon's client (through the
 * narrow `SandboxApi`, faked in unit tests) plus the per-connection state (the current sandbox).
 * Nothing durable lives here: sandboxes, processes, files and workspaces are the daemon's.
 * Every result is bounded (text.ts) and every host path goes through the allowlist (allowlist.ts).
 */
import { realpath } from 'node:fs/promises';
import { posix } from 'node:path';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { guestPathProblem } from '../api/files-wire.js';
import { MAX_STDIN_WRITE } from '../api/proc-schemas.js';
import type { OperationEvent, Vm } from '../api/schemas.js';
import type { BangerClient } from '../client/client.js';
import { checkVm } from '../client/trust.js';
import type { HostAllowlist } from './allowlist.js';
import { applyEdit, selectLines } from './edit.js';
import { BoundedSink, HeadTailSink, readStream } from './output.js';
import { capText, fitList, jsonLength, sanitizeInline } from './text.js';

/** What the tools use of the daemon's client. */
export type SandboxApi = Pick<
  BangerClient,
  | 'vms'
  | 'vm'
  | 'createVm'
  | 'finish'
  | 'planWorkspace'
  | 'prepareWorkspace'
  | 'bulk'
  | 'workspace'
  | 'exportWorkspace'
  | 'startProcess'
  | 'waitProcess'
  | 'process'
  | 'processes'
  | 'processOutput'
  | 'writeProcessStdin'
  | 'signalProcess'
  | 'readFile'
  | 'writeFile'
  | 'statFile'
  | 'listFiles'
>;

/** Per connection: the one thing the server remembers. */
export interface Session {
  current: string | undefined;
}

export interface ToolContext {
  api: SandboxApi;
  allow: HostAllowlist;
  session: Session;
}

/** What a tool may report while it runs (MCP progress notifications when the caller asked for them). */
export interface ToolExtra {
  progress?: (message: string) => void;
  signal?: AbortSignal;
}

export interface ToolAnnotations {
  readOnlyHint: boolean;
  destructiveHint: boolean;
  idempotentHint: boolean;
  openWorldHint: boolean;
}

export interface ToolDef {
  name: string;
  description: string;
  input: z.ZodRawShape;
  output: z.ZodRawShape;
  annotations: ToolAnnotations;
  // biome-ignore lint/suspicious/noExplicitAny: each tool's args are checked by its own input schema before run
  run(ctx: ToolContext, args: any, extra: ToolExtra): Promise<Record<string, unknown>>;
}

/** The longest `exec`/`process_output` waits before answering with offsets instead. */
export const MAX_WAIT_SECONDS = 20;
export const DEFAULT_WAIT_SECONDS = 15;
/** Budgets (JSON characters) of the big fields of a result; the rest of a result is small. */
export const OUTPUT_BUDGET = { stdout: 5_000, stderr: 2_500 } as const;
export const FILE_BUDGET = 8_000;
export const LIST_BUDGET = 7_500;
export const DIFF_BUDGET = 8_000;
/** Guest files the file tools read whole (read, edit). */
export const MAX_GUEST_FILE_BYTES = 8 * 1024 * 1024;
/** A patch written to a host file must be whole: at most this big. */
export const MAX_EXPORT_PATCH_BYTES = 32 * 1024 * 1024;

const ro = (idempotent = true): ToolAnnotations => ({ readOnlyHint: true, destructiveHint: false, idempotentHint: idempotent, openWorldHint: false });
const rw = (destructive: boolean, idempotent: boolean, openWorld = false): ToolAnnotations => ({
  readOnlyHint: false,
  destructiveHint: destructive,
  idempotentHint: idempotent,
  openWorldHint: openWorld,
});

const vmArg = z.string().optional().describe('sandbox (default: current)');
const procArg = z.string().describe('process id or name');
const command = z.string().describe('shell command (sh -c)');
const cwdArg = z.string().optional();

// ---- helpers ----------------------------------------------------------------------------------

function currentVm(ctx: ToolContext, vm: string | undefined): string {
  const ref = vm ?? ctx.session.current;
  if (!ref)
    throw new BangerError('bad_request', 'no sandbox given and none is current', { fix: 'call sandbox_create, or sandbox_use with a name from sandbox_list' });
  return ref;
}

/** Where relative guest paths and commands start: the workspace, else /root. */
async function guestBase(ctx: ToolContext, ref: string): Promise<{ vm: Vm; base: string }> {
  const vm = await ctx.api.vm(ref);
  return { vm, base: vm.workspace?.guestPath ?? '/root' };
}

function guestPath(base: string, path: string): string {
  const abs = path.startsWith('/') ? path : posix.join(base, path);
  const problem = guestPathProblem(abs);
  if (problem) throw new BangerError('bad_request', `guest path ${JSON.stringify(sanitizeInline(path))} ${problem}`);
  return posix.normalize(abs);
}

function vmSummary(vm: Vm) {
  return {
    name: vm.name,
    state: vm.state,
    image: sanitizeInline(vm.imageName, 80),
    ip: vm.ip,
    workspace: vm.workspace ? vm.workspace.guestPath : null,
  };
}

async function readAll(stream: NodeJS.ReadableStream & { destroy?: (e?: Error) => void }, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > max) {
      stream.destroy?.();
      throw new BangerError('payload_too_large', `${what} is larger than ${max} bytes`, { fix: 'read a part of it with exec (head, sed -n, grep)' });
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

async function readGuestFile(ctx: ToolContext, vm: string, path: string): Promise<{ data: Buffer; mode: number }> {
  const st = await ctx.api.statFile(vm, path);
  if (st.type !== 'file')
    throw new BangerError('bad_request', `${sanitizeInline(path)} is a ${st.type}, not a regular file`, { fix: 'file_list lists a directory' });
  if (st.size > MAX_GUEST_FILE_BYTES) {
    throw new BangerError('payload_too_large', `${sanitizeInline(path)} is ${st.size} bytes (at most ${MAX_GUEST_FILE_BYTES})`, {
      fix: 'use exec (head, sed -n, grep)',
    });
  }
  const dl = await ctx.api.readFile(vm, path);
  const data = await readAll(dl.stream, MAX_GUEST_FILE_BYTES, sanitizeInline(path));
  await dl.done;
  return { data, mode: st.mode };
}

async function writeGuestFile(ctx: ToolContext, vm: string, path: string, content: string, mode?: number): Promise<number> {
  const body = Buffer.from(content, 'utf8');
  if (body.length > MAX_GUEST_FILE_BYTES) {
    throw new BangerError('payload_too_large', `the new content is ${body.length} bytes (at most ${MAX_GUEST_FILE_BYTES})`, {
      fix: 'copy big files with `banger vm cp`',
    });
  }
  const r = await ctx.api.writeFile(vm, path, Readable.from([body]), { mkdirs: true, ...(mode !== undefined ? { mode } : {}) });
  return r.size;
}

/** Lines of a text, whole lines only, while their JSON fits the budget (one huge line is cut head/tail). */
function windowText(text: string, fromLine: number, limit: number | undefined) {
  const w = selectLines(text, fromLine, limit);
  const lines = w.text === '' && w.count === 0 ? [] : w.text.split('\n');
  const kept: string[] = [];
  let used = 0;
  for (const line of lines) {
    const cost = jsonLength(line) + 2;
    if (used + cost > FILE_BUDGET) break;
    kept.push(line);
    used += cost;
  }
  if (kept.length === 0 && lines.length > 0) {
    const one = capText(lines[0] as string, FILE_BUDGET);
    return { text: one.text, from: w.from, lines: 1, totalLines: w.totalLines, truncated: true, nextLine: w.from + 1 <= w.totalLines ? w.from + 1 : null };
  }
  const capped = capText(kept.join('\n'), FILE_BUDGET);
  const more = kept.length < lines.length;
  const end = w.from + kept.length;
  return {
    text: capped.text,
    from: w.from,
    lines: kept.length,
    totalLines: w.totalLines,
    truncated: more || capped.truncated,
    nextLine: end <= w.totalLines ? end : null,
  };
}

/**
 * Where a patch export may land: a NEW file named like a patch (`*.patch` or `*.diff`, no leading
 * dot) in a directory whose path has no dot-component. The bytes come from the guest, so the name
 * must be one no host tool loads by itself: never `.git/…` (a gitfile or `commondir` would point a
 * later prepare at another repository), `.npmrc`, `GNUmakefile` or `conftest.py`.
 */
export function checkPatchPath(path: string, cwd: string): string {
  const abs = posix.resolve(cwd, path);
  const parts = abs.split('/').filter((c) => c !== '');
  const name = parts.at(-1) ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*\.(patch|diff)$/.test(name) || parts.some((c) => c.startsWith('.'))) {
    throw new BangerError('bad_request', `a patch is written only to a new *.patch or *.diff file outside dot-directories, not ${JSON.stringify(path)}`, {
      fix: 'name it like changes.patch (or leave path out: banger-<vm>-<name>.patch in the repository)',
    });
  }
  return abs;
}

function procSummary(p: import('../api/proc-schemas.js').Proc) {
  return {
    id: p.id,
    name: p.name === null ? null : sanitizeInline(p.name, 64),
    state: p.state,
    exitCode: p.exitCode,
    signal: p.signal,
    command: sanitizeInline(p.shell ?? (p.argv ?? []).join(' '), 120),
  };
}

/** A process's state and its output since the offsets, bounded. */
async function procReport(ctx: ToolContext, vm: string, id: string, from: { stdout: number; stderr: number }) {
  const proc = await ctx.api.process(vm, id);
  const out = await readStream(ctx.api, vm, proc, 'stdout', from.stdout, OUTPUT_BUDGET.stdout);
  const err = await readStream(ctx.api, vm, proc, 'stderr', from.stderr, OUTPUT_BUDGET.stderr);
  return {
    id: proc.id,
    running: proc.state === 'running',
    state: proc.state,
    exitCode: proc.exitCode,
    signal: proc.signal,
    timedOut: proc.timedOut,
    ...(proc.code ? { error: proc.code } : {}),
    durationMs: proc.endedMs !== null ? proc.endedMs - proc.startedMs : null,
    stdout: out.text,
    stderr: err.text,
    truncated: out.truncated || err.truncated,
    stdoutOffset: out.next,
    stderrOffset: err.next,
  };
}

/** Declared fields of a process report (it also carries state, timedOut, error, durationMs). */
const procOut = {
  id: z.string(),
  running: z.boolean(),
  exitCode: z.number().nullable(),
  stdout: z.string(),
  stderr: z.string(),
  truncated: z.boolean(),
  stdoutOffset: z.number(),
  stderrOffset: z.number(),
};

const sandboxOut = { name: z.string(), state: z.string(), image: z.string(), ip: z.string().nullable(), workspace: z.string().nullable() };

const waitMs = (s: number | undefined) => Math.round(Math.min(MAX_WAIT_SECONDS, Math.max(0, s ?? DEFAULT_WAIT_SECONDS)) * 1000);

// ---- the tools --------------------------------------------------------------------------------

export const TOOLS: readonly ToolDef[] = [
  {
    name: 'sandbox_create',
    description: 'Create a microVM sandbox (becomes current); repo: host git repo copied in as its workspace (e.g. ".").',
    input: {
      name: z.string().optional(),
      image: z.string().optional(),
      repo: z.string().optional(),
      cpus: z.number().optional(),
      memory_mib: z.number().optional(),
      disk_gib: z.number().optional(),
      nat: z.boolean().optional().describe('internet access'),
    },
    output: sandboxOut,
    annotations: rw(false, false, true),
    async run(ctx, a, extra) {
      // The repository is checked before anything is created: its top level too (a path inside a
      // repository ships the whole repository).
      let hostPath: string | undefined;
      if (a.repo !== undefined) {
        const real = await ctx.allow.resolve(a.repo);
        const plan = await ctx.api.planWorkspace({ hostPath: real });
        const top = await realpath(plan.hostPath).catch(() => plan.hostPath);
        if (!ctx.allow.covers(top)) {
          throw new BangerError('precondition_failed', `the git repository holding ${JSON.stringify(a.repo)} reaches outside the allowed directories`, {
            fix: 'use a repository whose top level is inside them, or restart the server with `banger mcp --allow DIR`',
          });
        }
        hostPath = top;
      }
      const accepted = await ctx.api.createVm({
        ...(a.name ? { name: a.name } : {}),
        ...(a.image ? { image: a.image } : {}),
        ...(a.cpus ? { vcpus: Math.floor(a.cpus) } : {}),
        ...(a.memory_mib ? { memoryMib: Math.floor(a.memory_mib) } : {}),
        ...(a.disk_gib ? { diskSizeBytes: Math.round(a.disk_gib * 1024 ** 3) } : {}),
        nat: a.nat ?? false,
        waitFor: 'agent',
      });
      const onEvent = (e: OperationEvent) => {
        if (e.type === 'stage') extra.progress?.(sanitizeInline(e.stage.name, 80));
      };
      const vm = checkVm(await ctx.api.finish<Vm>(accepted, onEvent));
      ctx.session.current = vm.name;
      if (hostPath === undefined) return vmSummary(vm);
      try {
        extra.progress?.('prepare workspace');
        const ws = await ctx.api.prepareWorkspace(vm.id, { hostPath }, onEvent);
        return { ...vmSummary({ ...vm, workspace: ws.workspace }), files: ws.files, baseCommit: ws.workspace.baseCommit };
      } catch (e) {
        // A sandbox without the workspace it was asked for is not what was created: nothing is left.
        await ctx.api.bulk({ action: 'delete', refs: [vm.id] }).catch(() => undefined);
        ctx.session.current = undefined;
        throw e;
      }
    },
  },
  {
    name: 'sandbox_list',
    description: 'List sandboxes.',
    input: {},
    output: { current: z.string().nullable(), sandboxes: z.array(z.object(sandboxOut)), truncated: z.boolean() },
    annotations: ro(),
    async run(ctx) {
      const { items, truncated } = fitList((await ctx.api.vms()).map(vmSummary), LIST_BUDGET);
      return { current: ctx.session.current ?? null, sandboxes: items, truncated };
    },
  },
  {
    name: 'sandbox_use',
    description: 'Set the current sandbox (default vm).',
    input: { vm: z.string() },
    output: { current: z.string() },
    annotations: ro(),
    async run(ctx, a) {
      const vm = await ctx.api.vm(a.vm);
      ctx.session.current = vm.name;
      return { current: vm.name };
    },
  },
  {
    name: 'sandbox_info',
    description: 'Sandbox details, workspace status, allowed host paths.',
    input: { vm: vmArg },
    // Also: cpus, memoryMib, diskBytes, nat, lastError, workspaceStatus {hostRepo, baseCommit, guestHead, guestCommits, changedFiles}.
    output: { ...sandboxOut, allowedHostPaths: z.array(z.string()) },
    annotations: ro(),
    async run(ctx, a) {
      const vm = await ctx.api.vm(currentVm(ctx, a.vm));
      let workspaceStatus = null;
      if (vm.workspace && vm.state === 'running') {
        const s = await ctx.api.workspace(vm.name);
        workspaceStatus = {
          hostRepo: s.workspace.hostPath,
          baseCommit: s.workspace.baseCommit,
          guestHead: sanitizeInline(s.guestHead, 64),
          guestCommits: s.guestCommits,
          changedFiles: s.changesTotal,
        };
      }
      return {
        ...vmSummary(vm),
        cpus: vm.vcpus,
        memoryMib: vm.memoryMib,
        diskBytes: vm.diskSizeBytes,
        nat: vm.nat,
        lastError: vm.lastError === null ? null : sanitizeInline(vm.lastError, 500),
        workspaceStatus,
        allowedHostPaths: [...ctx.allow.list()],
      };
    },
  },
  {
    name: 'sandbox_delete',
    description: 'Delete a sandbox (confirm: true).',
    input: { vm: z.string(), confirm: z.literal(true) },
    output: { deleted: z.string() },
    annotations: rw(true, true),
    async run(ctx, a) {
      const r = await ctx.api.bulk({ action: 'delete', refs: [a.vm] });
      const one = r.results[0];
      if (!one?.ok) throw one?.error ? BangerError.fromBody(one.error) : new BangerError('internal', `deleting ${a.vm} gave no result`);
      if (ctx.session.current === one.name || ctx.session.current === a.vm) ctx.session.current = undefined;
      return { deleted: one.name ?? a.vm };
    },
  },
  {
    name: 'exec',
    description: `Run a shell command, waiting up to wait_s (max ${MAX_WAIT_SECONDS}); if still running, follow it with process_output.`,
    input: {
      command,
      vm: vmArg,
      cwd: cwdArg,
      env: z.array(z.string()).optional().describe('K=V'),
      wait_s: z.number().min(0).max(MAX_WAIT_SECONDS).optional(),
      timeout_s: z.number().positive().optional().describe('kill after'),
    },
    output: procOut,
    annotations: rw(true, false, true),
    async run(ctx, a) {
      const ref = currentVm(ctx, a.vm);
      const { vm, base } = await guestBase(ctx, ref);
      const proc = await ctx.api.startProcess(vm.name, {
        shell: a.command,
        cwd: a.cwd ? guestPath(base, a.cwd) : base,
        ...(a.env ? { env: a.env } : {}),
        ...(a.timeout_s ? { timeoutMs: Math.ceil(a.timeout_s * 1000) } : {}),
      });
      await ctx.api.waitProcess(vm.name, proc.id, waitMs(a.wait_s), 0);
      return procReport(ctx, vm.name, proc.id, { stdout: 0, stderr: 0 });
    },
  },
  {
    name: 'process_start',
    description: 'Start a background process; read it with process_output.',
    input: {
      command,
      vm: vmArg,
      cwd: cwdArg,
      name: z.string().optional(),
      stdin: z.boolean().optional(),
      timeout_s: z.number().positive().optional(),
    },
    output: { id: z.string(), name: z.string().nullable(), state: z.string() },
    annotations: rw(true, false, true),
    async run(ctx, a) {
      const { vm, base } = await guestBase(ctx, currentVm(ctx, a.vm));
      const p = await ctx.api.startProcess(vm.name, {
        shell: a.command,
        cwd: a.cwd ? guestPath(base, a.cwd) : base,
        ...(a.name ? { name: a.name } : {}),
        ...(a.stdin ? { stdin: 'pipe' as const } : {}),
        ...(a.timeout_s ? { timeoutMs: Math.ceil(a.timeout_s * 1000) } : {}),
      });
      return { id: p.id, name: p.name === null ? null : sanitizeInline(p.name, 64), state: p.state };
    },
  },
  {
    name: 'process_output',
    description: 'Output of a process from offsets; wait_s: wait for its end first.',
    input: {
      id: procArg,
      vm: vmArg,
      stdout_offset: z.number().nonnegative().optional(),
      stderr_offset: z.number().nonnegative().optional(),
      wait_s: z.number().min(0).max(MAX_WAIT_SECONDS).optional(),
    },
    output: procOut,
    annotations: ro(false),
    async run(ctx, a) {
      const vm = currentVm(ctx, a.vm);
      if (a.wait_s) await ctx.api.waitProcess(vm, a.id, waitMs(a.wait_s), 0);
      return procReport(ctx, vm, a.id, { stdout: Math.floor(a.stdout_offset ?? 0), stderr: Math.floor(a.stderr_offset ?? 0) });
    },
  },
  {
    name: 'process_input',
    description: 'Write to the stdin of a process started with stdin: true.',
    input: { id: procArg, vm: vmArg, text: z.string(), eof: z.boolean().optional() },
    output: { offset: z.number() },
    annotations: rw(false, false),
    async run(ctx, a) {
      const vm = currentVm(ctx, a.vm);
      const p = await ctx.api.process(vm, a.id);
      const data = Buffer.from(a.text, 'utf8');
      if (data.length > MAX_STDIN_WRITE)
        throw new BangerError('payload_too_large', `text is ${data.length} bytes (at most ${MAX_STDIN_WRITE} per call)`, { fix: 'send it in parts' });
      const r = await ctx.api.writeProcessStdin(vm, p.id, p.stdinBytes, data, a.eof);
      return { offset: r.offset };
    },
  },
  {
    name: 'process_signal',
    description: 'Send a signal (default TERM) to a process.',
    input: {
      id: procArg,
      vm: vmArg,
      signal: z
        .string()
        .regex(/^[A-Za-z0-9+]{1,16}$/)
        .optional(),
    },
    output: { id: z.string(), state: z.string() },
    annotations: rw(true, false),
    async run(ctx, a) {
      const p = await ctx.api.signalProcess(currentVm(ctx, a.vm), a.id, a.signal ?? 'TERM');
      return { id: p.id, state: p.state };
    },
  },
  {
    name: 'process_list',
    description: 'Processes of a sandbox.',
    input: { vm: vmArg },
    output: {
      // Each also has name, signal.
      processes: z.array(z.object({ id: z.string(), state: z.string(), exitCode: z.number().nullable(), command: z.string() })),
      truncated: z.boolean(),
    },
    annotations: ro(),
    async run(ctx, a) {
      const { items, truncated } = fitList((await ctx.api.processes(currentVm(ctx, a.vm))).map(procSummary), LIST_BUDGET);
      return { processes: items, truncated };
    },
  },
  {
    name: 'file_read',
    description: 'Read lines of a sandbox file (host: true: an allowlisted host file).',
    input: {
      path: z.string(),
      vm: vmArg,
      host: z.boolean().optional(),
      offset: z.number().min(1).optional().describe('first line (1-based)'),
      limit: z.number().min(1).optional().describe('lines'),
    },
    // Also: from, lines.
    output: { path: z.string(), text: z.string(), totalLines: z.number(), truncated: z.boolean(), nextLine: z.number().nullable() },
    annotations: ro(),
    async run(ctx, a) {
      let data: Buffer;
      let shown: string;
      if (a.host) {
        const read = await ctx.allow.readBounded(a.path);
        data = read.data;
        shown = read.real;
      } else {
        const { vm, base } = await guestBase(ctx, currentVm(ctx, a.vm));
        shown = guestPath(base, a.path);
        data = (await readGuestFile(ctx, vm.name, shown)).data;
      }
      return { path: sanitizeInline(shown, 300), ...windowText(data.toString('utf8'), a.offset ?? 1, a.limit) };
    },
  },
  {
    name: 'file_write',
    description: 'Write a whole sandbox file.',
    input: { path: z.string(), content: z.string(), vm: vmArg },
    output: { bytes: z.number() },
    annotations: rw(true, true),
    async run(ctx, a) {
      const { vm, base } = await guestBase(ctx, currentVm(ctx, a.vm));
      const path = guestPath(base, a.path);
      const mode = await ctx.api.statFile(vm.name, path).then(
        (st) => (st.type === 'file' ? st.mode : undefined),
        () => undefined,
      );
      return { path: sanitizeInline(path, 300), bytes: await writeGuestFile(ctx, vm.name, path, a.content, mode) };
    },
  },
  {
    name: 'file_edit',
    description: 'Replace old_string (must be unique unless replace_all) with new_string in a sandbox file.',
    input: {
      path: z.string(),
      old_string: z.string(),
      new_string: z.string(),
      replace_all: z.boolean().optional(),
      vm: vmArg,
    },
    output: { replacements: z.number() },
    annotations: rw(true, false),
    async run(ctx, a) {
      const { vm, base } = await guestBase(ctx, currentVm(ctx, a.vm));
      const path = guestPath(base, a.path);
      const { data, mode } = await readGuestFile(ctx, vm.name, path);
      const edited = applyEdit(data.toString('utf8'), a.old_string, a.new_string, a.replace_all ?? false);
      const bytes = await writeGuestFile(ctx, vm.name, path, edited.content, mode);
      return { path: sanitizeInline(path, 300), replacements: edited.replacements, bytes };
    },
  },
  {
    name: 'file_list',
    description: 'List a sandbox directory.',
    input: { path: z.string().optional(), vm: vmArg },
    output: { entries: z.array(z.object({ name: z.string(), type: z.string(), size: z.number() })), truncated: z.boolean() },
    annotations: ro(),
    async run(ctx, a) {
      const { vm, base } = await guestBase(ctx, currentVm(ctx, a.vm));
      const path = guestPath(base, a.path ?? '.');
      const list = await ctx.api.listFiles(vm.name, path);
      const entries = list.entries.map((e) => ({ name: sanitizeInline(e.name, 255), type: e.type, size: e.size }));
      const { items, truncated } = fitList(entries, LIST_BUDGET);
      return { path: sanitizeInline(path, 300), entries: items, truncated: truncated || list.truncated };
    },
  },
  {
    name: 'workspace_diff',
    description: "Patch of the workspace's changes since its base commit.",
    input: { vm: vmArg },
    output: { commit: z.string(), patch: z.string(), truncated: z.boolean() },
    annotations: ro(),
    async run(ctx, a) {
      const vm = await ctx.api.vm(currentVm(ctx, a.vm));
      if (!vm.workspace) throw new BangerError('precondition_failed', `${vm.name} has no workspace`, { fix: 'create the sandbox with repo' });
      const sink = new HeadTailSink(DIFF_BUDGET, DIFF_BUDGET);
      const r = await ctx.api.exportWorkspace(vm.name, { format: 'patch' }, sink);
      const kept = sink.text();
      const capped = capText(kept.text, DIFF_BUDGET);
      return {
        baseCommit: vm.workspace.baseCommit,
        commit: r.commit,
        bytes: sink.total,
        patch: capped.text,
        truncated: kept.cut || capped.truncated,
      };
    },
  },
  {
    name: 'workspace_export',
    description: 'Put the workspace changes into the host repo: branch (refs/banger/<vm>/<name>) or patch (new file).',
    input: {
      vm: vmArg,
      format: z.enum(['branch', 'patch']).optional(),
      name: z.string().optional().describe('default wip'),
      path: z.string().optional().describe('patch file path'),
    },
    output: { repo: z.string(), commit: z.string(), ref: z.string().optional(), path: z.string().optional() },
    annotations: rw(false, false),
    async run(ctx, a) {
      const vm = await ctx.api.vm(currentVm(ctx, a.vm));
      if (!vm.workspace) throw new BangerError('precondition_failed', `${vm.name} has no workspace`, { fix: 'create the sandbox with repo' });
      // Only into the repository the sandbox was created from: the daemon recorded it when this
      // server (allowlisted) or the user (CLI) prepared the workspace; the agent cannot set it.
      const repo = await realpath(vm.workspace.hostPath).catch(() => {
        throw new BangerError('not_found', `the workspace's host repository ${vm.workspace?.hostPath} is gone`);
      });
      const allow = ctx.allow.withRoot(repo);
      const name = a.name ?? 'wip';
      if ((a.format ?? 'branch') === 'branch') {
        const r = await ctx.api.exportWorkspace(vm.name, { format: 'branch', name });
        if (r.format !== 'branch') throw new BangerError('internal', 'the daemon answered a branch export with another format');
        return { format: 'branch', repo, ref: r.ref, commit: r.commit };
      }
      const path = checkPatchPath(a.path ?? posix.join(repo, `banger-${vm.name}-${name}.patch`), repo);
      const sink = new BoundedSink(MAX_EXPORT_PATCH_BYTES);
      const r = await ctx.api.exportWorkspace(vm.name, { format: 'patch', name }, sink);
      const patch = sink.bytes();
      // The guest wrote these bytes: they go to the host only when they are what a patch looks like.
      if (patch.length > 0 && !patch.subarray(0, 11).equals(Buffer.from('diff --git '))) {
        throw new BangerError('rejected_content', 'the guest sent something that is not a git patch', { fix: 'export it as a branch instead' });
      }
      const target = await allow.writeNew(path, patch);
      return { format: 'patch', repo, path: target, bytes: sink.total, commit: r.commit };
    },
  },
];

export const INSTRUCTIONS = [
  'banger: disposable microVM sandboxes with a copy of a host git repo.',
  'Flow: sandbox_create {repo: "."} → exec / file_* in it (relative paths and commands start in the workspace) → workspace_diff → workspace_export (branch) → sandbox_delete.',
  'exec answers within 20 s; longer commands keep running: follow them with process_output (offsets). Outputs are cut to head+tail (truncated: true).',
  'Host paths are limited to the allowed directories (sandbox_info lists them).',
].join('\n');
