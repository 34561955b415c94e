/** `Banger.connect()` and the daemon-wide resources: vms, images, kernels, operations. */
import type { KernelCatalogItem } from '../api/kernel-schemas.js';
import type {
  DaemonStatus,
  Image,
  ImageCatalogList,
  ImagePullRequest,
  ImageWarmRequest,
  Kernel,
  Operation,
  Snapshot,
  VmCreateRequest,
  Vm as VmInfo,
} from '../api/schemas.js';
import { BangerClient } from '../client/client.js';
import { checkVm } from '../client/trust.js';
import { type Layout, resolveClientLayout, resolveLayout } from '../config/layout.js';
import { OperationHandle } from './operation.js';
import { abortable, type CallOptions } from './util.js';
import { bulkAction, type DisposeAction, Vm } from './vm.js';

export interface ConnectOptions extends CallOptions {
  /** Where the daemon lives (default: as the CLI resolves it: BANGER_HOME, XDG dirs, or the system service). */
  layout?: Layout;
  /** A BANGER_HOME directory to use instead of the environment's (tests, isolated installations). */
  home?: string;
  /** Talk to the daemon on this socket (never starts one there). */
  socketPath?: string;
  /** Start bangerd when it is not running, as the CLI does (default true; never for the system service). */
  autostart?: boolean;
  /** How long one request may wait for the daemon's answer (default 120 s). Separate from process timeouts. */
  requestTimeoutMs?: number;
}

export interface CreateVmOptions extends VmCreateRequest, CallOptions {
  /** What `dispose()` / `await using` does with the VM (default 'delete'). */
  dispose?: DisposeAction;
}

class Vms {
  constructor(private readonly client: BangerClient) {}

  async list(o: CallOptions = {}): Promise<Vm[]> {
    return (await abortable(this.client.vms(), o.signal)).map((v) => new Vm(this.client, v));
  }
  /** A VM by name or id (`not_found` when there is none). Its handle disposes nothing by default. */
  async get(ref: string, o: { dispose?: DisposeAction } & CallOptions = {}): Promise<Vm> {
    return new Vm(this.client, await abortable(this.client.vm(ref), o.signal), o.dispose ?? 'none');
  }
  /**
   * Creates (and by default starts) a VM. An operation: `await` it for the VM handle, iterate
   * `events` for its stages. Aborting cancels it (a cancelled create leaves nothing behind).
   */
  create(req: CreateVmOptions = {}): OperationHandle<Vm> {
    const { signal, dispose, ...body } = req;
    return new OperationHandle(
      this.client,
      () => this.client.createVm(body),
      (r) => new Vm(this.client, checkVm(r as VmInfo), dispose ?? 'delete'),
      signal,
      true,
      (r) => bulkAction(this.client, 'delete', (r as VmInfo).id, { force: true }),
    );
  }
  delete(ref: string, o: { force?: boolean } & CallOptions = {}): Promise<void> {
    return bulkAction(this.client, 'delete', ref, { force: true, ...o });
  }
  start(ref: string, o: CallOptions = {}): Promise<void> {
    return bulkAction(this.client, 'start', ref, o);
  }
  stop(ref: string, o: CallOptions = {}): Promise<void> {
    return bulkAction(this.client, 'stop', ref, o);
  }
}

class Images {
  constructor(private readonly client: BangerClient) {}
  list(o: CallOptions = {}): Promise<Image[]> {
    return abortable(this.client.images(), o.signal);
  }
  get(ref: string, o: CallOptions = {}): Promise<Image> {
    return abortable(this.client.image(ref), o.signal);
  }
  /** Images that `pull` knows by name, and their state here. */
  catalog(o: CallOptions = {}): Promise<ImageCatalogList> {
    return abortable(this.client.imageCatalog(), o.signal);
  }
  /** Pulls a catalog image or an OCI reference (an operation: progress in `events`). */
  pull(req: Omit<ImagePullRequest, 'sizeBytes'> & { sizeBytes?: number } & CallOptions): OperationHandle<Image> {
    const { signal, ...body } = req;
    return new OperationHandle(
      this.client,
      () => this.client.pullImage(body),
      (r) => r as Image,
      signal,
    );
  }
  async delete(ref: string, o: CallOptions = {}): Promise<void> {
    await abortable(this.client.deleteImage(ref), o.signal);
  }
  /**
   * Makes the image's warm snapshot for this size (defaults: the daemon's `[vm_defaults]`): a later
   * `vms.create` of the same image and size restores it instead of booting (`cold: true` boots cold).
   * An operation giving the snapshot; an older warm snapshot for the same image and size goes.
   */
  warm(ref: string, o: ImageWarmRequest & CallOptions = {}): OperationHandle<Snapshot> {
    const { signal, ...body } = o;
    return new OperationHandle(
      this.client,
      () => this.client.warmImage(ref, body),
      (r) => r as Snapshot,
      signal,
    );
  }
}

