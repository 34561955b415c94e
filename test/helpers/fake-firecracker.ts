import { createServer, type Server } from 'node:http';
import { loadFirecrackerSpec, SpecValidator } from './fake-firecracker-spec.js';

/**
 * A FAKE Firecracker API: no VM, only the API contract. Every request is checked against the
 * official spec (strict: unknown fields rejected) and against Firecracker's lifecycle rules
 * (configuration before InstanceStart, pause/resume/Ctrl-Alt-Del after; a snapshot load only on a
 * fresh process, a snapshot only of a paused VM), answered the way
 * Firecracker answers (204, 200 + JSON, or 400 + {"fault_message"}), and recorded.
 */
export type FakeInstanceState = 'Not started' | 'Running' | 'Paused';

export interface RecordedRequest {
  method: string;
  path: string;
  /** Parsed JSON, the raw text if it was not JSON, or undefined without a body. */
  body: unknown;
  status: number;
  fault?: string;
}

export interface FakeResponse {
  status: number;
  body?: unknown;
}

/**
 * What the fake saves in a snapshot: the device configuration (a real state file holds far more).
 * The FAKE binary writes it as JSON to snapshot_path; in-process tests keep it in a Map.
 */
export interface FakeSnapshot {
  machine?: Body;
  drives: Body[];
  nets: Body[];
  vsock?: Body;
}

export interface FakeHooks {
  /** Writes a snapshot (a string fails the request with it). */
  onSnapshotCreate?(statePath: string, memoryPath: string, snapshot: FakeSnapshot): string | undefined;
  /** Reads one: the snapshot, or a fault message. */
  onSnapshotLoad?(statePath: string, memoryPath: string): FakeSnapshot | string;
  /** The vCPUs run again (PATCH /vm Resumed, or a load with resume_vm), with the drives as they are now. */
  onResume?(drives: Body[]): void;
  /** Return a string to fail the request with that fault message. */
  onLogger?(logPath: string): string | undefined;
  onVsock?(udsPath: string): string | undefined;
  /** Firecracker opens the kernel and initrd at PUT /boot-source, and a drive's file at PUT /drives. */
  onBootSource?(kernelPath: string, initrdPath: string | undefined): string | undefined;
  onDrive?(pathOnHost: string): string | undefined;
  onInstanceStart?(): void;
  onCtrlAltDel?(): void;
  onRequest?(r: RecordedRequest): void;
}

export interface FakeFirecrackerOptions {
  instanceId?: string;
  /** "METHOD /path": answer it with a fault, to exercise failure handling. */
  failOn?: string;
  hooks?: FakeHooks;
  validator?: SpecValidator;
}

/** Pre-boot operations that still allow a snapshot load after them (the spec: "before configuring any resource other than the Logger and Metrics"). */
const BEFORE_LOAD_OK = new Set(['PUT /logger', 'PUT /metrics']);
/** Mutating operations Firecracker accepts only before InstanceStart. */
const PRE_BOOT_ONLY = new Set([
  'PUT /logger',
  'PUT /metrics',
  'PUT /machine-config',
  'PUT /boot-source',
  'PUT /cpu-config',
  'PUT /drives/{drive_id}',
  'PUT /pmem/{id}',
  'PUT /network-interfaces/{iface_id}',
  'PUT /vsock',
  'PUT /entropy',
  'PUT /serial',
  'PUT /balloon',
  'PUT /mmds/config',
  'PUT /hotplug/memory',
  'PUT /snapshot/load',
]);
const POST_BOOT_ONLY = new Set([
  'PATCH /vm',
  'PATCH /drives/{drive_id}',
  'PATCH /network-interfaces/{iface_id}',
  'PATCH /pmem/{id}',
  'PATCH /hotplug/memory',
  'PUT /snapshot/create',
]);
const NOT_AFTER_START = 'The requested operation is not supported after starting the microVM.';
const NOT_BEFORE_START = 'The requested operation is not supported before starting the microVM.';

type Body = Record<string, unknown>;

