import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BangerError, notFound, toBangerError } from '../../api/errors.js';
import { READY_TIMEOUT_DEFAULT_MS, type ReadyCheck, type Vm, type VmAction, type VmBulkResult, type VmState } from '../../api/schemas.js';
import type { Config } from '../../config/config.js';
import type { Layout } from '../../config/layout.js';
import { type AgentLink, openAgentLink } from '../../guest/agent-link.js';
import { guestBinary } from '../../guest/binaries.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import { buildVmInitrd, vmCmdline, WORK_LABEL_UNSEEDED } from '../../guest/vm-boot.js';
import type { DiskTools } from '../../host/disks.js';
import { killNow, processesNaming } from '../../host/orphans.js';
import type { CommandRunner } from '../../host/runner.js';
import { generateHostKey, hostKeyFiles } from '../../host/ssh-keys.js';
import { lookupUser } from '../../host/users.js';
import { type DiskLayerRow, type Repos, resolveRef, type VmRow } from '../../store/repos.js';
import { crashPoint } from '../../util/crash-point.js';
import { parseDuration } from '../../util/duration.js';
import { dnsLabelProblem, newId } from '../../util/ids.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import { LogCapper } from '../../vmm/console-log.js';
import type { Accelerator, VmLaunchSpec, VmmDriver, VmmHandle, VmmKind } from '../../vmm/driver.js';
import { isHandleAlive, processStats, readTail } from '../../vmm/process.js';
import type { DiskLayers } from './disk-layers.js';
import type { ImageService } from './images.js';
import { KernelService } from './kernels.js';
import { randomVmName } from './names.js';
import type { NetworkService } from './network.js';
import { collapsePorts, enrichPortsWithin } from './port-probe.js';
import { type ReadinessOptions, waitUntilReady } from './readiness.js';
import { type HostResources, resolveSize, type VmSize, validateSize } from './sizing.js';
import type { SnapshotCatalog } from './snapshot-catalog.js';
import { canMove, decide, effectiveState, isLiveState } from './vm-states.js';
import { workspaceRecordOf } from './workspaces.js';

export interface VmServiceDeps {
  repos: Repos;
  layout: Layout;
  config: Config;
  clock: Clock;
  log: Logger;
  locks: KeyedMutex;
  disks: Pick<DiskTools, 'growFile' | 'growQcow2'>;
  /** Every writable disk is the top of a layer chain (disk-layers.ts). */
  layers: DiskLayers;
  /** Snapshots a create can start from (vm create --from-snapshot, the warm pool). */
  snapshots: SnapshotCatalog;
  kernels: KernelService;
  images: Pick<ImageService, 'row' | 'ensure'>;
  driver: (kind: VmmKind) => VmmDriver;
  /** The VMM for new VMs (vmm = auto|qemu|firecracker, resolved at daemon start). */
  vmmKind: VmmKind;
  /** Resolves the accelerator, probing KVM once per host kernel when needed. */
  accel: (kernelPath: string, initrdPath: string | undefined, onProbe?: () => void) => Promise<Accelerator>;
  host: HostResources;
  runner: CommandRunner;
  network: Pick<NetworkService, 'lease' | 'ipOf' | 'attach' | 'detach' | 'published' | 'applyNat' | 'reconcile'>;
  /** The agent connection of a launched VM (default: the real one over its socket). */
  agentLink?: (handle: VmmHandle) => AgentLink;
  /** The managed SSH key's public half, authorized for root in every VM. */
  sshPublicKey: () => Promise<string>;
  /** Called after VMs change (created, deleted): regenerates banger's ssh_config and known_hosts. */
  onVmsChanged?: () => Promise<void>;
  agentReadyTimeoutMs?: number;
  /**
   * Runs at every start once the agent answers and the VM is `running` (the `sync files` step:
   * file-sync.ts). A failure stops the VM, leaves it in `error` and fails the start. Not run for
   * transient VMs (an image build's: what lands in its /root is saved into the image).
   */
  afterGuestReady?: (vm: { id: string; name: string }, ctx?: OpContext) => Promise<void>;
  /** Poll and retry intervals of the readiness checks (tests shorten them; readiness.ts has the defaults). */
  readiness?: Pick<ReadinessOptions, 'portPollMs' | 'commandRetryMs' | 'attemptTimeoutMs'>;
}

export interface CreateVmInput {
  name?: string | undefined;
  nat?: boolean | undefined;
  image?: string | undefined;
  vcpus?: number | undefined;
  memoryMib?: number | undefined;
  diskSizeBytes?: number | undefined;
  start: boolean;
  /** Lives only inside the calling operation (an image build): a daemon restart deletes it. */
  transient?: boolean;
  /** What "ready" waits for (see VmCreateRequestSchema.waitFor). */
  waitFor?: 'ssh' | 'agent' | undefined;
  /** Start from this snapshot (its image, size, disks and, when it has one, memory). */
  fromSnapshot?: string | undefined;
  /** Boot cold even when a warm snapshot matches. */
  cold?: boolean | undefined;
  /** Then these checks, in order (readiness.ts); a timeout keeps the VM running. */
  readyWhen?: ReadyCheck[] | undefined;
  /** One bound for all of readyWhen (default READY_TIMEOUT_DEFAULT_MS). */
  readyTimeoutMs?: number | undefined;
}

/** How a start continues a saved guest instead of booting one (startLocked). */
export interface RestoreSpec {
  statePath: string;
  memoryPath: string;
  /** A new VM from a snapshot gets its own identity; a resumed VM keeps its own. */
  reidentify: boolean;
}

const GRACEFUL_STOP_MS = 30_000;
/** How long "ready" waits for the guest's sshd to listen (it starts early; see earlySshdFiles). */
const SSHD_READY_TIMEOUT_MS = 60_000;
const SSHD_POLL_MS = 100;
/** A clock set whose round trip took longer than this is repeated (the guest may have applied it late). */
const CLOCK_ROUND_TRIP_MS = 200;

export class VmService {
  private readonly agents = new Map<string, AgentLink>();
  private staleTimer: NodeJS.Timeout | undefined;
  /** Guest-fed logs of running VMs stay under their cap (copy-truncate to .1), checked every 2 s. */
  private readonly logCapper = new LogCapper({
    files: () =>
      this.d.repos.vms
        .all()
        .filter((r) => r.handle)
        .flatMap((r) => [this.paths(r).serial, this.paths(r).vmmLog]),
    onRotate: (path) => this.d.log.info({ path }, 'capped a VM log (copy-truncate to .1)'),
    onError: (path, err) => this.d.log.warn({ err, path }, 'cannot cap a VM log'),
  });

  constructor(private readonly d: VmServiceDeps) {}

  // ---- reading -------------------------------------------------------------------------