class Snapshots {
  constructor(private readonly client: BangerClient) {}
  /** Every snapshot: the user's (`vm.snapshot`), the warm pool's (`images.warm`), and forks in progress. */
  list(o: CallOptions = {}): Promise<Snapshot[]> {
    return abortable(this.client.snapshots(), o.signal);
  }
  /** A snapshot by name or id, with its manifest and the VMs layered on it (`dependents`). */
  get(ref: string, o: CallOptions = {}): Promise<Snapshot> {
    return abortable(this.client.snapshot(ref), o.signal);
  }
  /**
   * Deletes a snapshot. It refuses (`conflict`, naming them) while VMs are layered on it, unless
   * `force`: those VMs keep working (a layer file goes only when nothing needs it).
   */
  async delete(ref: string, o: { force?: boolean } & CallOptions = {}): Promise<void> {
    await abortable(this.client.deleteSnapshot(ref, !!o.force), o.signal);
  }
}

class Kernels {
  constructor(private readonly client: BangerClient) {}
  list(o: CallOptions = {}): Promise<Kernel[]> {
    return abortable(this.client.kernels(), o.signal);
  }
  get(ref: string, o: CallOptions = {}): Promise<Kernel> {
    return abortable(this.client.kernel(ref), o.signal);
  }
  catalog(o: CallOptions = {}): Promise<KernelCatalogItem[]> {
    return abortable(this.client.kernelCatalog(), o.signal);
  }
  /** Pulls a catalog kernel (an operation). */
  pull(name: string, o: { force?: boolean } & CallOptions = {}): OperationHandle<Kernel> {
    return new OperationHandle(
      this.client,
      () => this.client.pullKernel(name, !!o.force),
      (r) => r as Kernel,
      o.signal,
    );
  }
  async delete(ref: string, o: { force?: boolean } & CallOptions = {}): Promise<void> {
    await abortable(this.client.deleteKernel(ref, !!o.force), o.signal);
  }
}

class Operations {
  constructor(private readonly client: BangerClient) {}
  list(o: CallOptions = {}): Promise<Operation[]> {
    return abortable(this.client.operations(), o.signal);
  }
  get(id: string, o: CallOptions = {}): Promise<Operation> {
    return abortable(this.client.operation(id), o.signal);
  }
  /**
   * Follows an operation started elsewhere (e.g. by the CLI): its events and its result. Aborting
   * `signal` stops following, never cancels it (that is `cancel(id)`).
   */
  follow(id: string, o: CallOptions = {}): OperationHandle<unknown> {
    return new OperationHandle(
      this.client,
      async () => ({ operation: await this.client.operation(id) }),
      (r) => r,
      o.signal,
      false,
    );
  }
  async cancel(id: string, o: CallOptions = {}): Promise<boolean> {
    return (await abortable(this.client.cancelOperation(id), o.signal)).cancelled;
  }
}

/**
 * banger from code. `await Banger.connect()` finds (and, as the CLI does, starts) the daemon; the
 * object holds no connection, so there is nothing to close.
 */
export class Banger {
  readonly vms: Vms;
  readonly images: Images;
  readonly kernels: Kernels;
  readonly operations: Operations;
  readonly snapshots: Snapshots;

  private constructor(
    /** The typed client underneath, for routes the SDK does not wrap. */
    readonly client: BangerClient,
  ) {
    this.vms = new Vms(client);
    this.images = new Images(client);
    this.kernels = new Kernels(client);
    this.operations = new Operations(client);
    this.snapshots = new Snapshots(client);
  }

  /** Connects to the daemon (starting it when needed and allowed) and checks that it answers. */
  static async connect(o: ConnectOptions = {}): Promise<Banger> {
    let layout = o.layout ?? (o.home ? resolveLayout({ BANGER_HOME: o.home }) : undefined);
    let autostart = o.autostart ?? true;
    if (o.socketPath) {
      layout = { ...(layout ?? resolveClientLayout()), socketPath: o.socketPath };
      autostart = false;
    }
    const client = new BangerClient({
      ...(layout ? { layout } : {}),
      autostart,
      ...(o.requestTimeoutMs !== undefined ? { timeoutMs: o.requestTimeoutMs } : {}),
    });
    const banger = new Banger(client);
    await abortable(client.status(), o.signal, 'connecting to bangerd');
    return banger;
  }

  /** The daemon's version, pid and configuration summary. */
  status(o: CallOptions = {}): Promise<DaemonStatus> {
    return abortable(this.client.status(), o.signal);
  }
}

export type { Images, Kernels, Operations, Snapshots, Vms };
