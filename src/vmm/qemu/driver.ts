import { constants } from 'node:fs';
import { lstat, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type VmLaunchSpec, type VmmDriver, VmmError, type VmmHandle } from '../driver.js';
import { isHandleAlive, isProcessAlive, killAndWait, readTail, spawnDetached, waitForExit, waitForSocket } from '../process.js';
import { AGENT_DATA_PORTS, agentDataSocketPath, buildQemuArgs } from './args.js';
import { copyOpenToNew, fillOpenFromFile, IGNORE_SHARED, openGuestMemory, StateReceiver, sendStateFile, waitForMigration } from './migration.js';
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
  /** Deadline of a device-state save or load (the migration stream; default 60 s). */
  migrationTimeoutMs?: number;
}

/** Drive ids and netdev ids the driver passes to QMP (the launch spec's own rule). */
const QMP_ID = /^[A-Za-z0-9_]{1,64}$/;

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
    if (spec.restore) this.refuseUnderRunAs(confinement, 'restore a memory snapshot');
    if (spec.restore && !spec.sharedMemory) {
      throw new VmmError('QEMU restores a memory snapshot only into a VM whose RAM is shared: the launch spec has restore but not sharedMemory');
    }
    const qmpSocket = join(spec.runDir, 'qmp.sock');
    await rm(qmpSocket, { force: true });
    for (const path of agentSockets(spec.agentSocketPath)) await rm(path, { force: true });
    const args = buildQemuArgs(spec, qmpSocket, { ...confinement, runAsSpelling });
    let handle: VmmHandle | undefined;
    try {
      const { pid, startTime, bootId } = await spawnDetached(this.qemuBin, args, spec.vmmLogPath);
      handle = {
        kind: 'qemu',
        pid,
        pidStartTime: startTime,
        ...(bootId ? { bootId } : {}),
        controlSocket: qmpSocket,
        agentSocket: spec.agentSocketPath,
        ...(spec.sharedMemory ? { sharedMemory: true } : {}),
        agentTransport: 'virtio-serial',
        accel: spec.accel,
      };
      await waitForSocket(qmpSocket, 15_000, () => isProcessAlive(pid, startTime, bootId));
      if (spec.restore) {
        // -S -incoming defer: once QMP answers (its main loop runs after machine init) QEMU has made
        // its (zero) memfd and waits; the saved RAM goes in first.
        const h = handle;
        await this.qmp(h, (q) => q.execute('query-status'));
        const mem = await openGuestMemory(h.pid, spec.memoryMib * MIB, constants.O_WRONLY, () => isHandleAlive(h));
        try {
          await fillOpenFromFile(spec.restore.memoryPath, mem, spec.memoryMib * MIB);
        } finally {
          await mem.close();
        }
        await this.loadState(handle, spec.runDir, spec.restore.statePath);
      }
      const state = await this.status(handle);
      if (state === 'gone' || state === 'shutdown') throw new Error(`QEMU is ${state} right after launch`);
      return handle;
    } catch (e) {
      if (handle) {
        await killAndWait(handle.pid, handle.pidStartTime, undefined, handle.bootId).catch(() => {});
        await this.cleanup(handle);
      }
      await rm(join(spec.runDir, MIGRATE_IN), { force: true });
      throw new VmmError(`QEMU failed to start: ${(e as Error).message}`, await readTail(spec.vmmLogPath, 2048));
    }
  }

  /**
   * The restore half of a memory snapshot, on a QEMU started with `-S -incoming defer`:
   * x-ignore-shared (the RAM is already in the file), `migrate-incoming` on a Unix socket in the
   * run dir, the saved device state streamed into it, then wait until the migration completed and
   * the VM sits in runstate `paused` (-S keeps the vCPUs stopped).
   */
  private async loadState(handle: VmmHandle, runDir: string, statePath: string): Promise<void> {
    const sock = join(runDir, MIGRATE_IN);
    const timeoutMs = this.opts.migrationTimeoutMs ?? 60_000;
    await rm(sock, { force: true });
    try {
      await this.qmp(handle, async (q) => {
        await q.execute('migrate-set-capabilities', IGNORE_SHARED);
        await q.execute('migrate-incoming', { uri: `unix:${sock}` });
        await sendStateFile(sock, statePath, timeoutMs);
        await waitForMigration(q, timeoutMs, 'loading the saved state');
        for (const deadline = Date.now() + timeoutMs; ; await sleep(20)) {
          const { status } = await q.execute<{ status: string }>('query-status');
          if (status === 'paused') break;
          if (status !== 'inmigrate' || Date.now() >= deadline) throw new VmmError(`QEMU is in runstate ${status} after loading the saved state, not paused`);
        }
      });
    } catch (e) {
      // A state that does not fit this VM's devices makes QEMU exit: its log (appended by launch) says why.
      throw new Error(`loading the saved state ${statePath} failed (the VM's devices, vCPUs and memory must equal the saved VM's): ${(e as Error).message}`);
    }
    await rm(sock, { force: true });
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

  readonly snapshotSupport = { memory: true, diskLayers: 'switch' as const };

  /** QMP `stop`: from running, or a no-op when already stopped (paused, postmigrate). */
  async pause(handle: VmmHandle): Promise<void> {
    await this.qmp(handle, (q) => q.execute('stop'));
  }

  /** QMP `cont`: from paused, and from postmigrate after saveState (cont reactivates the disks). */
  async resume(handle: VmmHandle): Promise<void> {
    await this.qmp(handle, (q) => q.execute('cont'));
  }

  /**
   * Device state by `migrate` (x-ignore-shared, so the RAM in the shared file is skipped) to a
   * Unix socket this driver listens on in the run dir, written to statePath (exclusive, 0600,
   * fsynced); then a sparse copy of the RAM file to memoryPath. The VM must be stopped, and stays
   * stopped (runstate postmigrate; resume() runs it again). memoryBytes: what the copy occupies.
   */
  async saveState(handle: VmmHandle, out: { statePath: string; memoryPath: string }): Promise<{ stateBytes: number; memoryBytes: number }> {
    if (!handle.sharedMemory) {
      throw new VmmError('this QEMU VM has private RAM (launched without sharedMemory): its memory cannot be snapshotted; start it again with its RAM shared');
    }
    this.refuseUnderRunAs(this.confinement(), 'save a memory snapshot');
    const timeoutMs = this.opts.migrationTimeoutMs ?? 60_000;
    const sock = join(dirname(handle.controlSocket), MIGRATE_OUT);
    // Checked before the migration, which leaves QEMU in postmigrate: a copy that cannot start
    // should not cost that (sparseCopyExclusive still refuses the name if it appears meanwhile).
    if (
      await lstat(out.memoryPath).then(
        () => true,
        () => false,
      )
    ) {
      throw new VmmError(`memory copy ${out.memoryPath} already exists: it is never overwritten; remove it if it is stale`);
    }
    const memoryBytes = await this.memoryBytesOf(handle);
    let stateBytes = 0;
    await this.qmp(handle, async (q) => {
      const { status, running } = await q.execute<{ status: string; running: boolean }>('query-status');
      if (running) throw new VmmError(`saveState needs a paused VM; this one is ${status}`);
      // After a save QEMU refuses another migration until the VM ran ("paused due to previous
      // migration"): a VM kept paused since its last snapshot runs for an instant, then stops again.
      if (status === 'postmigrate') {
        await q.execute('cont');
        await q.execute('stop');
      }
      const receiver = await StateReceiver.listen(sock, out.statePath);
      try {
        await q.execute('migrate-set-capabilities', IGNORE_SHARED);
        await q.execute('migrate', { uri: `unix:${sock}` });
        await waitForMigration(q, timeoutMs, 'saving the device state');
        stateBytes = await withDeadline(receiver.done, timeoutMs, 'the device state stream did not end');
      } catch (e) {
        await receiver.close();
        await rm(out.statePath, { force: true });
        throw e;
      }
      await receiver.close();
    });
    try {
      const mem = await openGuestMemory(handle.pid, memoryBytes, constants.O_RDONLY, () => isHandleAlive(handle));
      try {
        return { stateBytes, memoryBytes: await copyOpenToNew(mem, `guest memory of pid ${handle.pid}`, out.memoryPath) };
      } finally {
        await mem.close();
      }
    } catch (e) {
      await rm(out.statePath, { force: true });
      throw e;
    }
  }

  /**
   * All drives switch in one QMP `transaction` of `blockdev-snapshot-sync` (mode existing: the
   * caller created each new qcow2 over the current top), so either every drive moved or none did.
   */
  async switchDiskLayers(handle: VmmHandle, newTops: Array<{ driveId: string; path: string }>): Promise<void> {
    for (const t of newTops) {
      if (!QMP_ID.test(t.driveId)) throw new VmmError(`invalid drive id ${JSON.stringify(t.driveId)}`);
    }
    if (newTops.length === 0) return;
    await this.qmp(handle, async (q) => {
      const { running, status } = await q.execute<{ status: string; running: boolean }>('query-status');
      if (running) throw new VmmError(`switchDiskLayers needs a paused VM; this one is ${status}`);
      await q.execute('transaction', {
        actions: newTops.map((t) => ({
          type: 'blockdev-snapshot-sync',
          data: { device: t.driveId, 'snapshot-file': t.path, format: 'qcow2', mode: 'existing' },
        })),
      });
    });
  }

  /** QMP `set_link` on the netdev: QEMU carries the state to the virtio-net NIC it backs. */
  async setLinkUp(handle: VmmHandle, netId: string, up: boolean): Promise<void> {
    if (!QMP_ID.test(netId)) throw new VmmError(`invalid net id ${JSON.stringify(netId)}`);
    await this.qmp(handle, (q) => q.execute('set_link', { name: netId, up }));
  }

  /**
   * Under `-runas` QEMU runs as vmm_user after start-up and can neither reach a socket in the
   * daemon's 0700 run dir nor be handed a descriptor (QMP getfd needs SCM_RIGHTS, which Node cannot
   * send): memory snapshots are refused up front instead of failing inside QEMU.
   */
  private refuseUnderRunAs(confinement: QemuConfinement, what: string): void {
    if (confinement.runAs !== undefined) {
      throw new VmmError(
        `cannot ${what}: QEMU runs as vmm_user ${JSON.stringify(confinement.runAs)}, which cannot reach the migration socket in the daemon's run directory; memory snapshots need vmm_user unset for now`,
      );
    }
  }

  /** The VM's memory size, as QEMU reports it (the handle does not record it). */
  private async memoryBytesOf(handle: VmmHandle): Promise<number> {
    const r = await this.qmp(handle, (q) => q.execute<{ 'base-memory': number }>('query-memory-size-summary'));
    if (!Number.isSafeInteger(r['base-memory']) || r['base-memory'] <= 0) throw new VmmError('QEMU reported no memory size');
    return r['base-memory'];
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

const MIB = 1024 * 1024;
/** Unix sockets of the migration streams, in the VM's run dir. */
const MIGRATE_OUT = 'migrate-out.sock';
const MIGRATE_IN = 'migrate-in.sock';

async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new VmmError(`${what} within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The control socket and every data port's socket. */
function agentSockets(agentSocketPath: string): string[] {
  return [agentSocketPath, ...Array.from({ length: AGENT_DATA_PORTS }, (_, k) => agentDataSocketPath(agentSocketPath, k))];
}