  toVm(r: VmRow): Vm {
    const image = this.d.repos.images.byId(r.image_id);
    const kernel = this.d.repos.kernels.byId(r.kernel_id);
    const handle = handleOf(r);
    return {
      id: r.id,
      name: r.name,
      imageId: r.image_id,
      imageName: image?.name ?? '?',
      kernelName: kernel?.name ?? '?',
      state: r.state as VmState,
      vcpus: r.vcpus,
      memoryMib: r.memory_mib,
      diskSizeBytes: r.disk_size_bytes,
      vmm: r.vmm,
      accel: r.accel,
      pid: handle?.pid ?? null,
      ip: this.d.network.ipOf(r.id),
      nat: r.nat === 1,
      tap: r.tap,
      lastError: r.last_error,
      dir: r.dir,
      createdAt: r.created_at,
      startedAt: r.started_at,
      touchedAt: r.touched_at,
      workspace: workspaceRecordOf(this.d.repos.workspaces.byVm(r.id)),
    };
  }

  list(): Vm[] {
    return this.d.repos.vms.all().map((r) => this.toVm(r));
  }

  row(ref: string): VmRow {
    const r = resolveRef(ref, this.d.repos.vms.byName, this.d.repos.vms.byIdPrefix);
    if (r === 'ambiguous') throw new BangerError('bad_request', `VM ref "${ref}" matches several VMs`, { fix: 'use the name or a longer id prefix' });
    if (!r) throw notFound('vm', ref);
    return r;
  }

  show(ref: string): Vm {
    const r = this.row(ref);
    this.touch(r.id);
    return this.toVm(r);
  }

  // ---- paths ---------------------------------------------------------------------------

  private paths(r: Pick<VmRow, 'id' | 'dir'>) {
    const run = join(this.d.layout.vmsRunDir, r.id);
    return {
      dir: r.dir,
      run,
      initrd: join(r.dir, 'initrd.img'),
      serial: join(r.dir, 'serial.log'),
      vmmLog: join(r.dir, 'vmm.log'),
      agent: join(run, 'agent.sock'),
      ssh: join(r.dir, 'ssh'),
      /** State and RAM of a VM paused to disk. */
      suspend: join(r.dir, 'suspend'),
    };
  }

  /** The top layers of a VM's disks (the files its VMM writes). */
  private diskTops(r: Pick<VmRow, 'name' | 'root_layer' | 'work_layer'>): { root: DiskLayerRow; work: DiskLayerRow } {
    if (!r.root_layer || !r.work_layer) throw new BangerError('internal', `VM ${r.name} has no disk layers recorded`);
    return { root: this.d.repos.layers.get(r.root_layer), work: this.d.repos.layers.get(r.work_layer) };
  }

  /** The disks of a (stopped) VM, for saving it as an image. */
  diskPaths(ref: string): { root: string; format: 'qcow2' | 'raw'; work: string } {
    const tops = this.diskTops(this.row(ref));
    return { root: tops.root.path, format: tops.root.format, work: tops.work.path };
  }

  serialLogPath(ref: string): string {
    return this.paths(this.row(ref)).serial;
  }

  /**
   * For `vm logs -f`: a check that turns true once the boot the VM is running now is over (it
   * stopped, was restarted or deleted, or its VMM died), so the follow can end. A VM that is not
   * starting, running or stopping has no boot to follow: true at once. A restart always changes
   * the handle (it is set with `starting`), so it ends the follow however briefly the VM was down
   * between two polls.
   */
  bootEnded(ref: string): () => Promise<boolean> {
    const r0 = this.row(ref);
    const live = (state: string) => isLiveState(state as VmState);
    if (!live(r0.state)) return async () => true;
    return async () => {
      const r = this.d.repos.vms.byId(r0.id);
      if (!r || !live(r.state) || r.handle !== r0.handle) return true;
      return !(await this.handleAlive(r));
    };
  }

  // ---- create --------------------------------------------------------------------------

  async create(input: CreateVmInput, ctx: OpContext): Promise<Vm> {
    const vm = await this.createAndStart(input, ctx);
    if (!input.start || !input.readyWhen?.length) return vm;
    await this.waitUntilReady(vm, input.readyWhen, input.readyTimeoutMs ?? READY_TIMEOUT_DEFAULT_MS, ctx);
    ctx.stage('ready');
    return this.toVm(this.d.repos.vms.get(vm.id));
  }

  /**
   * The user's readiness checks of a new, running VM, outside its lock (a wait may take minutes:
   * `vm delete`/`stop` are not held up; a stop ends the wait with `conflict`). The VM is in use
   * meanwhile (auto-stop leaves it alone). A timeout keeps it running for inspection; a cancel
   * (also the daemon's shutdown, which cancels running operations) deletes it, like every
   * unfinished create.
   */
  private async waitUntilReady(vm: Vm, checks: ReadyCheck[], timeoutMs: number, ctx: OpContext): Promise<void> {
    const release = this.inUse(vm.id);
    try {
      await waitUntilReady({
        vmName: vm.name,
        checks,
        timeoutMs,
        ctx,
        guest: () => {
          const r = this.d.repos.vms.byId(vm.id);
          return r?.state === 'running' && r.handle ? this.agents.get(vm.id) : undefined;
        },
        ...this.d.readiness,
      });
    } catch (e) {
      const err = toBangerError(e);
      if (err.code === 'timeout') {
        this.d.log.info({ vm: vm.name }, 'readiness checks timed out; the VM is kept running');
      } else if (ctx.signal.aborted) {
        await this.d.locks.run(`vm:${vm.id}`, async () => {
          const r = this.d.repos.vms.byId(vm.id);
          if (!r) return;
          await this.stopLocked(r.id, true);
          await this.purge(r);
        });
        await this.d.onVmsChanged?.();
      }
      throw e;
    } finally {
      release();
    }
  }

