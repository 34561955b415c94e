/** A VM handle: lifecycle, commands, processes, files, workspace, ports and console logs. */

import { BangerError } from '../api/errors.js';
import type { Proc, ProcStartRequest } from '../api/proc-schemas.js';
import type { GuestHealth, GuestPorts, Snapshot, VmAction, VmForkResult, Vm as VmInfo, VmStats } from '../api/schemas.js';
import type { BangerClient } from '../client/client.js';
import { checkVm } from '../client/trust.js';
import { Agents } from './agents.js';
import { Files } from './files.js';
import { OperationHandle } from './operation.js';
import { commandSpec, type ExecResult, envList, Process, type WaitOptions } from './process.js';
import { abortable, aborted, asyncDispose, type CallOptions, EventQueue, throwIfAborted } from './util.js';
import { Workspace } from './workspace.js';

export type { Snapshot, VmInfo };

/** What disposing a handle does to its VM (`await using`, `dispose()`). */
export type DisposeAction = 'delete' | 'stop' | 'none';

export interface CommandOptions extends CallOptions {
  /** Working directory in the guest (default the user's home). */
  cwd?: string;
  env?: Record<string, string> | readonly string[];
  /** A user name or uid in the guest (default root). */
  user?: string;
  /** The process's own time limit in the guest (it is killed when it passes: `timedOut`). Separate from request timeouts. */
  timeoutMs?: number;
}

export interface ExecOptions extends CommandOptions {
  /** Bytes given on stdin (then EOF); without it stdin is /dev/null. */
  input?: string | Uint8Array;
  /** Bytes of stdout and of stderr kept in the result (default and at most 4 MiB each: MAX_RESULT_BUFFER). */
  maxBuffer?: number;
  /** A name for the process (`vm.process(name)` finds it while it runs). */
  name?: string;
}

export interface SpawnOptions extends CommandOptions {
  /** A name to find it by later, from any program: `vm.process(name)`. */
  name?: string;
  /** Keep stdin open for `write`/`end` (default: /dev/null). */
  stdin?: boolean;
  /** Run under a terminal of this size. */
  pty?: { rows: number; cols: number };
  /** Bytes of each output stream the guest keeps. */
  outputLimit?: number;
}

export interface PauseOptions extends CallOptions {
  /**
   * Save the guest's state and RAM to disk and let the VMM exit (state `suspended`: its memory is
   * free) instead of only stopping its vCPUs (`paused`). `resume()` continues either.
   */
  toDisk?: boolean;
}

export interface SnapshotOptions extends CallOptions {
  /** The snapshot's name (default: one the daemon makes from the VM's). */
  name?: string;
  /**
   * true (default): disks, memory and device state; a VM made from it continues where this one was.
   * false: the guest's filesystems are frozen and only the disk layers kept; a VM made from it boots cold.
   */
  memory?: boolean;
}

export interface ForkOptions extends CallOptions {
  /** How many clones (1..16, default 1). */
  count?: number;
  /** Their names, as many as `count` (default `<source>-fork-<k>`); without `count`, one clone per name. */
  names?: string[];
  /** What disposing a clone does (default 'delete', as for `vms.create`: the clones are this program's). */
  dispose?: DisposeAction;
}

/** One clone of a fork: its `Vm` handle when it was made, else the error that stopped it. */
export type ForkClone = { name: string; ok: true; vm: Vm } | { name: string; ok: false; error: BangerError };

export interface ForkResult extends AsyncDisposable {}

/**
 * What `vm.fork()` made: a clone that failed does not fail the others (nor the fork), so check
 * `failed` (or `results`). `await using fork = await vm.fork(…)` disposes every clone made (each as
 * its `disposeAction` says; default delete).
 */
// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: AsyncDisposable for TypeScript, as Vm above.
export class ForkResult {
  /** One entry per requested clone, in order. */
  readonly results: readonly ForkClone[];

  constructor(
    /** The transient snapshot the clones were restored from (it lives only inside the fork's operation). */
    readonly snapshot: string,
    results: readonly ForkClone[],
  ) {
    this.results = results;
  }