export class FakeFirecrackerApi {
  readonly requests: RecordedRequest[] = [];
  state: FakeInstanceState = 'Not started';
  readonly config: {
    logger?: Body;
    machine?: Body;
    bootSource?: Body;
    vsock?: Body;
    drives: Map<string, Body>;
    nets: Map<string, Body>;
  } = { drives: new Map(), nets: new Map() };
  readonly validator: SpecValidator;
  /** A resource other than the logger and metrics was configured: a snapshot load is no longer allowed. */
  configuredForBoot = false;
  /** The state came from PUT /snapshot/load. */
  restored = false;

  constructor(private readonly opts: FakeFirecrackerOptions = {}) {
    this.validator = opts.validator ?? new SpecValidator(loadFirecrackerSpec());
  }

  /** One request; `rawBody` is the HTTP body text (undefined or '' when there was none). */
  handle(method: string, path: string, rawBody: string | undefined): FakeResponse {
    const parsed = parseJson(rawBody);
    const body = 'error' in parsed ? rawBody : parsed.value;
    const response =
      'error' in parsed
        ? fault(`An error occurred when deserializing the json body of a request: ${parsed.error}.`)
        : this.dispatch(method, path, parsed.value);
    const fm = (response.body as { fault_message?: string } | undefined)?.fault_message;
    const record: RecordedRequest = { method, path, body, status: response.status, ...(fm ? { fault: fm } : {}) };
    this.requests.push(record);
    this.opts.hooks?.onRequest?.(record);
    return response;
  }

  private dispatch(method: string, path: string, body: unknown): FakeResponse {
    const { errors, match } = this.validator.checkRequest(method, path, body);
    if (errors.length > 0 || !match) return fault(errors.join('; '));
    const key = `${method} ${match.template}`;
    if (this.opts.failOn === `${method} ${path}`) return fault(`fake failure injected for ${key}`);
    if (PRE_BOOT_ONLY.has(key) && this.state !== 'Not started') return fault(NOT_AFTER_START);
    if (POST_BOOT_ONLY.has(key) && this.state === 'Not started') return fault(NOT_BEFORE_START);
    const response = this.apply(key, method, (body ?? {}) as Body);
    if (response.status < 300 && PRE_BOOT_ONLY.has(key) && !BEFORE_LOAD_OK.has(key) && key !== 'PUT /snapshot/load') this.configuredForBoot = true;
    return response;
  }

  private apply(key: string, method: string, b: Body): FakeResponse {
    switch (key) {
      case 'GET /':
        return this.json('InstanceInfo', {
          app_name: 'Firecracker',
          id: this.opts.instanceId ?? 'anonymous-instance',
          state: this.state,
          vmm_version: this.validator.spec.info.version,
        });
      case 'GET /version':
        return this.json('FirecrackerVersion', { firecracker_version: this.validator.spec.info.version });
      case 'GET /machine-config':
        return this.json('MachineConfiguration', this.config.machine ?? { vcpu_count: 1, mem_size_mib: 128, smt: false });
      case 'PUT /logger':
        return this.hooked(this.opts.hooks?.onLogger?.(String(b.log_path ?? '')), () => {
          this.config.logger = b;
        });
      case 'PUT /machine-config':
        this.config.machine = b;
        return ok();
      case 'PUT /boot-source':
        return this.hooked(
          this.opts.hooks?.onBootSource?.(String(b.kernel_image_path), b.initrd_path === undefined ? undefined : String(b.initrd_path)),
          () => {
            this.config.bootSource = b;
          },
        );
      case 'PUT /drives/{drive_id}': {
        const error = this.opts.hooks?.onDrive?.(String(b.path_on_host));
        return error ? fault(error) : this.putDrive(b);
      }
      case 'PUT /network-interfaces/{iface_id}':
        return this.putNet(b);
      case 'PUT /vsock':
        return this.hooked(this.opts.hooks?.onVsock?.(String(b.uds_path)), () => {
          this.config.vsock = b;
        });
      case 'PUT /actions':
        return this.action(String(b.action_type));
      case 'PATCH /vm':
        this.state = b.state === 'Paused' ? 'Paused' : 'Running';
        if (this.state === 'Running') this.opts.hooks?.onResume?.([...this.config.drives.values()]);
        return ok();
      case 'PATCH /drives/{drive_id}':
        return this.patchDrive(b);
      case 'PUT /snapshot/create':
        return this.snapshotCreate(b);
      case 'PUT /snapshot/load':
        return this.snapshotLoad(b);
      case 'GET /vm/config':
        return this.json('FullVmConfiguration', this.vmConfig());
      default:
        // Valid per the spec but not modelled: accept changes, refuse reads the fake cannot answer.
        return method === 'GET' ? fault(`the fake does not implement ${key}`) : ok();
    }
  }