  private async createAndStart(input: CreateVmInput, ctx: OpContext): Promise<Vm> {
    const fromSnapshot = input.fromSnapshot ? await this.d.snapshots.forCreate(input.fromSnapshot, this.d.vmmKind) : undefined;
    if (fromSnapshot) {
      const m = fromSnapshot.manifest;
      for (const [field, asked, has] of [
        ['vcpus', input.vcpus, m.vcpus],
        ['memory', input.memoryMib, m.memoryMib],
        ['disk size', input.diskSizeBytes, m.diskSizeBytes],
      ] as const) {
        if (asked !== undefined && asked !== has)
          throw new BangerError('bad_request', `a VM from snapshot ${fromSnapshot.row.name} has its ${field} (${has}), not ${asked}`, {
            fix: 'leave out --vcpus/--memory/--disk-size, or create from the image instead',
          });
      }
    }
    const imageRef = fromSnapshot ? fromSnapshot.row.image_id : (input.image ?? this.d.config.default_image_name);
    ctx.stage('resolve image', fromSnapshot ? `snapshot ${fromSnapshot.row.name}` : imageRef);
    let image: ReturnType<ImageService['row']>;
    try {
      image = this.d.images.row(imageRef);
    } catch (e) {
      if (!(e instanceof BangerError && e.code === 'not_found')) throw e;
      // First use of a catalog image (the default one on a fresh host): pull it as part of this create.
      const pulled = await this.d.images.ensure(imageRef, ctx);
      if (!pulled) {
        throw new BangerError('not_found', `image "${imageRef}" not found, and no image catalog has it`, {
          fix: 'pull one (banger image pull REF), register one (banger image register), or list them: banger image list',
        });
      }
      image = pulled;
    }
    const size: VmSize = fromSnapshot
      ? { vcpus: fromSnapshot.manifest.vcpus, memoryMib: fromSnapshot.manifest.memoryMib, diskSizeBytes: fromSnapshot.manifest.diskSizeBytes }
      : resolveSize({ vcpus: input.vcpus, memoryMib: input.memoryMib, diskSizeBytes: input.diskSizeBytes }, this.d.config, this.d.host);
    // A plain create restores the image's warm snapshot of this size when one matches (image warm).
    const source =
      fromSnapshot ??
      (input.cold || input.transient || !input.start
        ? undefined
        : await this.d.snapshots.warmFor({ imageId: image.id, ...size }, this.d.vmmKind, (why) => ctx.log(why)));
    if (input.name !== undefined) {
      const problem = dnsLabelProblem(input.name);
      if (problem)
        throw new BangerError('bad_request', `VM name "${input.name}" ${problem}`, { fix: 'use a DNS label such as "dev" or "api-1" (it becomes <name>.vm)' });
    }
    let name = input.name ?? randomVmName();
    for (let i = 0; input.name === undefined && this.d.repos.vms.byName(name) && i < 20; i++) name = randomVmName();
    ctx.setTarget(name);

    const row = await this.d.locks.run(`vm-name:${name}`, async () => {
      if (this.d.repos.vms.byName(name)) {
        throw new BangerError('conflict', `a VM named "${name}" already exists`, { fix: `pick another --name, or delete it: banger vm delete ${name}` });
      }
      const id = newId();
      const now = this.d.clock.now().toISOString();
      const r: VmRow = {
        id,
        name,
        image_id: image.id,
        kernel_id: image.kernel_id,
        vcpus: size.vcpus,
        memory_mib: size.memoryMib,
        disk_size_bytes: size.diskSizeBytes,
        vmm: this.d.vmmKind,
        accel: null,
        state: 'created',
        handle: null,
        last_error: null,
        dir: join(this.d.layout.vmsStateDir, id),
        created_at: now,
        started_at: null,
        touched_at: now,
        nat: input.nat ? 1 : 0,
        tap: null,
        transient: input.transient ? 1 : 0,
        root_layer: null,
        work_layer: null,
        // Re-identification bumps it: a VM from a snapshot continues its source's count.
        generation: source?.manifest.generation ?? 0,
        // A VM from a snapshot is published only once re-identified: until then a daemon start deletes it.
        unpublished: source?.row.has_memory && input.start ? 1 : 0,
      };
      // State 'created' until the create finishes: a daemon that dies before then leaves a row
      // that the next start purges (row, lease, files).
      this.d.repos.vms.insert(r);
      return r;
    });
    crashPoint('vm-create:row');
    let lease: { ip: string };
    try {
      lease = this.d.network.lease(row.id);
    } catch (e) {
      this.d.repos.vms.delete(row.id);
      throw e;
    }
    crashPoint('vm-create:lease');
    ctx.log(
      `spec: ${name} vcpus=${size.vcpus} memory=${size.memoryMib}MiB disk=${Math.round(size.diskSizeBytes / 1024 ** 2)}MiB image=${image.name} vmm=${this.d.vmmKind} ip=${lease.ip} nat=${input.nat ? 'on' : 'off'}${source ? ` from=${source.row.purpose === 'warm' ? 'warm snapshot' : 'snapshot'} ${source.row.name}` : ''}`,
    );

    return this.d.locks.run(`vm:${row.id}`, async () => {
      const p = this.paths(row);
      try {
        ctx.stage('prepare disks');
        await mkdir(p.dir, { recursive: true, mode: 0o700 });
        await generateHostKey(this.d.runner, p.ssh, `banger-${name}`);
        const format = this.d.driver(row.vmm as VmmKind).rootDiskFormat;
        const tops = source
          ? await this.d.layers.newTopsOver({ root: source.row.root_layer as string, work: source.row.work_layer as string }, format)
          : await this.d.layers.createForVm({ imageRootfs: image.rootfs_path, format, workSizeBytes: size.diskSizeBytes, workLabel: WORK_LABEL_UNSEEDED });
        this.d.repos.vms.update(row.id, { root_layer: tops.root, work_layer: tops.work });
        crashPoint('vm-create:disks');
        ctx.checkCancelled();
      } catch (e) {
        await this.purge(row);
        throw e;
      }
      if (!input.start) {
        this.move(row.id, 'stopped');
        await this.d.onVmsChanged?.();
        return this.toVm(this.d.repos.vms.get(row.id));
      }
      try {
        const restore = source?.row.has_memory ? { ...source.files, reidentify: true } : undefined;
        if (source && !restore) ctx.log(`snapshot ${source.row.name} has no memory: a cold boot from its disks (processes it ran are not running)`);
        await this.startLocked(this.d.repos.vms.get(row.id), ctx, input.waitFor ?? 'ssh', restore);
      } catch (e) {
        // A VMM that never launched leaves nothing worth keeping; a guest that launched but never
        // became ready is kept (stopped, with its logs) for a post-mortem.
        const err = toBangerError(e);
        if (source?.row.purpose === 'warm' && !ctx.signal.aborted) {
          // The warm pool is an optimisation: a restore that failed becomes a cold boot.
          await this.purge(this.d.repos.vms.byId(row.id) ?? row);
          ctx.log(`warm snapshot ${source.row.name} did not restore (${err.message.split('\n')[0]}): booting cold`);
          return this.createAndStart({ ...input, name, cold: true }, ctx);
        }
        if (err.code === 'timeout') throw err;
        await this.purge(this.d.repos.vms.byId(row.id) ?? row);
        throw err;
      }
      if (!input.readyWhen?.length) ctx.stage('ready');
      await this.d.onVmsChanged?.();
      return this.toVm(this.d.repos.vms.get(row.id));
    });
  }

  // ---- start / stop --------------------------------------------------------------------

