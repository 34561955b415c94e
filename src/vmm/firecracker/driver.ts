import { constants } from 'node:fs';
import { type FileHandle, link, lstat, open, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { BangerError } from '../../api/errors.js';
import { openLogFile } from '../console-log.js';
import { type VmLaunchSpec, type VmmDriver, VmmError, type VmmHandle } from '../driver.js';
import { isHandleAlive, isProcessAlive, killAndWait, readTail, spawnDetached, waitForExit, waitForListener } from '../process.js';
import { FirecrackerApiClient } from './api-client.js';
import { buildJail, buildJailerArgs, hostPathOf, JAIL_PATHS, type JailerOptions, jailedSpec, jailIdFor, jailLayout, removeJail } from './jailer.js';
import {
  buildBootRequests,
  buildRestoreRequests,
  ctrlAltDelRequest,
  describeInstanceRequest,
  type FcInstanceState,
  type FcRequest,
  instanceIdFor,
  instanceStateOf,
  pauseRequest,
  restoreDrivePatches,
  restoreMismatches,
  resumeRequest,
  snapshotCreateRequest,
  vmConfigRequest,
} from './requests.js';

export interface FirecrackerDriverOptions {
  binaryPath: string;
  /** How long a fresh process may take to create its API socket. */
  startTimeoutMs?: number;
  /** Deadline of each API call. */
  apiTimeoutMs?: number;
  /** Deadline of PUT /snapshot/create, which writes all of the guest's memory before it answers. */
  snapshotTimeoutMs?: number;
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
  private readonly snapshotTimeoutMs: number;

  constructor(private readonly opts: FirecrackerDriverOptions) {
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.apiTimeoutMs = opts.apiTimeoutMs ?? 10_000;
    this.snapshotTimeoutMs = opts.snapshotTimeoutMs ?? 300_000;
  }

  async launch(spec: VmLaunchSpec): Promise<VmmHandle> {
    if (this.opts.jailerError) throw this.opts.jailerError;
    const jailer = this.opts.jailer;
    const separateLog = spec.vmmLogPath !== spec.serialLogPath;
    let requests: FcRequest[];
    /** The spec as Firecracker sees it (paths inside the jail under the jailer). */
    let fcSpec: VmLaunchSpec;
    let apiSocket: string;
    let agentSocket: string;
    let layout: ReturnType<typeof jailLayout> | undefined;
    let argv: { command: string; args: string[] };
    try {
      if (spec.accel !== 'kvm') throw new Error(`Firecracker needs KVM, but this VM asks for ${spec.accel}`);
      if (spec.restore) await checkSnapshotFiles(spec.restore);
      const logger = (logPath: string) => (separateLog ? { logger: { logPath } } : {});
      const build = (s: VmLaunchSpec, logPath: string) =>
        s.restore ? buildRestoreRequests(s, s.restore, logger(logPath)) : buildBootRequests(s, logger(logPath));
      if (jailer) {
        // Firecracker sees only the jail: every path it is given is inside it.
        layout = jailLayout(jailer, jailIdFor(spec.vmId));
        apiSocket = hostPathOf(layout, JAIL_PATHS.apiSocket);
        agentSocket = hostPathOf(layout, JAIL_PATHS.agentSocket);
        fcSpec = jailedSpec(spec);
        requests = build(fcSpec, JAIL_PATHS.log);
        argv = { command: jailer.jailerBin, args: buildJailerArgs(jailer, jailIdFor(spec.vmId), ['--api-sock', JAIL_PATHS.apiSocket]) };
      } else {
        apiSocket = join(spec.runDir, 'fc.sock');
        agentSocket = spec.agentSocketPath;
        fcSpec = spec;
        requests = build(fcSpec, spec.vmmLogPath);
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
      if (fcSpec.restore) await this.fitRestoredDevices(api, fcSpec);
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

  /**
   * Warm start (docs/firecracker.md): memory snapshots through the API; disks have no layers here
   * (raw files), so the caller copies them while the VM is paused.
   */
  readonly snapshotSupport = { memory: true, diskLayers: 'copy' as const };

  /** PATCH /vm Paused, unless GET / says it already is. */
  async pause(handle: VmmHandle): Promise<void> {
    await this.setRunState(handle, 'Paused');
  }

  /** PATCH /vm Resumed, unless GET / says it already runs (a restored VM starts Paused). */
  async resume(handle: VmmHandle): Promise<void> {
    await this.setRunState(handle, 'Running');
  }

  /**
   * PUT /snapshot/create (Full) of a PAUSED VM. It REFUSES a VM that is not paused rather than
   * pausing it: the caller pauses, then quiesces or copies what it must (the disks) before the
   * state is saved, and decides when the guest runs again; a hidden pause would hide that order.
   * Both files are created here first, exclusively (O_EXCL|O_NOFOLLOW, 0600, an existing file is
   * never overwritten); Firecracker then writes into them (it opens with create+truncate). Under
   * the jailer they are hard-linked into the chroot for the time of the call (a leftover entry
   * there is unlinked, never followed) and lent to the jail's user, then unlinked and taken back
   * (owner the daemon, 0600). Afterwards both are fsynced. On any failure both files (and the
   * links in the jail) are removed. Leaves the VM paused.
   */
  async saveState(handle: VmmHandle, out: { statePath: string; memoryPath: string }): Promise<{ stateBytes: number; memoryBytes: number }> {
    const outPaths = [out.statePath, out.memoryPath];
    if (!outPaths.every((p) => isAbsolute(p)) || resolve(out.statePath) === resolve(out.memoryPath)) {
      throw new VmmError(`saveState needs two different absolute paths, not ${JSON.stringify(out)}`);
    }
    if (!(await this.alive(handle))) throw new VmmError(`cannot save the state of Firecracker pid ${handle.pid}: it is not running`);
    const jailer = this.opts.jailer;
    if (handle.jailDir && !jailer) {
      throw new VmmError(
        `Firecracker pid ${handle.pid} runs in the jail ${handle.jailDir}, but this driver has no jailer configured: restart the daemon with the same jailer settings`,
      );
    }
    const state = instanceStateOf(await this.api(handle).send(describeInstanceRequest()));
    if (state !== 'Paused') {
      throw new BangerError('precondition_failed', `cannot save the state of the VM of Firecracker pid ${handle.pid}: it is ${state}, not paused`, {
        fix: 'pause the VM first (saveState never pauses it itself)',
      });
    }
    const files: FileHandle[] = [];
    const created: string[] = [];
    const lentInJail: string[] = [];
    try {
      for (const p of outPaths) {
        try {
          files.push(await open(p, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
            throw new BangerError('conflict', `cannot save a VM state to ${p}: the file exists`, { fix: 'choose a new path; saveState never overwrites' });
          }
          throw e;
        }
        created.push(p);
      }
      let target = out;
      if (handle.jailDir && jailer) {
        const rel = relative(jailer.chrootBaseDir, handle.jailDir);
        if (!rel || rel.startsWith('..') || isAbsolute(rel)) throw new VmmError(`the jail ${handle.jailDir} is not under ${jailer.chrootBaseDir}`);
        target = { statePath: JAIL_PATHS.saveState, memoryPath: JAIL_PATHS.saveMemory };
        const chroot = join(handle.jailDir, 'root');
        for (const [i, jailPath] of [target.statePath, target.memoryPath].entries()) {
          const inJail = hostPathOf({ jailDir: handle.jailDir, chrootDir: chroot }, jailPath);
          // Whatever the jailed process put at this name is unlinked (rm does not follow links); if it
          // races to put something back, link() fails with EEXIST rather than following it.
          await rm(inJail, { force: true });
          try {
            await link(outPaths[i] as string, inJail);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'EXDEV') {
              throw new BangerError('precondition_failed', `cannot save a VM state to ${outPaths[i]}: it is on another filesystem than the jail ${chroot}`, {
                fix: 'keep snapshots on the filesystem of the jail base dir (the state dir)',
              });
            }
            throw e;
          }
          lentInJail.push(inJail);
          await (files[i] as FileHandle).chown(jailer.uid, jailer.gid);
        }
      }
      await this.api(handle, this.snapshotTimeoutMs).send(snapshotCreateRequest(target));
      for (const p of lentInJail.splice(0)) await rm(p, { force: true });
      const sizes: number[] = [];
      for (const f of files) {
        if (handle.jailDir) {
          await f.chown(process.getuid?.() ?? 0, process.getgid?.() ?? 0);
          await f.chmod(0o600);
        }
        await f.sync();
        sizes.push((await f.stat()).size);
      }
      const [stateBytes = 0, memoryBytes = 0] = sizes;
      if (stateBytes === 0 || memoryBytes === 0) {
        throw new VmmError(`Firecracker answered PUT /snapshot/create but wrote ${stateBytes} state and ${memoryBytes} memory bytes`);
      }
      return { stateBytes, memoryBytes };
    } catch (e) {
      for (const p of [...lentInJail, ...created]) await rm(p, { force: true }).catch(() => {});
      if (e instanceof VmmError || e instanceof BangerError) throw e;
      throw new VmmError(`cannot save the state of Firecracker pid ${handle.pid}: ${(e as Error).message}`);
    } finally {
      for (const f of files) await f.close().catch(() => {});
    }
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

  private api(handle: VmmHandle, timeoutMs = this.apiTimeoutMs): FirecrackerApiClient {
    return new FirecrackerApiClient(handle.controlSocket, { timeoutMs });
  }

  private async setRunState(handle: VmmHandle, want: Exclude<FcInstanceState, 'Not started'>): Promise<void> {
    if (!(await this.alive(handle))) throw new VmmError(`Firecracker pid ${handle.pid} is not running`);
    const api = this.api(handle);
    const state = instanceStateOf(await api.send(describeInstanceRequest()));
    if (state === want) return;
    if (state === 'Not started') throw new VmmError(`Firecracker pid ${handle.pid} has not started a guest`);
    await api.send(want === 'Paused' ? pauseRequest() : resumeRequest());
  }

  /**
   * After PUT /snapshot/load: the loaded devices must be the VM's (GET /vm/config; the load keeps
   * the saved ones), and each drive whose saved path is not this VM's disk is switched to it
   * (PATCH /drives/{id}) while the vCPUs are still paused.
   */
  private async fitRestoredDevices(api: FirecrackerApiClient, fcSpec: VmLaunchSpec): Promise<void> {
    const config = await api.send(vmConfigRequest());
    const problems = restoreMismatches(fcSpec, config);
    if (problems.length > 0) throw new Error(`the snapshot does not fit this VM: ${problems.join('; ')}`);
    for (const r of restoreDrivePatches(fcSpec, config)) await api.send(r);
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

/** A restore's files: absolute paths of regular files (a symlink is refused: Firecracker would follow it). */
async function checkSnapshotFiles(restore: { statePath: string; memoryPath: string }): Promise<void> {
  for (const p of [restore.statePath, restore.memoryPath]) {
    if (!isAbsolute(p)) throw new Error(`snapshot file ${JSON.stringify(p)} is not an absolute path`);
    const st = await lstat(p).catch(() => undefined);
    if (!st?.isFile()) throw new Error(`snapshot file ${p} is ${st ? 'not a regular file' : 'missing'}`);
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
