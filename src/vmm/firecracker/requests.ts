import type { VmLaunchSpec } from '../driver.js';

/**
 * Pure builders for the Firecracker API requests banger sends. Nothing here does I/O, so the
 * contract tests can check every body against the official API spec without a Firecracker.
 */
export type FcMethod = 'GET' | 'PUT' | 'PATCH';

export interface FcRequest {
  method: FcMethod;
  path: string;
  /** Absent for GET: Firecracker rejects a GET that carries a body. */
  body?: Record<string, unknown>;
}

export type FcInstanceState = 'Not started' | 'Running' | 'Paused';

/** Bad launch input found before anything was started. */
export class FirecrackerConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FirecrackerConfigError';
  }
}

/** Firecracker accepts API resource ids (drive_id, iface_id) made of these only. */
const RESOURCE_ID = /^[A-Za-z0-9_]+$/;
const MAC = /^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$/;
/** Linux IFNAMSIZ (16) minus the terminating NUL. */
const MAX_TAP_NAME = 15;
/** The spec's MachineConfiguration.vcpu_count bounds. */
const MAX_VCPUS = 32;
/** vsock CIDs 0-2 are reserved (hypervisor, local, host); every guest may use 3 as it has its own device. */
export const GUEST_CID = 3;

export function assertResourceId(kind: string, id: string): void {
  if (!RESOURCE_ID.test(id)) {
    throw new FirecrackerConfigError(`invalid Firecracker ${kind} id ${JSON.stringify(id)}: use only letters, digits and underscores (A-Z a-z 0-9 _)`);
  }
}

/**
 * The `--id` instance id: Firecracker allows 1-64 alphanumerics and '-'. It only labels log
 * lines, so an unusable VM id is mapped rather than rejected.
 */
export function instanceIdFor(vmId: string): string {
  const id = vmId.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 64);
  return id.length > 0 ? id : 'banger-vm';
}

export interface LoggerOptions {
  logPath: string;
  level?: 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';
}

export interface BootOptions {
  /** When set, Firecracker's own log goes to this file instead of its stdout (the console). */
  logger?: LoggerOptions;
}

/** The ordered pre-boot configuration of `spec`, ending with InstanceStart. Throws FirecrackerConfigError on bad input. */
export function buildBootRequests(spec: VmLaunchSpec, opts: BootOptions = {}): FcRequest[] {
  checkSpec(spec);
  if (!spec.kernelPath) throw new FirecrackerConfigError('the kernel path is empty');
  const requests: FcRequest[] = [];
  // First, so that Firecracker's complaints about the requests below land in the log file.
  if (opts.logger) requests.push(loggerRequest(opts.logger));
  requests.push({
    method: 'PUT',
    path: '/machine-config',
    body: { vcpu_count: spec.vcpus, mem_size_mib: spec.memoryMib, smt: false },
  });
  requests.push({
    method: 'PUT',
    path: '/boot-source',
    body: {
      kernel_image_path: spec.kernelPath,
      boot_args: spec.cmdline,
      ...(spec.initrdPath ? { initrd_path: spec.initrdPath } : {}),
    },
  });
  spec.disks.forEach((d, i) => {
    requests.push({
      method: 'PUT',
      path: `/drives/${d.id}`,
      body: { drive_id: d.id, path_on_host: d.path, is_root_device: i === 0, is_read_only: false },
    });
  });
  for (const n of spec.nets) {
    requests.push({
      method: 'PUT',
      path: `/network-interfaces/${n.id}`,
      body: { iface_id: n.id, host_dev_name: n.tapName, guest_mac: n.mac.toLowerCase() },
    });
  }
  requests.push({ method: 'PUT', path: '/vsock', body: { guest_cid: GUEST_CID, uds_path: spec.agentSocketPath } });
  requests.push(instanceStartRequest());
  return requests;
}

export function loggerRequest(opts: LoggerOptions): FcRequest {
  if (!opts.logPath) throw new FirecrackerConfigError('the Firecracker log path is empty');
  return {
    method: 'PUT',
    path: '/logger',
    body: { log_path: opts.logPath, level: opts.level ?? 'Info', show_level: true, show_log_origin: false },
  };
}

export const instanceStartRequest = (): FcRequest => ({
  method: 'PUT',
  path: '/actions',
  body: { action_type: 'InstanceStart' },
});