  /**
   * Boots a VM, or with `restore` continues a saved guest (a resume from disk, a VM from a
   * snapshot): the VMM loads the state paused, and for a new identity its NIC stays down until the
   * agent has re-identified the guest (clock, hostname, machine-id, SSH host key, MAC, address,
   * RNG, generation); only then is the VM `running` and published.
   */
  private async startLocked(r: VmRow, ctx?: OpContext, waitFor: 'ssh' | 'agent' = 'ssh', restore?: RestoreSpec): Promise<void> {
    const kernel = this.d.repos.kernels.byId(r.kernel_id);
    const image = this.d.repos.images.byId(r.image_id);
    if (!kernel || !image) throw new BangerError('internal', `VM ${r.name} refers to a missing image or kernel`);
    const p = this.paths(r);
    await mkdir(p.run, { recursive: true, mode: 0o700 });
    const driver = this.d.driver(r.vmm as VmmKind);
    // The KVM probe boots a throw-away guest once per host kernel; show it as its own stage.
    const accel = await this.d.accel(kernel.kernel_path, kernel.initrd_path ?? undefined, () => ctx?.stage('probe KVM', 'once per host kernel'));
    ctx?.stage(restore ? 'restore VMM' : 'start VMM', `${r.vmm}/${accel}`);
    const net = await this.d.network.attach(r);
    let initrd = kernel.initrd_path ?? undefined;
    // An image without sshd gets one installed at first boot, which needs the package mirror: NAT.
    const firstBoot = !!r.nat && image.has_sshd === 0;
    try {
      // A restore's RAM comes from the snapshot (QEMU loads no ROM into RAM while it waits for an
      // incoming state): the kernel's own initramfs fills the slot, the per-VM one is not built.
      if (KernelService.hasBangerInitramfs(kernel) && !restore) {
        await buildVmInitrd({
          baseInitramfs: kernel.initrd_path as string,
          outPath: p.initrd,
          hostname: r.name,
          agentBinary: guestBinary('banger-agent'),
          hostKeyDir: p.ssh,
          authorizedKey: await this.d.sshPublicKey(),
          network: net,
          firstBoot,
        });
        initrd = p.initrd;
      }
    } catch (e) {
      await this.d.network.detach({ ...r, tap: net.tap });
      throw e;
    }
    const tops = this.diskTops(r);
    // QEMU guests keep their RAM in a shared memfd, so a snapshot copies it instead of streaming it.
    const sharedMemory = driver.snapshotSupport.memory && r.vmm === 'qemu';
    const spec: VmLaunchSpec = {
      vmId: r.id,
      name: r.name,
      vcpus: r.vcpus,
      memoryMib: r.memory_mib,
      kernelPath: kernel.kernel_path,
      ...(initrd ? { initrdPath: initrd } : {}),
      cmdline: await vmCmdline({ hostname: r.name }),
      disks: [
        { id: 'root', path: tops.root.path, format: tops.root.format },
        { id: 'work', path: tops.work.path, format: tops.work.format },
      ],
      nets: [{ id: 'net0', tapName: net.tap, mac: net.mac }],
      runDir: p.run,
      serialLogPath: p.serial,
      vmmLogPath: p.vmmLog,
      agentSocketPath: p.agent,
      accel,
      ...(sharedMemory ? { sharedMemory } : {}),
      ...(restore ? { restore: { statePath: restore.statePath, memoryPath: restore.memoryPath } } : {}),
    };
    let handle: VmmHandle;
    try {
      handle = await driver.launch(spec);
    } catch (e) {
      await this.d.network.detach({ ...r, tap: net.tap });
      throw e;
    }
    // A daemon that dies here leaves a VMM no row names: the next start finds it by the run
    // directory in its argv and kills it (reconcile).
    crashPoint('vm-start:launched');
    if (restore) crashPoint('vm-restore:launched');
    const now = this.d.clock.now().toISOString();
    this.move(r.id, 'starting', { handle: JSON.stringify(handle), accel, started_at: now, touched_at: now, last_error: null });
    const link = this.openAgent(handle);
    this.agents.set(r.id, link);
    const timeoutMs = this.d.agentReadyTimeoutMs ?? 180_000;
    try {
      if (restore) {
        // Silent on the network until it has its own MAC and address (the source may still run).
        if (restore.reidentify) await driver.setLinkUp?.(handle, 'net0', false);
        await driver.resume(handle);
      }
      ctx?.stage(restore ? 'wait for agent' : 'wait for agent');
      await link.waitReady(timeoutMs, ctx?.signal);
      if (restore) {
        ctx?.stage(restore.reidentify ? 're-identify' : 'set clock');
        await this.reidentify(this.d.repos.vms.get(r.id), link, net, restore.reidentify, ctx);
        if (restore.reidentify) await driver.setLinkUp?.(handle, 'net0', true);
      }
    } catch (e) {
      const alive = await isHandleAlive(handle);
      const serialTail = await readTail(p.serial, 1500);
      await this.stopLocked(r.id, true);
      const cancelled = ctx?.signal.aborted;
      const message = cancelled
        ? `start of ${r.name} was cancelled`
        : restore && alive
          ? `the restored guest of ${r.name} did not come back (${(e as Error).message}); the VM was stopped`
          : alive
            ? `guest agent of ${r.name} did not become ready within ${timeoutMs / 1000}s (${(e as Error).message}); the VM was stopped and kept for inspection`
            : `the VMM of ${r.name} exited during ${restore ? 'the restore' : 'boot'}; the VM was kept for inspection`;
      // Stopped and off the network: kept for inspection, not deleted at the next daemon start.
      this.move(r.id, 'error', { last_error: message, unpublished: 0 });
      throw new BangerError(cancelled ? 'cancelled' : 'timeout', `${message}${serialTail ? `\n--- serial console tail ---\n${serialTail}` : ''}`, {
        fix: `inspect with \`banger vm logs ${r.name}\`, then \`banger vm delete ${r.name}\``,
      });
    }
    this.move(r.id, 'running', { unpublished: 0 });
    await this.d.network.published(this.d.repos.vms.get(r.id));
    try {
      // Never into an image build's VM: its /root becomes the image's, and synced files are the user's secrets.
      // A resumed guest already has its files; a VM from a snapshot gets this user's files now.
      if (!r.transient && !(restore && !restore.reidentify)) await this.d.afterGuestReady?.({ id: r.id, name: r.name }, ctx);
    } catch (e) {
      const err = toBangerError(e);
      await this.stopLocked(r.id, true);
      const message = `${err.message} (${r.name} was stopped)`;
      this.move(r.id, 'error', { last_error: message });
      throw new BangerError(err.code === 'timeout' ? 'internal' : err.code, message, { ...(err.fix ? { fix: err.fix } : {}), cause: e });
    }
    // Ready means `ssh <name>.vm` works at once where the image has sshd (it starts early: see
    // earlySshdFiles). A first-boot install needs the network and minutes: not waited for.
    if (waitFor === 'ssh' && image.has_sshd === 1) await this.waitForSshd(r.name, link, ctx);
  }

