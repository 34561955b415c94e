import type { AgentList, AgentSessionList, AgentStartRequest, AgentStartResult } from '../api/agent-schemas.js';
import { BangerError } from '../api/errors.js';
import type { GuestDirList, GuestFileStat, MkdirRequest, MoveRequest } from '../api/file-schemas.js';
import type { Proc, ProcEvent, ProcStartRequest, ProcWaitResult } from '../api/proc-schemas.js';
import type {
  DaemonStatus,
  GuestHealth,
  GuestPorts,
  Image,
  ImageCatalogList,
  ImageWarmRequest,
  Kernel,
  Operation,
  OperationEvent,
  Snapshot,
  Vm,
  VmBulkRequest,
  VmBulkResult,
  VmCreateRequest,
  VmForkRequest,
  VmPauseRequest,
  VmSetRequest,
  VmSnapshotRequest,
  VmStats,
  WebToken,
} from '../api/schemas.js';
import type {
  WorkspaceBranchExport,
  WorkspaceExportRequest,
  WorkspacePlan,
  WorkspacePlanRequest,
  WorkspacePrepareRequest,
  WorkspacePrepareResult,
  WorkspaceStatus,
} from '../api/workspace-schemas.js';
import { type Layout, resolveClientLayout } from '../config/layout.js';
import { newOpId } from '../util/ids.js';
import { type AttachHandle, openAttach } from './attach.js';
import { downloadRaw, type RawDownload, uploadRaw } from './raw.js';
import { errorFrom, isNotRunning, postForBytes, type RawResponse, requestJson, streamEvents, streamText, upgrade } from './transport.js';
import { checkVm } from './trust.js';

/**
 * The system service's socket is there but nothing answers: the service is down. Starting a private
 * daemon instead would put a second daemon on the owner's state dir beside the service's (and
 * without its root helper), so the client says so and stops.
 */
export function serviceNotRunning(layout: Layout, opId?: string): BangerError {
  return new BangerError('unavailable', `the banger service is not running (nothing answers on ${layout.socketPath})`, {
    ...(opId ? { opId } : {}),
    fix: 'banger system status (as root: banger system start, or systemctl start bangerd)',
  });
}

export interface ClientOptions {
  layout?: Layout;
  /** Start bangerd when it is not running (default true). */
  autostart?: boolean;
  /** Request id sent to the daemon; each request gets a fresh one unless given. */
  opId?: string;
  timeoutMs?: number;
}

/**
 * The typed client of bangerd's /v1 API. The CLI uses only this; it is also the public
 * TypeScript SDK. Types come from the shared zod schemas (type-only import: no zod at runtime).
 */
export class BangerClient {
  readonly layout: Layout;
  private readonly autostart: boolean;
  private readonly timeoutMs: number;
  private readonly fixedOpId: string | undefined;
  lastOpId: string | undefined;

  constructor(options: ClientOptions = {}) {
    this.layout = options.layout ?? resolveClientLayout();
    this.autostart = options.autostart ?? true;
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.fixedOpId = options.opId;
  }

  private nextOpId(): string {
    this.lastOpId = this.fixedOpId ?? newOpId();
    return this.lastOpId;
  }

  /**
   * timeoutMs: how long the daemon may stay silent (default the client's; 0 = no limit, for waits).
   * signal: aborting ends the request at once (a `cancelled` BangerError).
   */
  async request<T>(method: string, path: string, body?: unknown, timeoutMs = this.timeoutMs, signal?: AbortSignal): Promise<T> {
    const opId = this.nextOpId();
    let raw: RawResponse;
    try {
      raw = await requestJson(this.layout.socketPath, method, path, body, opId, timeoutMs, signal);
    } catch (e) {
      if (!isNotRunning(e)) throw e;
      if (this.layout.service) throw serviceNotRunning(this.layout, opId);
      if (!this.autostart) {
        throw new BangerError('unavailable', 'bangerd is not running', { opId, fix: 'start it with `banger daemon start`' });
      }
      // Loaded only when needed: most CLI runs find the daemon up (start-up time).
      const { startDaemon } = await import('./autostart.js');
      await startDaemon(this.layout, () => this.ping());
      raw = await requestJson(this.layout.socketPath, method, path, body, opId, timeoutMs, signal);
    }
    if (raw.status >= 400) throw errorFrom(raw);
    return raw.body as T;
  }