  /** The clones that were made (running and re-identified). */
  get vms(): Vm[] {
    return this.results.flatMap((r) => (r.ok ? [r.vm] : []));
  }
  /** The clones that failed, with their errors. */
  get failed(): Array<{ name: string; error: BangerError }> {
    return this.results.flatMap((r) => (r.ok ? [] : [{ name: r.name, error: r.error }]));
  }

  /** Disposes every clone made (all are tried; the first error is thrown after). Idempotent. */
  async dispose(): Promise<void> {
    const outcomes = await Promise.allSettled(this.vms.map((v) => v.dispose()));
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) throw failure.reason;
  }

  [asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/**
 * `await using vm = …` disposes the VM: the method is defined under `asyncDispose` (the runtime's
 * Symbol.asyncDispose, or the registry symbol Node uses where it has none); this declaration gives
 * it its standard type, so the class is AsyncDisposable for TypeScript.
 */
export interface Vm extends AsyncDisposable {}

/** A handle on one VM. It holds the VM's name; the VM itself lives in the daemon. */
// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: see the interface above.
export class Vm {
  /** Read and write the guest's files. */
  readonly files: Files;
  /** The git workspace in the guest. */
  readonly workspace: Workspace;
  /** Coding agents in the guest's tmux sessions (docs/agents.md). */
  readonly agents: Agents;
  private last: VmInfo;

  constructor(
    private readonly client: BangerClient,
    info: VmInfo,
    /** What `dispose()` (and `await using`) does: `vms.create` defaults to 'delete', `vms.get` to 'none'. */
    public disposeAction: DisposeAction = 'none',
  ) {
    this.last = info;
    this.files = new Files(client, info.name);
    this.workspace = new Workspace(client, info.name);
    this.agents = new Agents(client, info.name);
  }

  get name(): string {
    return this.last.name;
  }
  get id(): string {
    return this.last.id;
  }
  /** The VM as of the last fetch (create, get, refresh, or a lifecycle call). */
  get info(): VmInfo {
    return this.last;
  }
  /** The guest's address on the bridge (null while stopped). */
  get ip(): string | null {
    return this.last.ip;
  }

  /** Fetches the VM again (state, ip, workspace). */
  async refresh(o: CallOptions = {}): Promise<VmInfo> {
    this.last = await abortable(this.client.vm(this.id), o.signal);
    return this.last;
  }

  private async act(action: VmAction, o: { force?: boolean } & CallOptions): Promise<void> {
    await bulkAction(this.client, action, this.id, o);
    if (action !== 'delete') await this.refresh(o).catch(() => undefined);
  }

  start(o: CallOptions = {}): Promise<void> {
    return this.act('start', o);
  }
  stop(o: CallOptions = {}): Promise<void> {
    return this.act('stop', o);
  }
  restart(o: CallOptions = {}): Promise<void> {
    return this.act('restart', o);
  }
  kill(o: CallOptions = {}): Promise<void> {
    return this.act('kill', o);
  }
  /** Deletes the VM and its disks (`force`: also when running). */
  delete(o: { force?: boolean } & CallOptions = {}): Promise<void> {
    return this.act('delete', { force: true, ...o });
  }

  /**
   * Stops the guest's vCPUs (`paused`; the VMM stays), or with `toDisk` saves its state and RAM and
   * lets the VMM exit (`suspended`). An operation; `info` is the VM as the daemon left it.
   */
  pause(o: PauseOptions = {}): OperationHandle<void> {
    return new OperationHandle(
      this.client,
      () => this.client.pauseVm(this.id, { toDisk: !!o.toDisk }),
      (r) => {
        this.last = checkVm(r as VmInfo);
      },
      o.signal,
    );
  }

  /** Continues a paused or suspended VM where it was (its identity kept; only its clock is set). An operation. */
  resume(o: CallOptions = {}): OperationHandle<void> {
    return new OperationHandle(
      this.client,
      () => this.client.resumeVm(this.id),
      (r) => {
        this.last = checkVm(r as VmInfo);
      },
      o.signal,
    );
  }

  /**
   * An immutable snapshot of the VM (disks, and by default memory and device state); the VM keeps
   * running. An operation giving the snapshot (`banger.snapshots`, `vms.create({ fromSnapshot })`).
   */
  snapshot(o: SnapshotOptions = {}): OperationHandle<Snapshot> {
    return new OperationHandle(
      this.client,
      () => this.client.snapshotVm(this.id, { ...(o.name !== undefined ? { name: o.name } : {}), ...(o.memory !== undefined ? { memory: o.memory } : {}) }),
      (r) => r as Snapshot,
      o.signal,
      true,
      (r) => this.client.deleteSnapshot((r as Snapshot).id, true),
    );
  }

  /**
   * `count` clones of this running VM, each re-identified (hostname, machine-id, MAC, address, SSH
   * host key) before it is published; this VM keeps running. An operation giving a `ForkResult`
   * whose clones dispose as `dispose` says (default 'delete'). Aborting cancels the fork and deletes
   * the clones it had made by then.
   */
  fork(o: ForkOptions = {}): OperationHandle<ForkResult> {
    return new OperationHandle(
      this.client,
      () => {
        // Names alone say how many (the API wants both, equal).
        const count = o.count ?? o.names?.length;
        return this.client.forkVm(this.id, { ...(count !== undefined ? { count } : {}), ...(o.names ? { names: o.names } : {}) });
      },
      (r) => forkResult(this.client, r as VmForkResult, o.dispose ?? 'delete'),
      o.signal,
      true,
      // An aborted fork: the clones made before the cancel reached them are nobody's.
      (r) =>
        Promise.allSettled((r as VmForkResult).results.flatMap((c) => (c.ok && c.vm ? [bulkAction(this.client, 'delete', c.vm.id, { force: true })] : []))),
    );
  }

  /**
   * Runs a command to its end and gives its result (a string runs under `sh -c`, an array is an
   * argv). A non-zero exit is a result, not an error: call `check()` for one. Aborting `signal`
   * kills the command's whole process group in the guest, waits until it is gone, and rejects
   * with `cancelled`.
   */
  async exec(command: string | readonly string[], o: ExecOptions = {}): Promise<ExecResult> {
    throwIfAborted(o.signal, 'exec');
    const proc = await this.client.startProcess(this.name, {
      ...startSpec(command, o),
      stdin: o.input !== undefined ? 'pipe' : 'null',
      ...(o.name ? { name: o.name } : {}),
    });
    const handle = new Process(this.client, this.name, proc.id, proc.name);
    try {
      if (o.input !== undefined) {
        await handle.write(o.input, o);
        await handle.end(o);
      }
      const result = await handle.wait({ ...(o.maxBuffer !== undefined ? { maxBuffer: o.maxBuffer } : {}), ...(o.signal ? { signal: o.signal } : {}) });
      // The guest keeps at most 256 processes per boot: an unnamed exec's record goes with its
      // result (a named one stays, for `vm.process(name)`).
      if (!o.name) await handle.forget().catch(() => {});
      return result;
    } catch (e) {
      if (!o.signal?.aborted) throw e;
      await killAndWait(handle);
      if (!o.name) await handle.forget().catch(() => {});
      throw aborted(o.signal, `exec of ${JSON.stringify(typeof command === 'string' ? command : command.join(' '))}`);
    }
  }

  /**
   * Starts a command and returns at once with its handle (the process keeps running in the guest,
   * beyond this program). As with child_process.spawn, aborting `signal` later kills it.
   */
  async spawn(command: string | readonly string[], o: SpawnOptions = {}): Promise<Process> {
    throwIfAborted(o.signal, 'spawn');
    const proc = await this.client.startProcess(this.name, {
      ...startSpec(command, o),
      stdin: o.stdin ? 'pipe' : 'null',
      ...(o.name ? { name: o.name } : {}),
      ...(o.pty ? { pty: o.pty } : {}),
      ...(o.outputLimit !== undefined ? { outputLimit: o.outputLimit } : {}),
    });
    const handle = new Process(this.client, this.name, proc.id, proc.name);
    if (o.signal) {
      const signal = o.signal;
      if (signal.aborted) await killAndWait(handle);
      else signal.addEventListener('abort', () => void handle.kill().catch(() => {}), { once: true });
    }
    return handle;
  }

  /** A handle on a process started earlier (by this program or another), by id or name: `not_found` when the guest has none. */
  async process(idOrName: string, o: CallOptions = {}): Promise<Process> {
    const p = await abortable(this.client.process(this.name, idOrName), o.signal);
    return new Process(this.client, this.name, p.id, p.name);
  }

  /** The guest's processes (running and finished, until forgotten). */
  processes(o: CallOptions = {}): Promise<Proc[]> {
    return abortable(this.client.processes(this.name), o.signal);
  }

  /** Sockets listening in the guest (with `<name>.vm:<port>` endpoints and detected URLs). */
  ports(o: CallOptions = {}): Promise<GuestPorts['ports']> {
    return abortable(this.client.ports(this.name), o.signal).then((r) => r.ports);
  }

  health(o: CallOptions = {}): Promise<GuestHealth> {
    return abortable(this.client.health(this.name), o.signal);
  }

  stats(o: CallOptions = {}): Promise<VmStats> {
    return abortable(this.client.stats(this.name), o.signal);
  }

  /** The last `lines` lines of the serial console (default 200). */
  async logs(o: { lines?: number } & CallOptions = {}): Promise<string> {
    let text = '';
    await this.client.logs(this.name, { lines: o.lines ?? 200, follow: false, ...(o.signal ? { signal: o.signal } : {}) }, (c) => {
      text += c;
    });
    throwIfAborted(o.signal, 'reading logs');
    return text;
  }

  /** The console's last `lines` lines, then new output as it comes, until `signal` aborts or the loop breaks. */
  async *followLogs(o: { lines?: number } & CallOptions = {}): AsyncGenerator<string> {
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const queue = new EventQueue<string>(4096, () => stop.abort());
    this.client
      .logs(this.name, { lines: o.lines ?? 200, follow: true, signal: stop.signal }, (c) => queue.push(c))
      .then(
        () => queue.end(),
        (e: unknown) => queue.fail(e),
      );
    try {
      yield* queue.drain();
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      stop.abort();
    }
  }

  /** Does what `disposeAction` says: delete the VM, stop it, or nothing. Idempotent (a VM already gone is fine). */
  async dispose(): Promise<void> {
    const action = this.disposeAction;
    if (action === 'none') return;
    this.disposeAction = 'none';
    try {
      await (action === 'delete' ? this.delete({ force: true }) : this.stop());
    } catch (e) {
      if (!(e instanceof BangerError && e.code === 'not_found')) throw e;
    }
  }

  [asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

function startSpec(command: string | readonly string[], o: CommandOptions): Omit<ProcStartRequest, 'mode'> {
  const env = envList(o.env);
  return {
    ...commandSpec(command),
    ...(o.cwd ? { cwd: o.cwd } : {}),
    ...(env ? { env } : {}),
    ...(o.user ? { user: o.user } : {}),
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
  };
}

/** SIGKILL to the process group (the agent signals the group), then until the guest reports it ended (at most ~10 s). */
async function killAndWait(p: Process): Promise<void> {
  try {
    const after = await p.kill();
    if (after.state === 'running') await p.wait({ timeoutMs: 10_000 } satisfies WaitOptions);
  } catch {
    // Already ended (or the VM went away): nothing left to stop.
  }
}

function forkResult(client: BangerClient, r: VmForkResult, dispose: DisposeAction): ForkResult {
  const clones = r.results.map((c): ForkClone => {
    if (c.ok && c.vm) return { name: c.name, ok: true, vm: new Vm(client, checkVm(c.vm), dispose) };
    const error = c.error ? BangerError.fromBody(c.error) : new BangerError('internal', `the daemon reported no VM and no error for clone ${c.name}`);
    return { name: c.name, ok: false, error };
  });
  return new ForkResult(r.snapshot, clones);
}

/** One lifecycle action through `/v1/vms/actions`; a refused one throws the daemon's error. */
export async function bulkAction(client: BangerClient, action: VmAction, ref: string, o: { force?: boolean } & CallOptions = {}): Promise<void> {
  const r = await abortable(client.bulk({ action, refs: [ref], force: !!o.force }), o.signal);
  const one = r.results[0];
  if (!one) throw new BangerError('internal', `the daemon answered no result for ${action} ${ref}`);
  if (!one.ok) {
    const e = one.error ? BangerError.fromBody(one.error) : new BangerError('internal', `${action} ${ref} failed`);
    e.opId ??= client.lastOpId;
    throw e;
  }
}