export const resumeRequest = (): FcRequest => ({ method: 'PATCH', path: '/vm', body: { state: 'Resumed' } });
export const pauseRequest = (): FcRequest => ({ method: 'PATCH', path: '/vm', body: { state: 'Paused' } });

// ---- warm start (snapshots). The bodies follow the spec's definitions of the same names. ----

/** `SnapshotCreateParams`: banger takes Full snapshots only (Diff needs dirty-page tracking from boot). */
export interface SnapshotCreateParams {
  snapshot_type: 'Full';
  snapshot_path: string;
  mem_file_path: string;
}

/** `NetworkOverride`: the restored interface's TAP. */
export interface NetworkOverride {
  iface_id: string;
  host_dev_name: string;
}

/**
 * `SnapshotLoadParams` as banger sends it: memory from a file (`mem_backend` File; the deprecated
 * `mem_file_path` is never sent, the spec forbids both at once), never resumed by the load itself.
 */
export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: { backend_type: 'File'; backend_path: string };
  resume_vm: false;
  network_overrides?: NetworkOverride[];
  vsock_override?: { uds_path: string };
}

/** The parts of `FullVmConfiguration` (GET /vm/config) banger reads after a load. */
export interface FcVmConfig {
  'machine-config'?: { vcpu_count?: number; mem_size_mib?: number };
  drives?: Array<{ drive_id?: string; path_on_host?: string }>;
  'network-interfaces'?: Array<{ iface_id?: string; host_dev_name?: string }>;
  vsock?: { uds_path?: string };
}

/** PUT /snapshot/create of a PAUSED VM (the spec: "The microVM should be in the Paused state"). */
export function snapshotCreateRequest(out: { statePath: string; memoryPath: string }): FcRequest {
  if (!out.statePath || !out.memoryPath) throw new FirecrackerConfigError('a snapshot needs a state path and a memory path');
  const body: SnapshotCreateParams = { snapshot_type: 'Full', snapshot_path: out.statePath, mem_file_path: out.memoryPath };
  return { method: 'PUT', path: '/snapshot/create', body: { ...body } };
}

/**
 * The requests that bring a FRESH Firecracker process to a saved state, left Paused: the logger (the
 * only resource the spec lets come before a load, with metrics), then PUT /snapshot/load. The
 * clone's TAPs and agent socket come in the load itself (network_overrides, vsock_override); its
 * disks are the saved drive paths (same in-jail names under the jailer) or a PATCH after the load
 * (restoreDrivePatches), which needs the load's answer, so it is not part of this list.
 */
export function buildRestoreRequests(spec: VmLaunchSpec, restore: { statePath: string; memoryPath: string }, opts: BootOptions = {}): FcRequest[] {
  checkSpec(spec);
  if (!restore.statePath || !restore.memoryPath) throw new FirecrackerConfigError('a restore needs a state path and a memory path');
  const requests: FcRequest[] = [];
  if (opts.logger) requests.push(loggerRequest(opts.logger));
  const body: SnapshotLoadParams = {
    snapshot_path: restore.statePath,
    mem_backend: { backend_type: 'File', backend_path: restore.memoryPath },
    resume_vm: false,
    ...(spec.nets.length > 0 ? { network_overrides: spec.nets.map((n) => ({ iface_id: n.id, host_dev_name: n.tapName })) } : {}),
    vsock_override: { uds_path: spec.agentSocketPath },
  };
  requests.push({ method: 'PUT', path: '/snapshot/load', body: { ...body } });
  return requests;
}

export const vmConfigRequest = (): FcRequest => ({ method: 'GET', path: '/vm/config' });

/**
 * Where a restored VM differs from the launch spec in what a load cannot change (vCPUs, memory,
 * drive ids, interface ids): each difference as a sentence. Empty: the snapshot fits the spec.
 */
