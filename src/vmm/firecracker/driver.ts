import { constants } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openLogFile } from '../console-log.js';
import { type VmLaunchSpec, type VmmDriver, VmmError, type VmmHandle } from '../driver.js';
import { isHandleAlive, isProcessAlive, killAndWait, readTail, spawnDetached, waitForExit, waitForListener } from '../process.js';
import { FirecrackerApiClient } from './api-client.js';
import { buildJail, buildJailerArgs, hostPathOf, JAIL_PATHS, type JailerOptions, jailedSpec, jailIdFor, jailLayout, removeJail } from './jailer.js';
import { buildBootRequests, ctrlAltDelRequest, describeInstanceRequest, type FcRequest, instanceIdFor, instanceStateOf, resumeRequest } from './requests.js';

export interface FirecrackerDriverOptions {
  binaryPath: string;
  /** How long a fresh process may take to create its API socket. */
  startTimeoutMs?: number;
  /** Deadline of each API call. */
  apiTimeoutMs?: number;
  /** Start Firecracker through its jailer (./jailer.ts); absent: run it directly. */
  jailer?: JailerOptions;
  /** The jail was asked for but cannot be set up (e.g. vmm_user unknown): every launch fails with this, never unjailed. */
  jailerError?: Error;
}

/** sun_path is 108 bytes including the NUL. */
const MAX_SOCKET_PATH = 107;
const TAIL_BYTES = 2048;

/**
 * Where the output goes:
 * - The process's stdout/stderr append to `serialLogPath`. Firecracker writes the guest's serial
 *   console to stdout, and an O_APPEND fd is the only way to keep earlier boots (as QEMU's
 *   `append=on` does) and to let `banger vm logs` follow the file: Firecracker opens a
 *   `serial_out_path` or `log_path` itself with neither O_APPEND nor O_TRUNC, writing from offset 0.
 * - Firecracker's own log goes to `vmmLogPath` via PUT /logger, the first request. Because of that
 *   offset-0 opening, the file is emptied at each launch: it holds the latest launch only.
 * - What Firecracker prints before the logger is configured (bad arguments, API socket errors,
 *   panics) lands in the serial log, so a failed launch reports the tails of both files.
 * If both paths are the same file, no logger is configured and everything goes there.
 */
export class FirecrackerDriver implements VmmDriver {
  readonly kind = 'firecracker' as const;
  readonly rootDiskFormat = 'raw' as const;
  private readonly startTimeoutMs: number;
  private readonly apiTimeoutMs: number;

  constructor(private readonly opts: FirecrackerDriverOptions) {
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.apiTimeoutMs = opts.apiTimeoutMs ?? 10_000;
  }

  async launch(spec: VmLaunchSpec): Promise<VmmHandle> {
    if (this.opts.jailerError) throw this.opts.jailerError;
    const jailer = this.opts.jailer;
    const separateLog = spec.vmmLogPath !== spec.serialLogPath;
    let requests: FcRequest[];
    let apiSocket: string;
    let agentSocket: string;
    let layout: ReturnType<typeof jailLayout> | undefined;
    let argv: { command: string; args: string[] };
    try {
      if (spec.accel !== 'kvm') throw new Error(`Firecracker needs KVM, but this VM asks for ${spec.accel}`);
      if (jailer) {
        // Firecracker sees only the jail: every path it is given is inside it.
        layout = jailLayout(jailer, jailIdFor(spec.vmId));
        apiSocket = hostPathOf(layout, JAIL_PATHS.apiSocket);
        agentSocket = hostPathOf(layout, JAIL_PATHS.agentSocket);
        requests = buildBootRequests(jailedSpec(spec), separateLog ? { logger: { logPath: JAIL_PATHS.log } } : {});
        argv = { command: jailer.jailerBin, args: buildJailerArgs(jailer, jailIdFor(spec.vmId), ['--api-sock', JAIL_PATHS.apiSocket]) };
      } else {
        apiSocket = join(spec.runDir, 'fc.sock');
        agentSocket = spec.agentSocketPath;
        requests = buildBootRequests(spec, separateLog ? { logger: { logPath: spec.vmmLogPath } } : {});
        argv = { command: this.opts.binaryPath, args: ['--api-sock', apiSocket, '--id', instanceIdFor(spec.vmId)] };
      }
      for (const p of [apiSocket, agentSocket]) {
        if (Buffer.byteLength(p) > MAX_SOCKET_PATH) throw new Error(`socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes`);
      }
    } catch (e) {
      throw new VmmError(`cannot launch ${spec.name} with Firecracker: ${(e as Error).message}`);
    }

    const consoleStart = await sizeOf(spec.serialLogPath);
    let proc: { pid: number; startTime: string; bootId?: string };
    const cleanup = async () => {
      await this.removeSockets(apiSocket, agentSocket);
      if (jailer && layout) await removeJail(jailer, layout);
    };
    try {
      // Firecracker refuses to bind a path that exists; these are leftovers of an earlier run.
      await this.removeSockets(apiSocket, agentSocket);
      if (separateLog) await emptyLog(spec.vmmLogPath);
      if (jailer && layout) await buildJail(jailer, spec, layout, separateLog ? spec.vmmLogPath : undefined);
      proc = await spawnDetached(argv.command, argv.args, spec.serialLogPath);
    } catch (e) {
      await cleanup().catch(() => {});
      throw new VmmError(`Firecracker failed to start ${spec.name}: ${(e as Error).message}`, await this.launchTail(spec, consoleStart));
    }
    const handle: VmmHandle = {
      kind: 'firecracker',
      pid: proc.pid,
      pidStartTime: proc.startTime,
      ...(proc.bootId ? { bootId: proc.bootId } : {}),
      controlSocket: apiSocket,
      ...(layout ? { jailDir: layout.jailDir } : {}),
      agentSocket,
      agentTransport: 'hybrid-vsock',
      accel: 'kvm',
    };
    try {
      await waitForListener(apiSocket, this.startTimeoutMs, () => isProcessAlive(proc.pid, proc.startTime, proc.bootId));
      const api = this.api(handle);
      for (const r of requests) await api.send(r);
      return handle;
    } catch (e) {
      await killAndWait(proc.pid, proc.startTime, undefined, proc.bootId).catch(() => {});
      await cleanup().catch(() => {});
      throw new VmmError(`Firecracker failed to start ${spec.name}: ${(e as Error).message}`, await this.launchTail(spec, consoleStart));
    }
  }