  /**
   * A restored guest's identity (docs/snapshots.md): the clock always (it stood still while
   * saved); for a new VM also its hostname, machine-id, MAC, address and route, an RNG reseed and
   * a new generation, then its own SSH host key (sshd reloaded to serve it).
   */
  private async reidentify(
    r: VmRow,
    link: AgentLink,
    net: { mac: string; ip: string; prefix: number; gateway: string },
    full: boolean,
    ctx?: OpContext,
  ): Promise<void> {
    if (!full) {
      // Its own identity: only the clock, and a guest that will not take it still runs.
      await this.setGuestClock(link).catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'clock not set after the restore'));
      return;
    }
    const t0 = performance.now();
    const step = (what: string) => ctx?.log(`re-identify: ${what} at ${Math.round(performance.now() - t0)} ms`);
    const generation = r.generation + 1;
    this.d.repos.vms.update(r.id, { generation });
    const { randomBytes } = await import('node:crypto');
    const sent = performance.now();
    let identityRoundTrip = 0;
    // The identity (control channel) and the host key files (data channels) go at once: both are
    // in place before the NIC comes up, which is all that is needed.
    await Promise.all([
      link
        .identitySet(
          {
            clock_unix_ms: this.d.clock.now().getTime(),
            hostname: r.name,
            machine_id: randomBytes(16).toString('hex'),
            net: { iface: 'eth0', mac: net.mac, addr: net.ip, prefix: net.prefix, gateway: net.gateway },
            seed_hex: randomBytes(64).toString('hex'),
            generation,
          },
          10_000,
        )
        .then(() => {
          identityRoundTrip = performance.now() - sent;
          step('identity set');
        }),
      (async () => {
        for (const f of await hostKeyFiles(this.paths(r).ssh)) {
          await link.guest.writeFile(f.path, Readable.from([f.content]), { mode: f.mode, mkdirs: false });
        }
      })(),
    ]);
    step('host key written');
    // The new key is on disk before anyone can connect (the NIC is still down), and OpenSSH's
    // per-connection re-exec reads it from there. The listener is also told (SIGHUP: it re-execs),
    // for sshd builds that keep keys loaded, in the background: a fresh process under TCG costs
    // seconds right after a restore (nothing of the guest is translated yet). No sshd: nothing to do.
    void link.guest
      .pipeIn(
        [
          '/bin/sh',
          '-c',
          'if [ -s /run/sshd.pid ]; then kill -HUP "$(cat /run/sshd.pid)"; else systemctl reload ssh.service || systemctl reload sshd.service; fi 2>/dev/null || true',
        ],
        '/',
        Readable.from([]),
      )
      .catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'sshd reload after re-identification failed'));
    // A guest still busy restoring may have applied the time late: set it again until quick.
    if (identityRoundTrip > CLOCK_ROUND_TRIP_MS) {
      await this.setGuestClock(link);
      step('clock set again');
    }
  }

  /**
   * Sets a guest's clock to the host's. The agent applies the time it was sent when it reads the
   * request, so a guest busy restoring sets a stale one: repeated while the round trip is slow,
   * the error ends bounded by one quick round trip.
   */
  async setGuestClock(link: AgentLink): Promise<void> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const t0 = performance.now();
      await link.identitySet({ clock_unix_ms: this.d.clock.now().getTime() }, 10_000);
      if (performance.now() - t0 < CLOCK_ROUND_TRIP_MS) return;
    }
  }

  /** Polls the guest's listeners until one is on port 22; a guest without one is still usable. */
  private async waitForSshd(name: string, link: AgentLink, ctx?: OpContext): Promise<void> {
    ctx?.stage('wait for sshd');
    // Counted in polls, not clock time: each poll takes at least SSHD_POLL_MS.
    for (let poll = 0; poll < SSHD_READY_TIMEOUT_MS / SSHD_POLL_MS; poll++) {
      ctx?.checkCancelled();
      const ports = await link.ports(2000).catch(() => []);
      if (ports.some((p) => p.port === 22 && p.proto.startsWith('tcp'))) return;
      await new Promise((resolve) => setTimeout(resolve, SSHD_POLL_MS));
    }
    ctx?.log(`sshd of ${name} is not listening after ${SSHD_READY_TIMEOUT_MS / 1000}s: \`vm ssh\` may fail; \`vm exec\` works through the agent`);
  }

  /** Graceful power-off with a deadline, then kill. Leaves the VM 'stopped' with no handle. */
  private async stopLocked(id: string, force: boolean): Promise<void> {
    const r = this.d.repos.vms.byId(id);
    if (!r) return;
    let link = this.agents.get(id);
    this.agents.delete(id);
    if (r.handle) {
      const handle = handleOf(r) as VmmHandle;
      if (!force) link ??= this.openAgent(handle);
      const driver = this.d.driver(handle.kind);
      // A paused guest cannot shut down: it runs again for a graceful stop.
      if (r.state === 'paused' && !force) await driver.resume(handle).catch(() => {});
      this.move(id, 'stopping');
      let exited = false;
      if (!force) {
        // The agent asks init to power off (works without logind/acpid); the VMM's ACPI/CtrlAltDel
        // path is the fallback when the agent does not answer.
        const viaAgent = await (link as AgentLink)
          .poweroff(3000)
          .then(() => true)
          .catch(() => false);
        exited = await driver.shutdown(handle, viaAgent ? GRACEFUL_STOP_MS : GRACEFUL_STOP_MS / 2);
      }
      if (!exited) await driver.kill(handle);
    }
    link?.close();
    this.move(id, 'stopped', { handle: null });
    await this.d.network.detach(this.d.repos.vms.get(id));
    await rm(this.paths(r).run, { recursive: true, force: true });
    // A stop discards what a pause to disk saved: the next start boots.
    await rm(this.paths(r).suspend, { recursive: true, force: true });
  }

  private async act(action: VmAction, id: string): Promise<void> {
    await this.d.locks.run(`vm:${id}`, async () => {
      const r = this.d.repos.vms.byId(id);
      if (!r) throw notFound('vm', id);
      this.touch(id);
      const state = effectiveState(r.state as VmState, await this.handleAlive(r));
      const verdict = decide(action, state, r.name);
      if (verdict.do === 'noop') return;
      if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
      switch (action) {
        case 'start':
          // A start of a paused or suspended VM continues it.
          if (state === 'paused' || state === 'suspended') {
            await this.resumeLocked(r);
            return;
          }
          if (r.handle) await this.stopLocked(id, true);
          await this.startLocked(r);
          return;
        case 'stop':
          await this.stopLocked(id, false);
          return;
        case 'kill':
          await this.stopLocked(id, true);
          return;
        case 'restart':
          await this.stopLocked(id, false);
          await this.startLocked(this.d.repos.vms.get(id));
          return;
        case 'delete':
          await this.stopLocked(id, true);
          await this.purge(r);
          await this.d.onVmsChanged?.();
          return;
      }
    });
  }

  // ---- pause / resume ------------------------------------------------------------------

  /**
   * `vm pause`: the vCPUs stop and the VMM stays (resident), or with toDisk its device state and
   * RAM go to `<vm dir>/suspend` and the VMM exits, freeing the memory (`suspended`).
   */
  async pause(ref: string, toDisk: boolean, ctx: OpContext): Promise<Vm> {
    const r0 = this.row(ref);
    ctx.setTarget(r0.name);
    return this.d.locks.run(`vm:${r0.id}`, async () => {
      const r = this.d.repos.vms.get(r0.id);
      this.touch(r.id);
      const state = effectiveState(r.state as VmState, await this.handleAlive(r));
      const verdict = decide('pause', state, r.name);
      if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
      if (verdict.do === 'noop' || (state === 'paused' && !toDisk)) return this.toVm(r);
      const handle = handleOf(r) as VmmHandle;
      const driver = this.d.driver(handle.kind);
      if (toDisk) this.requireMemoryState(r, driver, 'pause --to-disk');
      ctx.stage('pause vCPUs');
      await driver.pause(handle);
      if (state === 'running') this.move(r.id, 'paused');
      if (!toDisk) return this.toVm(this.d.repos.vms.get(r.id));
      ctx.stage('save state', 'device state and RAM');
      const p = this.paths(r);
      const partial = `${p.suspend}.partial`;
      await rm(partial, { recursive: true, force: true });
      await mkdir(partial, { mode: 0o700 });
      try {
        const saved = await driver.saveState(handle, { statePath: join(partial, 'state.bin'), memoryPath: join(partial, 'memory.bin') });
        ctx.log(`saved ${saved.stateBytes} bytes of device state and ${saved.memoryBytes} bytes of RAM`);
        await rm(p.suspend, { recursive: true, force: true });
        await rename(partial, p.suspend);
      } catch (e) {
        await rm(partial, { recursive: true, force: true });
        await driver.resume(handle).catch(() => {});
        this.move(r.id, 'running');
        throw e;
      }
      crashPoint('vm-pause:saved');
      ctx.stage('stop VMM');
      this.agents.get(r.id)?.close();
      this.agents.delete(r.id);
      await driver.kill(handle);
      this.move(r.id, 'suspended', { handle: null });
      await this.d.network.detach(this.d.repos.vms.get(r.id));
      await rm(p.run, { recursive: true, force: true });
      return this.toVm(this.d.repos.vms.get(r.id));
    });
  }

  /** `vm resume`: a paused VM's vCPUs run again; a suspended VM is restored from its saved state. */
  async resume(ref: string, ctx: OpContext): Promise<Vm> {
    const r0 = this.row(ref);
    ctx.setTarget(r0.name);
    return this.d.locks.run(`vm:${r0.id}`, async () => {
      const r = this.d.repos.vms.get(r0.id);
      this.touch(r.id);
      const verdict = decide('resume', effectiveState(r.state as VmState, await this.handleAlive(r)), r.name);
      if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
      if (verdict.do === 'run') await this.resumeLocked(r, ctx);
      return this.toVm(this.d.repos.vms.get(r.id));
    });
  }

  private async resumeLocked(r: VmRow, ctx?: OpContext): Promise<void> {
    if (r.state === 'paused') {
      const handle = handleOf(r) as VmmHandle;
      ctx?.stage('resume vCPUs');
      await this.d.driver(handle.kind).resume(handle);
      this.move(r.id, 'running');
      // The guest's clock stood still while paused.
      const { link } = await this.agentFor(r.id);
      await link
        .identitySet({ clock_unix_ms: this.d.clock.now().getTime() }, 10_000)
        .catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'clock not set after resume'));
      return;
    }
    const p = this.paths(r);
    const files = { statePath: join(p.suspend, 'state.bin'), memoryPath: join(p.suspend, 'memory.bin') };
    const present = await stat(files.statePath).then(
      () => true,
      () => false,
    );
    if (!present) {
      this.move(r.id, 'error', { last_error: 'its saved state is missing' });
      throw new BangerError('precondition_failed', `VM ${r.name} was suspended but its saved state is gone`, {
        fix: `start it cold: banger vm start ${r.name}`,
      });
    }
    // Out of the way of every stop on the failure path (a stop discards `suspend`): a restore that
    // fails or is cancelled puts it back, and the VM is suspended again.
    const resuming = `${p.suspend}.resuming`;
    await rm(resuming, { recursive: true, force: true });
    await rename(p.suspend, resuming);
    try {
      await this.startLocked(r, ctx, 'agent', {
        statePath: join(resuming, 'state.bin'),
        memoryPath: join(resuming, 'memory.bin'),
        reidentify: false,
      });
    } catch (e) {
      await rename(resuming, p.suspend);
      const now = this.d.repos.vms.get(r.id);
      if (!now.handle && canMove(now.state as VmState, 'suspended'))
        this.move(r.id, 'suspended', { last_error: `resume failed: ${(e as Error).message.split('\n')[0]}` });
      throw e;
    }
    await rm(resuming, { recursive: true, force: true });
  }

  // ---- for the snapshot service (snapshots.ts) ------------------------------------------

  /** Runs fn holding the VM's lock (every change to one VM is serialised by it). */
  withVmLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.d.locks.run(`vm:${id}`, fn);
  }

  /** The state that counts (the record corrected by whether its VMM lives). */
  async stateOf(r: VmRow): Promise<VmState> {
    return effectiveState(r.state as VmState, await this.handleAlive(r));
  }

  handleOf(r: VmRow): VmmHandle | undefined {
    return handleOf(r);
  }

  /** The held agent link of a live VM (opened on first use). */
  agentLink(id: string): AgentLink {
    const r = this.d.repos.vms.get(id);
    let link = this.agents.get(id);
    if (!link) {
      const h = handleOf(r);
      if (!h) throw new BangerError('conflict', `VM ${r.name} is ${r.state}`, { fix: `start it: banger vm start ${r.name}` });
      link = this.openAgent(h);
      this.agents.set(id, link);
    }
    return link;
  }

  /** A memory snapshot needs a VMM that saves state and (QEMU) a guest whose RAM is in a shared file. */
  requireMemoryState(r: VmRow, driver: VmmDriver, what: string): void {
    if (!driver.snapshotSupport.memory) {
      throw new BangerError('precondition_failed', `${driver.kind} here cannot save a VM's memory (${what})`, {
        fix: 'take a disk-only snapshot: --no-memory',
      });
    }
    const handle = handleOf(r);
    if (handle?.kind === 'qemu' && !handle.sharedMemory) {
      throw new BangerError(
        'precondition_failed',
        `VM ${r.name} was started before banger shared guest RAM with the host, so its memory cannot be saved (${what})`,
        {
          fix: `restart it once: banger vm restart ${r.name}`,
        },
      );
    }
  }

  /**
   * Acts on several VMs: resolves every ref once, drops duplicates, runs concurrently, and
   * reports per target in first-seen order.
   */
  async bulk(action: VmAction, refs: string[]): Promise<VmBulkResult> {
    const targets: Array<{ ref: string; row?: VmRow; error?: BangerError }> = [];
    const seen = new Set<string>();
    for (const ref of refs) {
      try {
        const row = this.row(ref);
        if (seen.has(row.id)) continue;
        seen.add(row.id);
        targets.push({ ref, row });
      } catch (e) {
        targets.push({ ref, error: toBangerError(e) });
      }
    }
    const results = await Promise.all(
      targets.map(async (t) => {
        if (!t.row) return { ref: t.ref, ok: false, error: t.error?.toBody() };
        try {
          await this.act(action, t.row.id);
          return { ref: t.ref, id: t.row.id, name: t.row.name, ok: true };
        } catch (e) {
          return { ref: t.ref, id: t.row.id, name: t.row.name, ok: false, error: toBangerError(e).toBody() };
        }
      }),
    );
    return { results };
  }

  async set(ref: string, change: Partial<VmSize> & { nat?: boolean }): Promise<Vm> {
    const r0 = this.row(ref);
    validateSize(change, this.d.host);
    return this.d.locks.run(`vm:${r0.id}`, async () => {
      const r = this.d.repos.vms.get(r0.id);
      const { nat: _nat, ...sizes } = change;
      // The whole request is checked before any part of it is applied.
      const state = effectiveState(r.state as VmState, await this.handleAlive(r));
      if (Object.keys(sizes).length > 0) {
        const verdict = decide('resize', state, r.name);
        if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
      }
      if (change.nat !== undefined) {
        this.d.repos.vms.update(r.id, { nat: change.nat ? 1 : 0, touched_at: this.d.clock.now().toISOString() });
        await this.d.network.applyNat();
      }
      if (Object.keys(sizes).length === 0) return this.toVm(this.d.repos.vms.get(r.id));
      if (change.diskSizeBytes !== undefined && change.diskSizeBytes !== r.disk_size_bytes) {
        // The guest grows the filesystem online at its next boot: no host tool parses a disk the guest wrote.
        const work = this.diskTops(r).work;
        if (work.format === 'qcow2') await this.d.disks.growQcow2(work.path, change.diskSizeBytes);
        else await this.d.disks.growFile(work.path, change.diskSizeBytes);
      }
      const fields: Partial<VmRow> = { touched_at: this.d.clock.now().toISOString() };
      if (change.vcpus !== undefined) fields.vcpus = change.vcpus;
      if (change.memoryMib !== undefined) fields.memory_mib = change.memoryMib;
      if (change.diskSizeBytes !== undefined) fields.disk_size_bytes = change.diskSizeBytes;
      this.d.repos.vms.update(r.id, fields);
      return this.toVm(this.d.repos.vms.get(r.id));
    });
  }

  async prune(dryRun: boolean): Promise<Array<{ id: string; name: string }>> {
    const victims = this.d.repos.vms.all().filter((r) => decide('prune', r.state as VmState, r.name).do === 'run');
    if (!dryRun)
      await this.bulk(
        'delete',
        victims.map((v) => v.id),
      );
    return victims.map((v) => ({ id: v.id, name: v.name }));
  }

  // ---- guest ---------------------------------------------------------------------------

  private async agentFor(ref: string): Promise<{ r: VmRow; link: AgentLink }> {
    const r = this.row(ref);
    this.touch(r.id);
    const verdict = decide('guest', r.handle ? (r.state as VmState) : 'stopped', r.name);
    if (verdict.do === 'refuse' || !r.handle) {
      throw new BangerError('precondition_failed', verdict.do === 'refuse' ? verdict.why : `VM ${r.name} is ${r.state}`, {
        fix: `start it: banger vm start ${r.name}`,
      });
    }
    let link = this.agents.get(r.id);
    if (!link) {
      link = this.openAgent(handleOf(r) as VmmHandle);
      this.agents.set(r.id, link);
    }
    return { r, link };
  }

  /**
   * The guest of a running VM (processes, files): `conflict` naming `banger vm start` when it is not
   * running. The channel is the VM's held agent link (opened on first use, e.g. after a restart).
   */
  async guest(ref: string): Promise<{ vm: { id: string; name: string }; channel: GuestChannel }> {
    const r = this.row(ref);
    if (r.state !== 'running' || !r.handle) {
      const verdict = decide('guest', r.state as VmState, r.name);
      throw new BangerError('conflict', `VM ${r.name} is ${r.state}, not running`, {
        fix: verdict.do === 'refuse' ? verdict.fix : `start it: banger vm start ${r.name}`,
      });
    }
    const { link } = await this.agentFor(ref);
    return { vm: { id: r.id, name: r.name }, channel: link.guest };
  }

  async health(ref: string) {
    const { link } = await this.agentFor(ref);
    const t0 = performance.now();
    const h = await link.health(5000);
    return { ...h, latencyMs: Math.round((performance.now() - t0) * 100) / 100 };
  }

  async ports(ref: string) {
    const { r, link } = await this.agentFor(ref);
    const ports = collapsePorts(await link.ports(5000));
    const ip = this.d.network.ipOf(r.id);
    if (!ip) return { ports };
    // One deadline for all probes: what is known by then is returned, with a note.
    const probed = await enrichPortsWithin(r.name, ip, ports);
    return probed.note ? { ports: probed.ports, note: probed.note } : { ports: probed.ports };
  }

  async stats(ref: string) {
    const r = this.row(ref);
    this.touch(r.id);
    const handle = handleOf(r);
    const vmm = handle && (await isHandleAlive(handle)) ? await processStats(handle.pid) : null;
    let guest = null;
    if (r.state === 'running') {
      try {
        guest = await (await this.agentFor(ref)).link.stats(5000);
      } catch (e) {
        this.d.log.debug({ err: e, vm: r.name }, 'guest stats unavailable');
      }
    }
    return { vmm, guest };
  }

  // ---- daemon lifecycle ----------------------------------------------------------------

  /**
   * At daemon start: VMM processes outlive the daemon, so running ones are re-adopted (same pid
   * and start time) and dead ones are marked stopped (clean power-off seen on the console) or error.
   */
  async reconcile(): Promise<void> {
    await this.logCapper.checkNow();
    await this.reconcileLeftovers();
    for (const r0 of this.d.repos.vms.all()) {
      // Rows from before disk layers: their disk files move into the layer store once.
      if (!r0.root_layer || !r0.work_layer) await this.d.layers.adoptLegacy(r0, this.d.driver(r0.vmm as VmmKind).rootDiskFormat);
      const r = await this.recoverCutResume(this.d.repos.vms.get(r0.id));
      if (!r.handle) {
        if (isLiveState(r.state as VmState)) this.move(r.id, 'stopped');
        if (r.state === 'suspended' && !(await stat(join(this.paths(r).suspend, 'state.bin')).catch(() => undefined))) {
          this.move(r.id, 'stopped', { last_error: 'its saved state (vm pause --to-disk) is missing' });
        }
        continue;
      }
      const handle = handleOf(r) as VmmHandle;
      if (await isHandleAlive(handle)) {
        this.d.log.info({ vm: r.name, pid: handle.pid }, 're-adopted running VM');
        if (r.state === 'running') {
          // A daemon that died during a snapshot or fork left the VM paused: it runs again.
          await this.d
            .driver(handle.kind)
            .resume(handle)
            .catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'could not resume a re-adopted VM'));
        } else if (r.state !== 'paused') {
          // starting/stopping cut short by the daemon's death; no other state keeps a live handle.
          if (canMove(r.state as VmState, 'running')) this.move(r.id, 'running');
          else this.d.log.warn({ vm: r.name, state: r.state }, 'a live VMM behind a VM recorded as not running: left as recorded');
        }
        const link = this.openAgent(handle);
        this.agents.set(r.id, link);
        // If it was paused, its clock stood still: set it (in the background; an older agent just says no).
        if (r.state === 'running') void this.setGuestClock(link).catch(() => {});
        continue;
      }
      const tail = await readTail(this.paths(r).serial, 4096);
      const clean = /reboot: Power down|System halted/.test(tail);
      this.move(r.id, clean ? 'stopped' : 'error', {
        handle: null,
        last_error: clean ? null : 'the VMM process exited while the daemon was not running',
      });
      await rm(this.paths(r).run, { recursive: true, force: true });
    }
    const running = this.d.repos.vms.all().filter((v) => v.state === 'running');
    // TAPs of VMs that died while the daemon was away go back to the pool's reconcile.
    for (const v of this.d.repos.vms.all()) if (v.tap && v.state !== 'running') this.d.repos.vms.update(v.id, { tap: null });
    await this.d.network.reconcile(running);
    await this.d.network.applyNat().catch((e) => this.d.log.warn({ err: e }, 'NAT reconcile failed'));
    this.logCapper.start();
  }

  /**
   * A resume from disk that the daemon's death cut short left its saved state renamed
   * `suspend.resuming`: whatever the VMM got to (it may still wait for its state), it is stopped
   * and the VM is suspended again with its state, so nothing saved is lost; `vm resume` redoes it.
   */
  private async recoverCutResume(r: VmRow): Promise<VmRow> {
    const p = this.paths(r);
    const resuming = `${p.suspend}.resuming`;
    if (!(await stat(join(resuming, 'state.bin')).catch(() => undefined))) return r;
    this.d.log.warn({ vm: r.name }, 'a resume from disk was cut short: the VM is suspended again with its saved state');
    const h = handleOf(r);
    if (h && (await isHandleAlive(h))) await this.d.driver(h.kind).kill(h);
    if (r.tap) await this.d.network.detach(r).catch((e) => this.d.log.warn({ err: e }, 'TAP cleanup failed'));
    await rm(p.suspend, { recursive: true, force: true });
    await rename(resuming, p.suspend);
    await rm(p.run, { recursive: true, force: true });
    this.move(r.id, 'suspended', { handle: null, tap: null, last_error: 'a resume was cut short by the daemon stopping: resume again' });
    return this.d.repos.vms.get(r.id);
  }

  /**
   * What a daemon killed at any point leaves (each create, start and build records its intent
   * first, so every leftover is recognisable):
   * - a VMM process whose run directory is in its argv but whose pid no row records (launched, not
   *   yet recorded; or its row is gone): killed;
   * - rows still 'created' (a create that never finished) and transient rows (the VM of a build
   *   whose operation died with the daemon): VMM killed, row, lease and files removed;
   * - VM state and run directories that no row owns: removed.
   */
  private async reconcileLeftovers(): Promise<void> {
    const rows = new Map(this.d.repos.vms.all().map((r) => [r.id, r]));
    const recorded = new Set<number>();
    for (const r of rows.values()) {
      const h = handleOf(r);
      if (h) recorded.add(h.pid);
    }
    // A QEMU that dropped to vmm_user (-runas) belongs to that user in /proc.
    const vmmUser = this.d.config.vmm_user ? lookupUser(this.d.config.vmm_user) : undefined;
    for (const p of await processesNaming(this.d.layout.vmsRunDir, vmmUser ? { vmmUids: [vmmUser.uid] } : {})) {
      if (recorded.has(p.pid)) continue;
      this.d.log.warn({ pid: p.pid, argv: p.argv.slice(0, 3) }, 'killing a VMM that no VM records (left by a daemon that died while launching it)');
      await killNow(p.pid);
    }
    for (const r of rows.values()) {
      if (r.state !== 'created' && !r.transient && !r.unpublished) continue;
      this.d.log.warn({ vm: r.name, state: r.state, transient: !!r.transient, unpublished: !!r.unpublished }, 'removing a VM left by an unfinished operation');
      if (r.handle) {
        const h = handleOf(r) as VmmHandle;
        if (await isHandleAlive(h)) await killNow(h.pid);
      }
      if (r.tap) await this.d.network.detach(r).catch((e) => this.d.log.warn({ err: e }, 'TAP cleanup failed'));
      await this.purge(r);
      rows.delete(r.id);
    }
    for (const dir of [this.d.layout.vmsStateDir, this.d.layout.vmsRunDir]) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (rows.has(name)) continue;
        this.d.log.warn({ dir: join(dir, name) }, 'removing a VM directory no VM owns');
        await rm(join(dir, name), { recursive: true, force: true });
      }
    }
  }

  startStaleWatcher(): void {
    const after = parseDuration(this.d.config.auto_stop_stale_after) ?? 0;
    if (after <= 0) return;
    const every = Math.min(60_000, Math.max(1000, after / 4));
    this.staleTimer = setInterval(() => void this.stopStale(after), every);
    this.staleTimer.unref();
  }

  async stopStale(afterMs: number): Promise<string[]> {
    const now = this.d.clock.now().getTime();
    const stale = this.d.repos.vms.all().filter((r) => r.state === 'running' && !this.holds.has(r.id) && now - Date.parse(r.touched_at) > afterMs);
    for (const r of stale) {
      this.d.log.info({ vm: r.name }, 'stopping stale VM (auto_stop_stale_after)');
      await this.act('stop', r.id).catch((e) => this.d.log.warn({ err: e, vm: r.name }, 'auto-stop failed'));
    }
    return stale.map((r) => r.name);
  }

  close(): void {
    if (this.staleTimer) clearInterval(this.staleTimer);
    this.logCapper.stop();
    for (const link of this.agents.values()) link.close();
    this.agents.clear();
  }

  // ---- helpers -------------------------------------------------------------------------

  /** Every state change goes through here: a move the state table does not allow is a bug. */
  private move(id: string, to: VmState, fields: Partial<VmRow> = {}): void {
    const from = this.d.repos.vms.byId(id)?.state as VmState | undefined;
    if (from && !canMove(from, to)) throw new BangerError('internal', `VM state ${from} → ${to} is not a legal transition`);
    this.d.repos.vms.update(id, { ...fields, state: to });
  }

  private openAgent(handle: VmmHandle): AgentLink {
    return (this.d.agentLink ?? openAgentLink)(handle);
  }

  /** VMs a client is using right now (e.g. following a process's output): id → holders. */
  private readonly holds = new Map<string, number>();

  /** Marks a VM in use until the returned release is called; auto-stop skips it meanwhile. */
  inUse(id: string): () => void {
    this.holds.set(id, (this.holds.get(id) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.holds.get(id) ?? 1) - 1;
      if (n > 0) this.holds.set(id, n);
      else this.holds.delete(id);
      // Staleness counts from the end of the use.
      if (this.d.repos.vms.byId(id)) this.touch(id);
    };
  }

  private touch(id: string): void {
    this.d.repos.vms.update(id, { touched_at: this.d.clock.now().toISOString() });
  }

  private async handleAlive(r: VmRow): Promise<boolean> {
    if (!r.handle) return false;
    const h = handleOf(r) as VmmHandle;
    return isHandleAlive(h);
  }

  /** Removes every file, socket and the row of a VM whose VMM is not running. */
  private async purge(r: VmRow): Promise<void> {
    this.agents.get(r.id)?.close();
    this.agents.delete(r.id);
    const p = this.paths(r);
    await rm(p.run, { recursive: true, force: true });
    await rm(p.dir, { recursive: true, force: true });
    this.d.repos.vms.delete(r.id);
    // Its top layers, and the frozen ones below that nothing else needs.
    await this.d.layers.collect();
  }
}

/** The VMM handle a row records (parsed in one place). */
function handleOf(r: Pick<VmRow, 'handle'>): VmmHandle | undefined {
  return r.handle ? (JSON.parse(r.handle) as VmmHandle) : undefined;
}
