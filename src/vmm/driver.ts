/**
 * One interface for every VMM. The VM service never knows which hypervisor runs a VM; it hands a
 * fully resolved launch spec to a driver and keeps the returned handle (persisted as JSON in the
 * store so a restarted daemon can re-adopt the process).
 */
export type VmmKind = 'qemu' | 'firecracker';
export type Accelerator = 'kvm' | 'tcg';

export interface DiskSpec {
  /** Stable id, letters/digits/underscore only (Firecracker's drive_id rules). */
  id: string;
  path: string;
  format: 'raw' | 'qcow2';
}

export interface NetSpec {
  id: string;
  tapName: string;
  mac: string;
}

export interface VmLaunchSpec {
  vmId: string;
  /** DNS-label VM name; used for process titles and logs only. */
  name: string;
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath?: string;
  cmdline: string;
  /** First disk is the root disk (/dev/vda), second the work disk (/dev/vdb). */
  disks: DiskSpec[];
  nets: NetSpec[];
  /** Directory for the VMM's sockets (0700, created by the caller). */
  runDir: string;
  /** Serial console output is appended here. */
  serialLogPath: string;
  /** VMM stdout/stderr (its own diagnostics) go here. */
  vmmLogPath: string;
  /** Host Unix socket of the guest-agent channel. */
  agentSocketPath: string;
  accel: Accelerator;
  /**
   * QEMU: guest RAM is a memfd mapped shared (memory-backend-memfd share=on): a memory snapshot
   * saves only device state plus a sparse copy of that memfd (read through /proc/<pid>/fd). No file
   * name anywhere, and no tmpfs quota other users share. Ignored by Firecracker. Absent: private
   * anonymous RAM (such a VM cannot be snapshotted with memory).
   */
  sharedMemory?: boolean;
  /**
   * Start from a saved state instead of booting: the guest continues where it was saved, and the VMM
   * is left PAUSED (call resume()). The device configuration (vcpus, memory, disk and net ids) must
   * equal the saved VM's; disk files, TAPs and sockets are this VM's own.
   */
  restore?: { statePath: string; memoryPath: string };
}

/** What must survive a daemon restart to find and drive the VMM process again. */
export interface VmmHandle {
  kind: VmmKind;
  pid: number;
  /** Process start time (from /proc/<pid>/stat) so a recycled pid is never mistaken for ours. */
  pidStartTime: string;
  /**
   * /proc/sys/kernel/random/boot_id when the VMM was spawned: a handle from another boot is dead,
   * whatever process holds its pid now. Absent in handles stored by older versions (and on hosts
   * without the file): those are compared by pid and start time only.
   */
  bootId?: string;
  /** QMP socket (QEMU) or API socket (Firecracker; under the jailer, its host path inside the jail). */
  controlSocket: string;
  /** Firecracker under the jailer: the jail directory, removed once the process is gone. */
  jailDir?: string;
  agentSocket: string;
  /** How the agent channel is reached over agentSocket. */
  agentTransport: 'virtio-serial' | 'hybrid-vsock';
  accel: Accelerator;
  /** QEMU: launched with VmLaunchSpec.sharedMemory (its RAM can be saved). */
  sharedMemory?: boolean;
}

export interface VmmDriver {
  readonly kind: VmmKind;
  /** The root disk this VMM takes: a qcow2 overlay on the image (QEMU), or a raw copy (Firecracker). */
  readonly rootDiskFormat: 'qcow2' | 'raw';
  /** Starts the VMM process and the guest; resolves once the VMM accepted the configuration. */
  launch(spec: VmLaunchSpec): Promise<VmmHandle>;
  /** Asks the guest to power off (ACPI/CtrlAltDel); resolves when the process exited or timeout elapsed. Returns true if it exited. */
  shutdown(handle: VmmHandle, timeoutMs: number): Promise<boolean>;
  /** Kills the process (SIGKILL) and waits for it to disappear. */
  kill(handle: VmmHandle): Promise<void>;
  /** What this driver can snapshot: memory state, and disks by switching to new qcow2 layers or by copies. */
  readonly snapshotSupport: { memory: boolean; diskLayers: 'switch' | 'copy' };
  /** Stops the vCPUs. Idempotent. */
  pause(handle: VmmHandle): Promise<void>;
  /** Runs the vCPUs again (also after saveState). Idempotent. */
  resume(handle: VmmHandle): Promise<void>;
  /** A PAUSED VM's device state and RAM to files (created exclusively, 0600). Leaves it paused; removes partial files on failure. */
  saveState(handle: VmmHandle, out: { statePath: string; memoryPath: string }): Promise<{ stateBytes: number; memoryBytes: number }>;
  /**
   * diskLayers 'switch' only: on a PAUSED VM, each drive writes into a new qcow2 file (already created
   * by the caller over the current top) from now on; the current file becomes frozen history.
   */
  switchDiskLayers?(handle: VmmHandle, newTops: Array<{ driveId: string; path: string }>): Promise<void>;
  /** Link carrier of a NIC (so a clone stays silent until it is re-identified). */
  setLinkUp?(handle: VmmHandle, netId: string, up: boolean): Promise<void>;
}

export class VmmError extends Error {
  constructor(
    message: string,
    readonly logTail?: string,
  ) {
    super(logTail ? `${message}\n--- VMM log tail ---\n${logTail}` : message);
    this.name = 'VmmError';
  }
}