export function restoreMismatches(spec: VmLaunchSpec, config: unknown): string[] {
  const c = (config ?? {}) as FcVmConfig;
  const problems: string[] = [];
  const m = c['machine-config'];
  if (m?.vcpu_count !== spec.vcpus) problems.push(`the snapshot has ${String(m?.vcpu_count)} vCPUs, the VM ${spec.vcpus}`);
  if (m?.mem_size_mib !== spec.memoryMib) problems.push(`the snapshot has ${String(m?.mem_size_mib)} MiB of memory, the VM ${spec.memoryMib}`);
  const ids = (xs: Array<string | undefined>) => JSON.stringify([...xs].sort());
  const savedDrives = (c.drives ?? []).map((d) => d.drive_id);
  if (ids(savedDrives) !== ids(spec.disks.map((d) => d.id))) {
    problems.push(`the snapshot has drives ${ids(savedDrives)}, the VM ${ids(spec.disks.map((d) => d.id))}`);
  }
  const savedNets = (c['network-interfaces'] ?? []).map((n) => n.iface_id);
  if (ids(savedNets) !== ids(spec.nets.map((n) => n.id))) {
    problems.push(`the snapshot has network interfaces ${ids(savedNets)}, the VM ${ids(spec.nets.map((n) => n.id))}`);
  }
  return problems;
}

/**
 * PATCH /drives/{id} (post-boot; a loaded VM is past boot, Paused) for each drive whose saved
 * path_on_host is not this VM's disk: the clone then reads and writes its own file from the first
 * instruction it runs. Under the jailer the in-jail names are equal, so nothing is patched.
 */
export function restoreDrivePatches(spec: VmLaunchSpec, config: unknown): FcRequest[] {
  const saved = new Map(((config ?? {}) as FcVmConfig).drives?.map((d) => [d.drive_id, d.path_on_host]) ?? []);
  return spec.disks
    .filter((d) => saved.get(d.id) !== d.path)
    .map((d) => ({ method: 'PATCH' as const, path: `/drives/${d.id}`, body: { drive_id: d.id, path_on_host: d.path } }));
}

/** The guest sees Ctrl-Alt-Del on its i8042 keyboard; a Linux guest with `reboot=k` then powers off Firecracker. */
export const ctrlAltDelRequest = (): FcRequest => ({
  method: 'PUT',
  path: '/actions',
  body: { action_type: 'SendCtrlAltDel' },
});

export const describeInstanceRequest = (): FcRequest => ({ method: 'GET', path: '/' });

/** The `state` of a GET / answer; throws if the answer is not an InstanceInfo. */
export function instanceStateOf(info: unknown): FcInstanceState {
  const state = (info as { state?: unknown } | null)?.state;
  if (state === 'Not started' || state === 'Running' || state === 'Paused') return state;
  throw new Error(`unexpected Firecracker instance info: ${JSON.stringify(info)}`);
}

function checkSpec(spec: VmLaunchSpec): void {
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > MAX_VCPUS) {
    throw new FirecrackerConfigError(`Firecracker supports 1-${MAX_VCPUS} vCPUs, not ${spec.vcpus}`);
  }
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 1) {
    throw new FirecrackerConfigError(`memory must be a positive whole number of MiB, not ${spec.memoryMib}`);
  }
  if (!spec.agentSocketPath) throw new FirecrackerConfigError('the agent socket path is empty');
  const driveIds = new Set<string>();
  for (const d of spec.disks) {
    assertResourceId('drive', d.id);
    // A repeated PUT /drives/{id} silently replaces the earlier drive.
    if (driveIds.has(d.id)) throw new FirecrackerConfigError(`drive id ${JSON.stringify(d.id)} is used twice`);
    driveIds.add(d.id);
    if (d.format !== 'raw') {
      throw new FirecrackerConfigError(
        `disk ${JSON.stringify(d.id)} (${d.path}) is ${d.format}, but Firecracker only supports raw disk images; convert it (qemu-img convert -O raw) or use the QEMU driver`,
      );
    }
    if (!d.path) throw new FirecrackerConfigError(`disk ${JSON.stringify(d.id)} has an empty path`);
  }
  const ifaceIds = new Set<string>();
  for (const n of spec.nets) {
    assertResourceId('network interface', n.id);
    if (ifaceIds.has(n.id)) {
      throw new FirecrackerConfigError(`network interface id ${JSON.stringify(n.id)} is used twice`);
    }
    ifaceIds.add(n.id);
    if (!n.tapName || n.tapName.length > MAX_TAP_NAME || /[\s/]/.test(n.tapName)) {
      throw new FirecrackerConfigError(`invalid tap device name ${JSON.stringify(n.tapName)} for interface ${n.id}`);
    }
    if (!MAC.test(n.mac)) {
      throw new FirecrackerConfigError(`invalid MAC address ${JSON.stringify(n.mac)} for interface ${n.id} (want xx:xx:xx:xx:xx:xx)`);
    }
  }
}