  /** True when a daemon answers on the socket. Never starts one. */
  async ping(): Promise<boolean> {
    try {
      const r = await requestJson(this.layout.socketPath, 'GET', '/v1/daemon', undefined, newOpId(), 2000);
      return r.status === 200;
    } catch {
      return false;
    }
  }

  // ---- daemon & operations ---------------------------------------------------------------
  status = () => this.request<DaemonStatus>('GET', '/v1/daemon');
  /** A one-use link into the web UI (docs/web.md). */
  webToken = () => this.request<WebToken>('POST', '/v1/web/token', {});
  shutdown = () => this.request<{ stopping: boolean }>('POST', '/v1/daemon/shutdown');
  operations = async () => (await this.request<{ operations: Operation[] }>('GET', '/v1/operations')).operations;
  operation = (id: string) => this.request<Operation>('GET', `/v1/operations/${encodeURIComponent(id)}`);
  cancelOperation = (id: string) => this.request<{ cancelled: boolean }>('POST', `/v1/operations/${encodeURIComponent(id)}/cancel`);

  /** Follows an operation's events until it ends; returns the final operation. */
  async watch(id: string, onEvent?: (e: OperationEvent) => void): Promise<Operation> {
    let final: Operation | undefined;
    await streamEvents(this.layout.socketPath, `/v1/operations/${encodeURIComponent(id)}/events`, this.nextOpId(), (data) => {
      const e = data as OperationEvent;
      onEvent?.(e);
      if (e.type === 'done') {
        final = e.operation;
        return false;
      }
      return undefined;
    });
    // The stream can end without 'done' if the daemon stopped; ask once more.
    return final ?? (await this.operation(id));
  }

  /** Runs an accepted operation to completion and returns its result, or throws its error. */
  async finish<T>(accepted: { operation: Operation }, onEvent?: (e: OperationEvent) => void): Promise<T> {
    const op = await this.watch(accepted.operation.id, onEvent);
    if (op.state === 'succeeded') return op.result as T;
    if (op.error) throw BangerError.fromBody(op.error);
    throw new BangerError('cancelled', `operation ${op.id} ended ${op.state}`, { opId: op.id });
  }

  // ---- kernels & images ------------------------------------------------------------------
  kernels = async () => (await this.request<{ kernels: Kernel[] }>('GET', '/v1/kernels')).kernels;
  kernel = (ref: string) => this.request<Kernel>('GET', `/v1/kernels/${encodeURIComponent(ref)}`);
  importKernel = (name: string, from: string) => this.request<{ operation: Operation }>('POST', '/v1/kernels', { name, from });
  deleteKernel = (ref: string, force = false) => this.request<{ deleted: string }>('DELETE', `/v1/kernels/${encodeURIComponent(ref)}?force=${force}`);
  kernelCatalog = async () => (await this.request<{ kernels: import('../api/kernel-schemas.js').KernelCatalogItem[] }>('GET', '/v1/kernel-catalog')).kernels;
  pullKernel = (name: string, force = false) => this.request<{ operation: Operation }>('POST', '/v1/kernels/pull', { name, force });
  images = async () => (await this.request<{ images: Image[] }>('GET', '/v1/images')).images;
  image = (ref: string) => this.request<Image>('GET', `/v1/images/${encodeURIComponent(ref)}`);
  registerImage = (req: { name: string; rootfs: string; kernel?: string; initrd?: string; modules?: string; kernelRef?: string }) =>
    this.request<{ operation: Operation }>('POST', '/v1/images', req);
  imageCatalog = () => this.request<ImageCatalogList>('GET', '/v1/image-catalog');
  buildImage = (req: { from: string; name: string; script: string; nat?: boolean; diskSizeBytes?: number }) =>
    this.request<{ operation: Operation }>('POST', '/v1/images/build', req);
  pullImage = (req: { ref: string; name?: string; kernelRef?: string; sizeBytes?: number }) =>
    this.request<{ operation: Operation }>('POST', '/v1/images/pull', req);
  promoteImage = (ref: string) => this.request<{ operation: Operation }>('POST', `/v1/images/${encodeURIComponent(ref)}/promote`, {});
  pruneImageCache = (dryRun: boolean) =>
    this.request<{ removed: number; freedBytes: number; kept: number; dryRun: boolean }>('POST', '/v1/image-cache/prune', { dryRun });
  deleteImage = (ref: string) => this.request<{ deleted: string }>('DELETE', `/v1/images/${encodeURIComponent(ref)}`);

