/**
 * FakeSandboxApi: the part of BangerClient the MCP tools use (src/mcp/tools.ts `SandboxApi`), in
 * memory: one VM, a map of guest files, processes whose output the test sets. No daemon, no VM.
 * Methods the tests do not exercise throw, so a tool reaching for them fails loudly.
 */
import { Readable } from 'node:stream';
import { BangerError } from '../../src/api/errors.js';
import type { GuestDirList, GuestFileStat } from '../../src/api/file-schemas.js';
import type { Proc, ProcEvent, ProcWaitResult } from '../../src/api/proc-schemas.js';
import type { Vm } from '../../src/api/schemas.js';
import type { SandboxApi } from '../../src/mcp/tools.js';

export function fakeVm(name: string, workspace: string | null = '/root/repo', hostRepo = '/nonexistent-host-repo'): Vm {
  return {
    id: `${name}-id`,
    name,
    imageId: 'img',
    imageName: 'img',
    kernelName: 'k',
    state: 'running',
    vcpus: 2,
    memoryMib: 512,
    diskSizeBytes: 1 << 30,
    vmm: 'qemu',
    accel: 'tcg',
    pid: 1,
    ip: '10.0.0.2',
    nat: false,
    tap: null,
    lastError: null,
    dir: '/x',
    createdAt: '2026-01-01T00:00:00Z',
    startedAt: null,
    touchedAt: '2026-01-01T00:00:00Z',
    workspace: workspace ? { hostPath: hostRepo, guestPath: workspace, baseCommit: 'b'.repeat(40), mode: 'full', branch: null, preparedAt: '' } : null,
  };
}

interface FakeProc {
  proc: Proc;
  stdout: Buffer;
  stderr: Buffer;
}

const notFaked = (what: string) => () => {
  throw new Error(`FakeSandboxApi: ${what} is not faked`);
};

export class FakeSandboxApi implements SandboxApi {
  readonly vmsByName = new Map<string, Vm>();
  readonly files = new Map<string, { data: Buffer; mode: number }>();
  readonly procs = new Map<string, FakeProc>();
  /** What the next started process has produced and whether it has ended (set by the test). */
  nextProc: { stdout: string | Buffer; stderr?: string | Buffer; exitCode: number | null } = { stdout: '', exitCode: 0 };
  readonly started: Array<Record<string, unknown>> = [];
  readonly writes: string[] = [];

  constructor(vm: Vm = fakeVm('dev')) {
    this.vmsByName.set(vm.name, vm);
  }

  private getVm(ref: string): Vm {
    const vm = this.vmsByName.get(ref);
    if (!vm) throw new BangerError('not_found', `no VM ${ref}`);
    return vm;
  }

  vms = async () => [...this.vmsByName.values()];
  vm = async (ref: string) => this.getVm(ref);

  statFile = async (ref: string, path: string): Promise<GuestFileStat> => {
    this.getVm(ref);
    const f = this.files.get(path);
    if (f) return { type: 'file', mode: f.mode, size: f.data.length, mtimeMs: 0, uid: 0, gid: 0, linkTarget: null };
    if ([...this.files.keys()].some((k) => k.startsWith(`${path}/`)))
      return { type: 'dir', mode: 0o755, size: 0, mtimeMs: 0, uid: 0, gid: 0, linkTarget: null };
    throw new BangerError('not_found', `${path}: no such file`);
  };
  readFile = async (ref: string, path: string) => {
    this.getVm(ref);
    const f = this.files.get(path);
    if (!f) throw new BangerError('not_found', `${path}: no such file`);
    return { stream: Readable.from([f.data]), done: Promise.resolve({ size: f.data.length, mode: f.mode }) };
  };
  writeFile = async (ref: string, path: string, data: Readable, opts: { mode?: number } = {}) => {
    this.getVm(ref);
    const parts: Buffer[] = [];
    for await (const c of data) parts.push(Buffer.from(c as Buffer));
    const buf = Buffer.concat(parts);
    this.files.set(path, { data: buf, mode: opts.mode ?? 0o644 });
    this.writes.push(path);
    return { size: buf.length };
  };
  listFiles = async (ref: string, path: string): Promise<GuestDirList> => {
    this.getVm(ref);
    const names = [...this.files.keys()].filter((k) => k.startsWith(`${path}/`)).map((k) => k.slice(path.length + 1));
    return { entries: names.map((name) => ({ name, type: 'file' as const, mode: 0o644, size: 1, mtimeMs: 0 })), truncated: false };
  };

