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
  if (!spec.kernelPath) throw new FirecrackerConfigError('the kernel path is empty');
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