  async shutdown(handle: VmmHandle, timeoutMs: number): Promise<boolean> {
    if (!(await this.alive(handle))) {
      await this.release(handle);
      return true;
    }
    const deadline = Date.now() + timeoutMs;
    const api = this.api(handle);
    // The API calls share the caller's deadline.
    const inTime = AbortSignal.timeout(Math.max(1, timeoutMs));
    try {
      // A paused guest cannot react to the key press.
      const state = instanceStateOf(await api.send(describeInstanceRequest(), inTime));
      if (state === 'Paused') await api.send(resumeRequest(), inTime);
      await api.send(ctrlAltDelRequest(), inTime);
    } catch {
      /* a dying Firecracker may not answer; the wait below decides */
    }
    const exited = await waitForExit(handle.pid, handle.pidStartTime, Math.max(0, deadline - Date.now()), handle.bootId);
    if (exited) await this.release(handle);
    return exited;
  }

  // Warm start (issue 15): implemented on the driver branch; until then every call says so.
  readonly snapshotSupport = { memory: false, diskLayers: 'copy' as const };
  async pause(_handle: VmmHandle): Promise<void> {
    throw new VmmError('Firecracker: pause is not implemented yet');
  }
  async resume(_handle: VmmHandle): Promise<void> {
    throw new VmmError('Firecracker: resume is not implemented yet');
  }
  async saveState(_handle: VmmHandle, _out: { statePath: string; memoryPath: string }): Promise<{ stateBytes: number; memoryBytes: number }> {
    throw new VmmError('Firecracker: saveState is not implemented yet');
  }

  async kill(handle: VmmHandle): Promise<void> {
    await killAndWait(handle.pid, handle.pidStartTime, undefined, handle.bootId);
    await this.release(handle);
  }

  /** After the process is gone: its sockets, and its jail (only one under this driver's jail base). */
  private async release(handle: VmmHandle): Promise<void> {
    await this.removeSockets(handle.controlSocket, handle.agentSocket);
    if (handle.jailDir && this.opts.jailer) await removeJail(this.opts.jailer, { jailDir: handle.jailDir });
  }

  private api(handle: VmmHandle): FirecrackerApiClient {
    return new FirecrackerApiClient(handle.controlSocket, { timeoutMs: this.apiTimeoutMs });
  }

  private alive(handle: VmmHandle): Promise<boolean> {
    return isHandleAlive(handle);
  }

  private async removeSockets(...paths: string[]): Promise<void> {
    for (const p of paths) await rm(p, { force: true });
  }

  private async launchTail(spec: VmLaunchSpec, consoleStart: number): Promise<string> {
    const parts: string[] = [];
    const out = await readFrom(spec.serialLogPath, consoleStart, TAIL_BYTES);
    if (out) parts.push(`[stdout/stderr and console: ${spec.serialLogPath}]\n${out}`);
    if (spec.vmmLogPath !== spec.serialLogPath) {
      const log = await readTail(spec.vmmLogPath, TAIL_BYTES);
      if (log) parts.push(`[Firecracker log: ${spec.vmmLogPath}]\n${log}`);
    }
    return parts.join('\n');
  }
}

/** Creates or empties Firecracker's log file, refusing a symlink or anything but a regular file. */
async function emptyLog(path: string): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  try {
    if (!(await fh.stat()).isFile()) throw new Error(`${path} is not a regular file`);
    await fh.truncate(0);
  } finally {
    await fh.close();
  }
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/** The last `maxBytes` written at or after `offset`: this launch's output, not an earlier boot's. */
async function readFrom(path: string, offset: number, maxBytes: number): Promise<string> {
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    fh = await openLogFile(path);
    if (!fh) return '';
    const { size } = await fh.stat();
    const start = Math.max(size < offset ? 0 : offset, size - maxBytes);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await fh.read(buf, 0, buf.length, start);
    return buf.subarray(0, bytesRead).toString('utf8').replace(/\0/g, '').trim();
  } catch {
    return '';
  } finally {
    await fh?.close();
  }
}