  // ---- VMs -------------------------------------------------------------------------------
  /** VM names end up in ssh's argv and in paths: checked on arrival (see trust.ts). */
  vms = async () => (await this.request<{ vms: Vm[] }>('GET', '/v1/vms')).vms.map(checkVm);
  vm = async (ref: string) => checkVm(await this.request<Vm>('GET', `/v1/vms/${encodeURIComponent(ref)}`));
  createVm = (req: VmCreateRequest) => this.request<{ operation: Operation }>('POST', '/v1/vms', req);
  pauseVm = (ref: string, req: VmPauseRequest) => this.request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(ref)}/pause`, req);
  resumeVm = (ref: string) => this.request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(ref)}/resume`, {});
  snapshotVm = (ref: string, req: VmSnapshotRequest) => this.request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(ref)}/snapshots`, req);
  forkVm = (ref: string, req: VmForkRequest) => this.request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(ref)}/fork`, req);
  snapshots = async () => (await this.request<{ snapshots: Snapshot[] }>('GET', '/v1/snapshots')).snapshots;
  snapshot = (ref: string) => this.request<Snapshot>('GET', `/v1/snapshots/${encodeURIComponent(ref)}`);
  deleteSnapshot = (ref: string, force = false) => this.request<{ deleted: string }>('DELETE', `/v1/snapshots/${encodeURIComponent(ref)}?force=${force}`);
  warmImage = (ref: string, req: ImageWarmRequest) => this.request<{ operation: Operation }>('POST', `/v1/images/${encodeURIComponent(ref)}/warm`, req);
  bulk = (req: VmBulkRequest) => this.request<VmBulkResult>('POST', '/v1/vms/actions', req);
  setVm = (ref: string, req: VmSetRequest) => this.request<Vm>('PATCH', `/v1/vms/${encodeURIComponent(ref)}`, req);
  health = (ref: string) => this.request<GuestHealth>('GET', `/v1/vms/${encodeURIComponent(ref)}/health`);
  ports = (ref: string) => this.request<GuestPorts>('GET', `/v1/vms/${encodeURIComponent(ref)}/ports`);
  stats = (ref: string) => this.request<VmStats>('GET', `/v1/vms/${encodeURIComponent(ref)}/stats`);
  /** Serial console of a VM: the last `lines` lines, then new output while `follow` (until signal aborts). */
  async logs(ref: string, opts: { lines: number; follow: boolean; signal?: AbortSignal }, onChunk: (text: string) => void): Promise<void> {
    await this.vm(ref); // resolves the ref (and starts the daemon) with a proper error first
    await streamText(
      this.layout.socketPath,
      `/v1/vms/${encodeURIComponent(ref)}/logs?lines=${opts.lines}&follow=${opts.follow}`,
      this.nextOpId(),
      onChunk,
      opts.signal,
    );
  }
  prune = (dryRun: boolean) => this.request<{ pruned: Array<{ id: string; name: string }> }>('POST', '/v1/vms/prune', { dryRun });

  // ---- coding agents (docs/agents.md) -----------------------------------------------------
  /** The agents the daemon knows: built-in presets with the config's overrides, and the config's own. */
  agents = () => this.request<AgentList>('GET', '/v1/agents');
  /** Starts an agent in its tmux session in a running VM; an existing session of that name is reused. */
  startAgent = (vm: string, body: AgentStartRequest) => this.request<AgentStartResult>('POST', `/v1/vms/${encodeURIComponent(vm)}/agents`, body);
  /** The VM's tmux sessions (agents banger started carry their command line). */
  agentSessions = (vm: string) => this.request<AgentSessionList>('GET', `/v1/vms/${encodeURIComponent(vm)}/agents`);

  // ---- workspaces (docs/workspaces.md) ---------------------------------------------------
  /** What a prepare would ship from a host repository (no VM involved). */
  planWorkspace = (body: WorkspacePlanRequest) => this.request<WorkspacePlan>('POST', '/v1/workspace/plan', body);
  /** Ships a host repository into a running VM (an operation: onEvent sees its stages and progress). */
  async prepareWorkspace(vm: string, body: WorkspacePrepareRequest, onEvent?: (e: OperationEvent) => void): Promise<WorkspacePrepareResult> {
    return this.finish<WorkspacePrepareResult>(await this.startWorkspacePrepare(vm, body), onEvent);
  }
  /** The prepare's operation, accepted and running (the SDK follows it itself). */
  startWorkspacePrepare = (vm: string, body: WorkspacePrepareRequest) =>
    this.request<{ operation: Operation }>('POST', `/v1/vms/${encodeURIComponent(vm)}/workspace`, body);
  /** Base commit, the guest's changes and the host's drift. */
  workspace = (vm: string) => this.request<WorkspaceStatus>('GET', `/v1/vms/${encodeURIComponent(vm)}/workspace`);
  /**
   * The guest's work since the base. patch/commits: the text is written to `out` as it streams
   * (never whole in memory) and the answer names the commit it was computed from; branch: the host
   * repository gets refs/banger/<vm>/<name> and the answer names it.
   */
  async exportWorkspace(
    vm: string,
    body: WorkspaceExportRequest,
    out?: NodeJS.WritableStream,
    signal?: AbortSignal,
  ): Promise<{ format: 'patch' | 'commits'; commit: string } | ({ format: 'branch' } & WorkspaceBranchExport)> {
    const format = body.format ?? 'patch';
    const path = `/v1/vms/${encodeURIComponent(vm)}/workspace/export`;
    if (format === 'branch') return { format, ...(await this.request<WorkspaceBranchExport>('POST', path, body)) };
    if (!out) throw new BangerError('bad_request', `a ${format} export needs somewhere to write it`);
    await this.status(); // starts the daemon when it is not running (the raw request below does not)
    const { headers } = await postForBytes(this.layout.socketPath, path, body, this.nextOpId(), out, signal);
    const commit = String(headers['x-banger-commit'] ?? '');
    return { format, commit: /^[0-9a-f]{40,64}$/.test(commit) ? commit : '' };
  }

  // ---- guest processes (docs/processes.md, "Daemon API") ----------------------------------
  private procsPath(vm: string, proc?: string, tail = ''): string {
    return `/v1/vms/${encodeURIComponent(vm)}/procs${proc === undefined ? '' : `/${encodeURIComponent(proc)}`}${tail}`;
  }

  /** Starts a process and answers at once (it keeps running in the guest). */
  startProcess = (vm: string, body: Omit<ProcStartRequest, 'mode'>) => this.request<Proc>('POST', this.procsPath(vm), { ...body, mode: 'detach' });
  /** Runs a process to its end and answers its buffered result (exit code, output). */
  execProcess = (vm: string, body: Omit<ProcStartRequest, 'mode'>) =>
    this.request<ProcWaitResult & { result: NonNullable<ProcWaitResult['result']> }>('POST', this.procsPath(vm), { ...body, mode: 'wait' }, 0);

  /**
   * Runs a process and delivers its events as they happen (`start`, `stdout`/`stderr` with base64
   * data, then `exit`). Resolves with the process at its exit; an `error` event rejects; aborting
   * `signal` stops following (the process keeps running) and resolves with undefined.
   */
  async streamProcess(vm: string, body: Omit<ProcStartRequest, 'mode'>, onEvent: (e: ProcEvent) => void, signal?: AbortSignal): Promise<Proc | undefined> {
    return this.followProcEvents('POST', this.procsPath(vm), { ...body, mode: 'stream' }, onEvent, signal);
  }

  processes = async (vm: string) => (await this.request<{ procs: Proc[] }>('GET', this.procsPath(vm))).procs;
  process = (vm: string, proc: string) => this.request<Proc>('GET', this.procsPath(vm, proc));

  /** Output from the offsets (and with follow, until the process ended and all was sent); resolves with the process, or undefined when aborted. */
  processOutput(
    vm: string,
    proc: string,
    opts: { stdoutFrom?: number; stderrFrom?: number; follow?: boolean; signal?: AbortSignal },
    onEvent: (e: ProcEvent) => void,
  ): Promise<Proc | undefined> {
    const q = `?stdoutFrom=${opts.stdoutFrom ?? 0}&stderrFrom=${opts.stderrFrom ?? 0}${opts.follow ? '&follow=1' : ''}`;
    return this.followProcEvents('GET', this.procsPath(vm, proc, `/output${q}`), undefined, onEvent, opts.signal);
  }

  /** Appends data at offset of the process's stdin (bytes the guest already has are skipped); eof closes it after them. */
  writeProcessStdin = (vm: string, proc: string, offset: number, data: Buffer, eof?: boolean) =>
    this.request<{ offset: number }>('POST', this.procsPath(vm, proc, '/stdin'), { offset, data: data.toString('base64'), ...(eof ? { eof: true } : {}) });
  signalProcess = (vm: string, proc: string, signal: string | number) => this.request<Proc>('POST', this.procsPath(vm, proc, '/signal'), { signal });
  resizeProcess = async (vm: string, proc: string, rows: number, cols: number): Promise<void> => {
    await this.request('POST', this.procsPath(vm, proc, '/resize'), { rows, cols });
  };
  /**
   * Waits for the end (at most timeoutMs when given: then `result` is null and the process still
   * runs). Aborting `signal` stops waiting (the process keeps running).
   */
  waitProcess = (vm: string, proc: string, timeoutMs?: number, maxBuffer?: number, signal?: AbortSignal) =>
    this.request<ProcWaitResult>(
      'POST',
      this.procsPath(vm, proc, '/wait'),
      { ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(maxBuffer !== undefined ? { maxBuffer } : {}) },
      0,
      signal,
    );
  /** Removes a finished process and its output from the guest; `kill` ends a running one first. */
  forgetProcess = async (vm: string, proc: string, opts: { kill?: boolean } = {}): Promise<void> => {
    await this.request('DELETE', this.procsPath(vm, proc, opts.kill ? '?kill=1' : ''));
  };

  /**
   * Attaches to a process: output from the offsets arrives through the handle, `write` feeds its
   * stdin (PTY or pipe), `end` sends EOF, `close` detaches (the process keeps running). One writer
   * at a time: a second attach may read, and its writes end it with a `conflict` error.
   */
  async attachProcess(vm: string, proc: string, opts: { stdoutFrom?: number; stderrFrom?: number } = {}): Promise<AttachHandle> {
    await this.process(vm, proc); // resolves the refs (and starts the daemon) with a proper error first
    const path = this.procsPath(vm, proc, `/attach?stdoutFrom=${opts.stdoutFrom ?? 0}&stderrFrom=${opts.stderrFrom ?? 0}`);
    const { socket, head } = await upgrade(this.layout.socketPath, path, 'banger-attach', this.nextOpId());
    return openAttach(socket, head);
  }

  private async followProcEvents(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    onEvent: (e: ProcEvent) => void,
    signal?: AbortSignal,
  ): Promise<Proc | undefined> {
    let final: Proc | undefined;
    let failure: BangerError | undefined;
    const opId = this.nextOpId();
    const follow = () =>
      streamEvents(
        this.layout.socketPath,
        path,
        opId,
        (data) => {
          const e = data as ProcEvent;
          onEvent(e);
          if (e.type === 'exit') {
            final = e.proc;
            return false;
          }
          if (e.type === 'error') {
            failure = BangerError.fromBody(e.error);
            failure.opId ??= opId;
            return false;
          }
          return undefined;
        },
        { method, body, ...(signal ? { signal } : {}) },
      );
    try {
      await follow();
    } catch (e) {
      if (!isNotRunning(e) || this.layout.service || !this.autostart) throw e;
      const { startDaemon } = await import('./autostart.js');
      await startDaemon(this.layout, () => this.ping());
      await follow();
    }
    if (failure) throw failure;
    if (!final && !signal?.aborted) {
      throw new BangerError('unavailable', 'the daemon ended the process stream before the process exited', {
        opId,
        fix: 'follow it again with `banger vm proc logs -f`',
      });
    }
    return final;
  }

  // ---- files of a running VM (docs/processes.md, "Daemon API") ------------------------------
  private filesPath(ref: string, sub: string, query: Record<string, string | number | boolean | undefined>): string {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== false) q.set(k, v === true ? '1' : String(v));
    return `/v1/vms/${encodeURIComponent(ref)}/${sub}?${q}`;
  }
  /** Raw requests carry no retry: the daemon is started (when needed) by a small request first. */
  private async ensureDaemon(): Promise<void> {
    if (!(await this.ping())) await this.status();
  }
  /** A guest file's bytes as a stream; `done` gives its size and mode once the last byte came. */
  async readFile(ref: string, path: string): Promise<RawDownload<{ size?: number; mode?: number }>> {
    await this.ensureDaemon();
    return downloadRaw(this.layout.socketPath, this.filesPath(ref, 'files', { path }), this.nextOpId(), `reading ${path}`);
  }
  /** Writes `data` to a guest file (atomically: a temporary file renamed over it). */
  async writeFile(ref: string, path: string, data: import('node:stream').Readable, opts: { mode?: number; mkdirs?: boolean } = {}): Promise<{ size: number }> {
    await this.ensureDaemon();
    const q = this.filesPath(ref, 'files', { path, mode: opts.mode?.toString(8), mkdirs: opts.mkdirs });
    return (await uploadRaw(this.layout.socketPath, q, this.nextOpId(), data, `writing ${path}`)) as { size: number };
  }
  statFile = (ref: string, path: string) => this.request<GuestFileStat>('GET', this.filesPath(ref, 'files/stat', { path }));
  listFiles = (ref: string, path: string) => this.request<GuestDirList>('GET', this.filesPath(ref, 'files/list', { path }));
  makeDir = (ref: string, req: MkdirRequest) => this.request<object>('POST', `/v1/vms/${encodeURIComponent(ref)}/files/mkdir`, req);
  moveFile = (ref: string, req: MoveRequest) => this.request<object>('POST', `/v1/vms/${encodeURIComponent(ref)}/files/move`, req);
  removeFile = (ref: string, path: string, opts: { recursive?: boolean } = {}) =>
    this.request<object>('DELETE', this.filesPath(ref, 'files', { path, recursive: opts.recursive }));
  /** The guest's tar of `path`: HOSTILE bytes, unpack them only with src/archive/safe-extract.ts. */
  async archiveOut(ref: string, path: string): Promise<RawDownload<object>> {
    await this.ensureDaemon();
    return downloadRaw(this.layout.socketPath, this.filesPath(ref, 'archive', { path }), this.nextOpId(), `archive of ${path}`);
  }
  /** Unpacks a tar stream into the guest directory `path` (created when missing); `sameOwner` keeps the tar's owners. */
  async archiveIn(ref: string, path: string, tar: import('node:stream').Readable, opts: { sameOwner?: boolean } = {}): Promise<void> {
    await this.ensureDaemon();
    await uploadRaw(this.layout.socketPath, this.filesPath(ref, 'archive', { path, sameOwner: opts.sameOwner }), this.nextOpId(), tar, `archive into ${path}`);
  }
}