  private action(type: string): FakeResponse {
    switch (type) {
      case 'InstanceStart':
        if (this.state !== 'Not started') return fault(NOT_AFTER_START);
        if (!this.config.bootSource) return fault('Cannot start microvm without kernel configuration.');
        this.state = 'Running';
        this.opts.hooks?.onInstanceStart?.();
        return ok();
      case 'SendCtrlAltDel':
        if (this.state === 'Not started') return fault(NOT_BEFORE_START);
        this.opts.hooks?.onCtrlAltDel?.();
        return ok();
      default:
        return ok();
    }
  }

  private snapshotCreate(b: Body): FakeResponse {
    // The spec: "The microVM should be in the Paused state."
    if (this.state !== 'Paused') return fault('Cannot create a snapshot: the microVM is not paused.');
    if (b.snapshot_type === 'Diff' && this.config.machine?.track_dirty_pages !== true) {
      return fault('Diff snapshots are not allowed on microVMs without dirty page tracking.');
    }
    const hook = this.opts.hooks?.onSnapshotCreate;
    if (!hook) return fault('the fake has nowhere to write a snapshot (no onSnapshotCreate hook)');
    const snapshot: FakeSnapshot = {
      ...(this.config.machine ? { machine: { ...this.config.machine } } : {}),
      drives: [...this.config.drives.values()].map((d) => ({ ...d })),
      nets: [...this.config.nets.values()].map((n) => ({ ...n })),
      ...(this.config.vsock ? { vsock: { ...this.config.vsock } } : {}),
    };
    const error = hook(String(b.snapshot_path), String(b.mem_file_path), snapshot);
    return error ? fault(error) : ok();
  }