  startProcess = async (ref: string, body: Record<string, unknown>): Promise<Proc> => {
    this.getVm(ref);
    this.started.push(body);
    const id = `p${this.procs.size + 1}`;
    const stdout = Buffer.from(this.nextProc.stdout);
    const stderr = Buffer.from(this.nextProc.stderr ?? '');
    const ended = this.nextProc.exitCode !== null;
    const proc: Proc = {
      id,
      name: (body.name as string | undefined) ?? null,
      argv: null,
      shell: (body.shell as string | undefined) ?? null,
      pid: 100,
      pty: false,
      state: ended ? 'exited' : 'running',
      exitCode: this.nextProc.exitCode,
      signal: null,
      timedOut: false,
      code: null,
      startedMs: 1000,
      endedMs: ended ? 1250 : null,
      stdoutBytes: stdout.length,
      stderrBytes: stderr.length,
      truncated: false,
      stdin: 'null',
      stdinBytes: 0,
    };
    this.procs.set(id, { proc, stdout, stderr });
    return proc;
  };
  private getProc(ref: string, id: string): FakeProc {
    this.getVm(ref);
    const p = this.procs.get(id) ?? [...this.procs.values()].find((x) => x.proc.name === id);
    if (!p) throw new BangerError('not_found', `no process ${id}`);
    return p;
  }
  process = async (ref: string, id: string) => this.getProc(ref, id).proc;
  processes = async (ref: string) => {
    this.getVm(ref);
    return [...this.procs.values()].map((p) => p.proc);
  };
  waitProcess = async (ref: string, id: string): Promise<ProcWaitResult> => {
    const p = this.getProc(ref, id);
    return { proc: p.proc, result: null };
  };
  /** Sends each stream from its offset in chunks of 1000 bytes, then exit (as the daemon does without follow). */
  processOutput = async (
    ref: string,
    id: string,
    opts: { stdoutFrom?: number; stderrFrom?: number; signal?: AbortSignal },
    onEvent: (e: ProcEvent) => void,
  ): Promise<Proc | undefined> => {
    const p = this.getProc(ref, id);
    for (const stream of ['stdout', 'stderr'] as const) {
      const buf = p[stream];
      for (let at = (stream === 'stdout' ? opts.stdoutFrom : opts.stderrFrom) ?? 0; at < buf.length; at += 1000) {
        if (opts.signal?.aborted) return undefined;
        onEvent({ type: stream, offset: at, data: buf.subarray(at, at + 1000).toString('base64') });
      }
    }
    return p.proc;
  };

  createVm = notFaked('createVm') as unknown as SandboxApi['createVm'];
  finish = notFaked('finish') as unknown as SandboxApi['finish'];
  planWorkspace = notFaked('planWorkspace') as unknown as SandboxApi['planWorkspace'];
  prepareWorkspace = notFaked('prepareWorkspace') as unknown as SandboxApi['prepareWorkspace'];
  bulk = notFaked('bulk') as unknown as SandboxApi['bulk'];
  workspace = notFaked('workspace') as unknown as SandboxApi['workspace'];
  /** A patch export writes `patch`; a branch export names the ref it would create. */
  patch = 'diff --git a/x b/x\n';
  exportWorkspace = (async (vm: string, body: { format?: string; name?: string }, out?: NodeJS.WritableStream) => {
    this.getVm(vm);
    if (body.format === 'branch')
      return { format: 'branch', ref: `refs/banger/${vm}/${body.name ?? 'wip'}`, commit: 'c'.repeat(40), baseCommit: 'b'.repeat(40) };
    await new Promise<void>((resolve, reject) => (out as NodeJS.WritableStream).end(this.patch, () => resolve()).on?.('error', reject));
    return { format: 'patch', commit: 'c'.repeat(40) };
  }) as unknown as SandboxApi['exportWorkspace'];
  writeProcessStdin = notFaked('writeProcessStdin') as unknown as SandboxApi['writeProcessStdin'];
  signalProcess = notFaked('signalProcess') as unknown as SandboxApi['signalProcess'];
}
