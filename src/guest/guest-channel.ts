/**
 * The daemon's typed view of what a running guest's agent can do beyond health: supervised
 * processes, files and tar streams (contract: docs/processes.md). Implemented over the agent's
 * control channel and its data channels (src/guest/agent-data.ts); services above (processes,
 * files, workspaces, file sync) use only this interface, so their tests can swap in a fake.
 *
 * Everything returned was produced by the guest: bounded and validated by the implementation.
 */
import type { Readable } from 'node:stream';

export type GuestStdin = 'null' | 'pipe';

export interface GuestProcSpec {
  /** Host-chosen, unique per VM: `[a-z0-9][a-z0-9-]{0,39}`. A repeated start with the same spec answers the existing process. */
  id: string;
  name?: string;
  /** Exactly one of argv and shell. `shell` runs `/bin/sh -c`. */
  argv?: string[];
  shell?: string;
  cwd?: string;
  /** `K=V` entries on top of the agent's minimal base environment. */
  env?: string[];
  user?: string;
  stdin?: GuestStdin;
  pty?: { rows: number; cols: number };
  timeoutMs?: number;
  /** Bytes kept per stream in the guest (default 64 MiB). */
  outputLimit?: number;
}

export type GuestProcState = 'running' | 'exited' | 'lost';

export interface GuestProc {
  id: string;
  name: string | null;
  argv: string[] | null;
  shell: string | null;
  pid: number | null;
  pty: boolean;
  state: GuestProcState;
  exitCode: number | null;
  /** Number of the signal that ended the process. */
  signal: number | null;
  timedOut: boolean;
  /** `command_not_found`, `permission_denied`, `exec_failed`, or null. */
  code: string | null;
  startedMs: number;
  endedMs: number | null;
  stdoutBytes: number;
  stderrBytes: number;
  truncated: boolean;
  stdin: 'null' | 'open' | 'closed';
  stdinBytes: number;
}

export type OutputStream = 'stdout' | 'stderr';

export interface OutputOptions {
  stdoutFrom: number;
  stderrFrom: number;
  /** Keep going until the process ended and every byte was delivered. */
  follow: boolean;
  /** Attach: bytes to append to the process's stdin; the iterable's end sends EOF. */
  stdin?: AsyncIterable<Buffer>;
  signal?: AbortSignal;
}

export interface GuestStat {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  size: number;
  mtimeMs: number;
  uid: number;
  gid: number;
  linkTarget: string | null;
}

export interface GuestDirEntry {
  name: string;
  type: GuestStat['type'];
  mode: number;
  size: number;
  mtimeMs: number;
}

export interface GuestChannel {
  startProcess(spec: GuestProcSpec): Promise<GuestProc>;
  listProcesses(): Promise<GuestProc[]>;
  showProcess(id: string): Promise<GuestProc>;
  signalProcess(id: string, signal: number): Promise<GuestProc>;
  resizeProcess(id: string, rows: number, cols: number): Promise<void>;
  /** Idempotent by offset; answers the total bytes accepted. */
  writeStdin(id: string, offset: number, data: Buffer): Promise<number>;
  closeStdin(id: string): Promise<number>;
  forgetProcess(id: string): Promise<void>;
  /**
   * Delivers output from the offsets, in order per stream, at the consumer's pace (onData's
   * promise is awaited before more is read). Resolves with the process's info when the session
   * ends (follow: after the exit and the last byte; otherwise once the bytes present were sent).
   */
  output(id: string, opts: OutputOptions, onData: (stream: OutputStream, data: Buffer) => Promise<void> | void): Promise<GuestProc>;

  readFile(path: string, signal?: AbortSignal): Promise<{ stream: Readable; done: Promise<{ size: number; mode: number }> }>;
  writeFile(path: string, data: Readable, opts: { mode: number; mkdirs: boolean; signal?: AbortSignal }): Promise<{ size: number }>;
  /** The guest's `tar -c` of path: hostile bytes, unpack only with src/archive/safe-extract.ts. */
  tarOut(path: string, signal?: AbortSignal): Promise<{ stream: Readable; done: Promise<void> }>;
  tarIn(path: string, data: Readable, opts?: { sameOwner?: boolean; signal?: AbortSignal }): Promise<void>;
  /**
   * Runs argv (as root, PATH searched) in the guest directory cwd with `data` streamed to its stdin
   * and its stdout discarded: bytes reach the command as they arrive, never staged in a guest file.
   * Rejects with the command's stderr when it exits non-zero.
   */
  pipeIn(argv: string[], cwd: string, data: Readable, opts?: { signal?: AbortSignal }): Promise<void>;
  stat(path: string): Promise<GuestStat>;
  list(path: string): Promise<{ entries: GuestDirEntry[]; truncated: boolean }>;
  mkdir(path: string, opts?: { mode?: number; parents?: boolean }): Promise<void>;
  move(from: string, to: string, opts?: { overwrite?: boolean }): Promise<void>;
  remove(path: string, opts?: { recursive?: boolean }): Promise<void>;
}