  private snapshotLoad(b: Body): FakeResponse {
    // The spec: "Only accepted on a fresh Firecracker process (before configuring any resource other than the Logger and Metrics)."
    if (this.configuredForBoot) return fault('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
    // The spec: "Exactly one of the two `mem_*` fields must be present".
    if ('mem_file_path' in b === 'mem_backend' in b) return fault('Exactly one of mem_file_path and mem_backend must be given.');
    const backend = b.mem_backend as Body | undefined;
    if (backend && backend.backend_type !== 'File') return fault(`the fake does not implement the ${String(backend.backend_type)} memory backend`);
    const memoryPath = String(backend ? backend.backend_path : b.mem_file_path);
    const hook = this.opts.hooks?.onSnapshotLoad;
    if (!hook) return fault('the fake has no snapshot to load (no onSnapshotLoad hook)');
    const snapshot = hook(String(b.snapshot_path), memoryPath);
    if (typeof snapshot === 'string') return fault(snapshot);
    const nets = new Map(snapshot.nets.map((n) => [String(n.iface_id), { ...n }]));
    for (const o of (b.network_overrides as Body[] | undefined) ?? []) {
      const n = nets.get(String(o.iface_id));
      if (!n) return fault(`Invalid network override: the snapshot has no network interface ${String(o.iface_id)}.`);
      n.host_dev_name = o.host_dev_name;
    }
    const vsockOverride = b.vsock_override as Body | undefined;
    if (vsockOverride && !snapshot.vsock) return fault('Invalid vsock override: the snapshot has no vsock device.');
    const vsock = snapshot.vsock && { ...snapshot.vsock, ...(vsockOverride ? { uds_path: vsockOverride.uds_path } : {}) };
    // Like Firecracker, the load opens every saved drive file (at its saved path) and binds the vsock socket.
    for (const d of snapshot.drives) {
      const error = this.opts.hooks?.onDrive?.(String(d.path_on_host));
      if (error) return fault(`Failed to restore the block device ${String(d.drive_id)}: ${error}`);
    }
    if (vsock) {
      const error = this.opts.hooks?.onVsock?.(String(vsock.uds_path));
      if (error) return fault(`Failed to restore the vsock device: ${error}`);
    }
    if (snapshot.machine) this.config.machine = snapshot.machine;
    for (const d of snapshot.drives) this.config.drives.set(String(d.drive_id), { ...d });
    for (const [id, n] of nets) this.config.nets.set(id, n);
    if (vsock) this.config.vsock = vsock;
    this.restored = true;
    this.state = b.resume_vm === true ? 'Running' : 'Paused';
    if (this.state === 'Running') this.opts.hooks?.onResume?.([...this.config.drives.values()]);
    return ok();
  }

  /** GET /vm/config; the spec: "If the VM is restored from a snapshot, the boot-source, machine-config.smt and machine-config.cpu_template will be empty." */
  private vmConfig(): Body {
    const machine =
      this.config.machine &&
      (this.restored ? { vcpu_count: this.config.machine.vcpu_count, mem_size_mib: this.config.machine.mem_size_mib } : this.config.machine);
    return {
      ...(machine ? { 'machine-config': machine } : {}),
      ...(this.config.bootSource && !this.restored ? { 'boot-source': this.config.bootSource } : {}),
      ...(this.config.logger ? { logger: this.config.logger } : {}),
      drives: [...this.config.drives.values()],
      'network-interfaces': [...this.config.nets.values()],
      ...(this.config.vsock ? { vsock: this.config.vsock } : {}),
    };
  }

  private patchDrive(b: Body): FakeResponse {
    const id = String(b.drive_id);
    const drive = this.config.drives.get(id);
    if (!drive) return fault(`Could not find a drive with the id ${id}.`);
    if (b.path_on_host !== undefined) {
      const error = this.opts.hooks?.onDrive?.(String(b.path_on_host));
      if (error) return fault(error);
    }
    this.config.drives.set(id, { ...drive, ...b });
    return ok();
  }

  private putDrive(b: Body): FakeResponse {
    const id = String(b.drive_id);
    const otherRoot = [...this.config.drives.values()].some((d) => d.is_root_device === true && d.drive_id !== id);
    if (b.is_root_device === true && otherRoot) return fault('A root block device already exists!');
    this.config.drives.set(id, b);
    return ok();
  }

  private putNet(b: Body): FakeResponse {
    const id = String(b.iface_id);
    for (const n of this.config.nets.values()) {
      if (n.iface_id === id) continue;
      if (n.host_dev_name === b.host_dev_name) return fault(`The host device name ${String(b.host_dev_name)} is already in use.`);
      if (b.guest_mac !== undefined && n.guest_mac === b.guest_mac) {
        return fault(`The MAC address ${String(b.guest_mac)} is already in use.`);
      }
    }
    this.config.nets.set(id, b);
    return ok();
  }

  private hooked(error: string | undefined, apply: () => void): FakeResponse {
    if (error) return fault(error);
    apply();
    return ok();
  }

  /** Keeps the fake honest: its own answers must match the spec too. */
  private json(definition: string, value: unknown): FakeResponse {
    const errors = this.validator.validateDefinition(definition, value);
    if (errors.length > 0) throw new Error(`the fake built an invalid ${definition}: ${errors.join('; ')}`);
    return { status: 200, body: value };
  }
}

function parseJson(raw: string | undefined): { value: unknown } | { error: string } {
  if (!raw) return { value: undefined };
  try {
    return { value: JSON.parse(raw) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

const ok = (): FakeResponse => ({ status: 204 });
const fault = (message: string): FakeResponse => ({ status: 400, body: { fault_message: message } });

const MAX_REQUEST_BYTES = 1024 * 1024;

/** Serves `api` over HTTP/1.1 on a Unix socket, like Firecracker's --api-sock. */
export function serveFakeFirecracker(api: FakeFirecrackerApi, socketPath: string): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST_BYTES) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      const raw = chunks.length > 0 ? Buffer.concat(chunks).toString('utf8') : undefined;
      const r = api.handle(req.method ?? 'GET', req.url ?? '/', raw);
      if (r.body === undefined) {
        res.writeHead(r.status).end();
      } else {
        const text = JSON.stringify(r.body);
        res.writeHead(r.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }).end(text);
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
