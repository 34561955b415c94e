import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type VmLaunchSpec, type VmmDriver, VmmError, type VmmHandle } from '../driver.js';
import { isHandleAlive, isProcessAlive, killAndWait, readTail, spawnDetached, waitForExit, waitForSocket } from '../process.js';
import { AGENT_DATA_PORTS, agentDataSocketPath, buildQemuArgs } from './args.js';
import { QmpClient } from './qmp.js';
import { type QemuConfinement, QemuConfinementCheck } from './sandbox.js';

export interface QemuDriverOptions {
  /**
   * `vmm_user`: when the daemon runs as root, QEMU drops to this user (`-runas`) once it has opened
   * its disks, TAP, sockets and console. Ignored when the daemon is not root: QEMU then already
   * runs as the daemon's own unprivileged user, and only root may change uid.
   */
  vmmUser?: string;
  /** Checks (once) that this QEMU accepts the sandbox and the user; injectable for tests. */
  confinementCheck?: QemuConfinementCheck;
  /** Whether the daemon runs as root (default: its effective uid is 0). */
  isRoot?: () => boolean;
}

/**
 * Every QEMU runs under the seccomp sandbox of ./sandbox.ts (a QEMU without seccomp support is
 * refused with a BangerError, never run unsandboxed). Under `-runas` QEMU's uid changes after
 * start-up; everything the daemon does with it still works as root: liveness reads the
 * world-readable /proc/<pid>/stat, kill is SIGKILL from root, and QMP and the agent socket were
 * created (as root-owned sockets) before the drop.
 */
export class QemuDriver implements VmmDriver {
  readonly kind = 'qemu' as const;
  readonly rootDiskFormat = 'qcow2' as const;
  private readonly check: QemuConfinementCheck;

  constructor(
    private readonly qemuBin: string,
    private readonly opts: QemuDriverOptions = {},
  ) {
    this.check = opts.confinementCheck ?? new QemuConfinementCheck();
  }

  /** How this daemon's QEMUs are confined: the sandbox always, the privilege drop only as root with vmm_user set. */
  confinement(): QemuConfinement {
    const isRoot = this.opts.isRoot?.() ?? process.geteuid?.() === 0;
    return this.opts.vmmUser && isRoot ? { runAs: this.opts.vmmUser } : {};
  }

  async launch(spec: VmLaunchSpec): Promise<VmmHandle> {
    const confinement = this.confinement();
    // Before anything is started: a QEMU that cannot be sandboxed fails here, naming the fix.
    const runAsSpelling = await this.check.check(this.qemuBin, confinement);
    const qmpSocket = join(spec.runDir, 'qmp.sock');
    await rm(qmpSocket, { force: true });
    for (const path of agentSockets(spec.agentSocketPath)) await rm(path, { force: true });
    const args = buildQemuArgs(spec, qmpSocket, { ...confinement, runAsSpelling });
    const { pid, startTime, bootId } = await spawnDetached(this.qemuBin, args, spec.vmmLogPath);
    const handle: VmmHandle = {
      kind: 'qemu',
      pid,
      pidStartTime: startTime,
      ...(bootId ? { bootId } : {}),
      controlSocket: qmpSocket,
      agentSocket: spec.agentSocketPath,
      agentTransport: 'virtio-serial',
      accel: spec.accel,
    };
    try {
      await waitForSocket(qmpSocket, 15_000, () => isProcessAlive(pid, startTime, bootId));
      const state = await this.status(handle);
      if (state === 'gone' || state === 'shutdown') throw new Error(`QEMU is ${state} right after launch`);
      return handle;
    } catch (e) {
      await killAndWait(pid, startTime, undefined, bootId).catch(() => {});
      await this.cleanup(handle);
      // Give QEMU a moment to flush its error message.
      throw new VmmError(`QEMU failed to start: ${(e as Error).message}`, await readTail(spec.vmmLogPath, 2048));
    }
  }

  async shutdown(handle: VmmHandle, timeoutMs: number): Promise<boolean> {
    if (!(await isHandleAlive(handle))) return true;
    try {
      await this.qmp(handle, (q) => q.execute('system_powerdown'));
    } catch {
      /* a dying QEMU may not answer; the wait below decides */
    }
    const exited = await waitForExit(handle.pid, handle.pidStartTime, timeoutMs, handle.bootId);
    if (exited) await this.cleanup(handle);
    return exited;
  }

  // Warm start (issue 15): implemented on the driver branch; until then every call says so.
  readonly snapshotSupport = { memory: false, diskLayers: 'copy' as const };
  async pause(_handle: VmmHandle): Promise<void> {
    throw new VmmError('QEMU: pause is not implemented yet');
  }
  async resume(_handle: VmmHandle): Promise<void> {
    throw new VmmError('QEMU: resume is not implemented yet');
  }
  async saveState(_handle: VmmHandle, _out: { statePath: string; memoryPath: string }): Promise<{ stateBytes: number; memoryBytes: number }> {
    throw new VmmError('QEMU: saveState is not implemented yet');
  }

  async kill(handle: VmmHandle): Promise<void> {
    await killAndWait(handle.pid, handle.pidStartTime, undefined, handle.bootId);
    await this.cleanup(handle);
  }

  private async status(handle: VmmHandle): Promise<'running' | 'paused' | 'shutdown' | 'gone'> {
    if (!(await isHandleAlive(handle))) return 'gone';
    try {
      const r = await this.qmp(handle, (q) => q.execute<{ status: string; running: boolean }>('query-status'));
      if (r.running) return 'running';
      if (r.status === 'paused' || r.status === 'prelaunch') return 'paused';
      return 'shutdown';
    } catch {
      return (await isHandleAlive(handle)) ? 'running' : 'gone';
    }
  }

  private async qmp<T>(handle: VmmHandle, fn: (q: QmpClient) => Promise<T>): Promise<T> {
    const q = await QmpClient.connect(handle.controlSocket);
    try {
      return await fn(q);
    } finally {
      q.close();
    }
  }

  private async cleanup(handle: VmmHandle): Promise<void> {
    await rm(handle.controlSocket, { force: true });
    for (const path of agentSockets(handle.agentSocket)) await rm(path, { force: true });
  }
}

/** The control socket and every data port's socket. */
function agentSockets(agentSocketPath: string): string[] {
  return [agentSocketPath, ...Array.from({ length: AGENT_DATA_PORTS }, (_, k) => agentDataSocketPath(agentSocketPath, k))];
}
