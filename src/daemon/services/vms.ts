import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BangerError, notFound, toBangerError } from '../../api/errors.js';
import type { Vm, VmAction, VmBulkResult, VmState } from '../../api/schemas.js';
import type { Config } from '../../config/config.js';
import type { Layout } from '../../config/layout.js';
import { type AgentLink, openAgentLink } from '../../guest/agent-link.js';
import { guestBinary } from '../../guest/binaries.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import { buildVmInitrd, vmCmdline, WORK_LABEL_UNSEEDED } from '../../guest/vm-boot.js';
import type { DiskTools } from '../../host/disks.js';
import { killNow, processesNaming } from '../../host/orphans.js';
import type { CommandRunner } from '../../host/runner.js';
import { generateHostKey } from '../../host/ssh-keys.js';
import { lookupUser } from '../../host/users.js';
import { type Repos, resolveRef, type VmRow } from '../../store/repos.js';
import { crashPoint } from '../../util/crash-point.js';
import { parseDuration } from '../../util/duration.js';
import { dnsLabelProblem, newId } from '../../util/ids.js';
import type { KeyedMutex } from '../../util/keyed-mutex.js';
import type { Clock, OpContext } from '../../util/op-context.js';
import { LogCapper } from '../../vmm/console-log.js';
import type { Accelerator, VmLaunchSpec, VmmDriver, VmmHandle, VmmKind } from '../../vmm/driver.js';
import { isHandleAlive, processStats, readTail } from '../../vmm/process.js';
import type { ImageService } from './images.js';
import { KernelService } from './kernels.js';
import { randomVmName } from './names.js';
import type { NetworkService } from './network.js';
import { collapsePorts, enrichPortsWithin } from './port-probe.js';
import { type HostResources, resolveSize, type VmSize, validateSize } from './sizing.js';
import { canMove, decide, effectiveState } from './vm-states.js';
import { workspaceRecordOf } from './workspaces.js';

export interface VmServiceDeps {
  repos: Repos;
  layout: Layout;
  config: Config;
  clock: Clock;
  log: Logger;
  locks: KeyedMutex;
  disks: Pick<DiskTools, 'createOverlay' | 'cloneRaw' | 'mkfsFromDir' | 'growFile'>;
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
}

const GRACEFUL_STOP_MS = 30_000;
/** How long "ready" waits for the guest's sshd to listen (it starts early; see earlySshdFiles). */
const SSHD_READY_TIMEOUT_MS = 60_000;
const SSHD_POLL_MS = 100;

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
      root: join(r.dir, 'root.qcow2'),
      rootRaw: join(r.dir, 'root.ext4'),
      work: join(r.dir, 'work.ext4'),
      initrd: join(r.dir, 'initrd.img'),
      serial: join(r.dir, 'serial.log'),
      vmmLog: join(r.dir, 'vmm.log'),
      agent: join(run, 'agent.sock'),
      ssh: join(r.dir, 'ssh'),
    };
  }

  /** The root disk in the format its VMM's driver takes: a qcow2 overlay, or a raw copy. */
  private rootDisk(r: Pick<VmRow, 'id' | 'dir' | 'vmm'>): { path: string; format: 'qcow2' | 'raw' } {
    const format = this.d.driver(r.vmm as VmmKind).rootDiskFormat;
    return { path: join(r.dir, format === 'qcow2' ? 'root.qcow2' : 'root.ext4'), format };
  }

  /** The disks of a (stopped) VM, for saving it as an image. */
  diskPaths(ref: string): { root: string; format: 'qcow2' | 'raw'; work: string } {
    const r = this.row(ref);
    const p = this.paths(r);
    const root = this.rootDisk(r);
    return { root: root.path, format: root.format, work: p.work };
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
    const live = (state: string) => state === 'starting' || state === 'running' || state === 'stopping';
    if (!live(r0.state)) return async () => true;
    return async () => {
      const r = this.d.repos.vms.byId(r0.id);
      if (!r || !live(r.state) || r.handle !== r0.handle) return true;
      return !(await this.handleAlive(r));
    };
  }

  // ---- create --------------------------------------------------------------------------

  async create(input: CreateVmInput, ctx: OpContext): Promise<Vm> {
    ctx.stage('resolve image', input.image ?? this.d.config.default_image_name);
    const imageRef = input.image ?? this.d.config.default_image_name;
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
    const size: VmSize = resolveSize({ vcpus: input.vcpus, memoryMib: input.memoryMib, diskSizeBytes: input.diskSizeBytes }, this.d.config, this.d.host);
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
      `spec: ${name} vcpus=${size.vcpus} memory=${size.memoryMib}MiB disk=${Math.round(size.diskSizeBytes / 1024 ** 2)}MiB image=${image.name} vmm=${this.d.vmmKind} ip=${lease.ip} nat=${input.nat ? 'on' : 'off'}`,
    );

    return this.d.locks.run(`vm:${row.id}`, async () => {
      const p = this.paths(row);
      try {
        ctx.stage('prepare disks');
        await mkdir(p.dir, { recursive: true, mode: 0o700 });
        await generateHostKey(this.d.runner, p.ssh, `banger-${name}`);
        const root = this.rootDisk(row);
        if (root.format === 'qcow2') await this.d.disks.createOverlay(image.rootfs_path, root.path);
        else await this.d.disks.cloneRaw(image.rootfs_path, root.path);
        // Empty: the guest seeds it from the image's /root at first boot (see banger-init).
        await this.d.disks.mkfsFromDir(p.work, size.diskSizeBytes, undefined, WORK_LABEL_UNSEEDED);
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
        await this.startLocked(row, ctx, input.waitFor ?? 'ssh');
      } catch (e) {
        // A VMM that never launched leaves nothing worth keeping; a guest that launched but never
        // became ready is kept (stopped, with its logs) for a post-mortem.
        const err = toBangerError(e);
        if (err.code === 'timeout') throw err;
        await this.purge(this.d.repos.vms.byId(row.id) ?? row);
        throw err;
      }
      ctx.stage('ready');
      await this.d.onVmsChanged?.();
      return this.toVm(this.d.repos.vms.get(row.id));
    });
  }

  // ---- start / stop --------------------------------------------------------------------

  private async startLocked(r: VmRow, ctx?: OpContext, waitFor: 'ssh' | 'agent' = 'ssh'): Promise<void> {
    const kernel = this.d.repos.kernels.byId(r.kernel_id);
    const image = this.d.repos.images.byId(r.image_id);
    if (!kernel || !image) throw new BangerError('internal', `VM ${r.name} refers to a missing image or kernel`);
    const p = this.paths(r);
    await mkdir(p.run, { recursive: true, mode: 0o700 });
    // The KVM probe boots a throw-away guest once per host kernel; show it as its own stage.
    const accel = await this.d.accel(kernel.kernel_path, kernel.initrd_path ?? undefined, () => ctx?.stage('probe KVM', 'once per host kernel'));
    ctx?.stage('start VMM', `${r.vmm}/${accel}`);
    const net = await this.d.network.attach(r);
    let initrd = kernel.initrd_path ?? undefined;
    // An image without sshd gets one installed at first boot, which needs the package mirror: NAT.
    const firstBoot = !!r.nat && image.has_sshd === 0;
    try {
      if (KernelService.hasBangerInitramfs(kernel)) {
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
    const spec: VmLaunchSpec = {
      vmId: r.id,
      name: r.name,
      vcpus: r.vcpus,
      memoryMib: r.memory_mib,
      kernelPath: kernel.kernel_path,
      ...(initrd ? { initrdPath: initrd } : {}),
      cmdline: await vmCmdline({ hostname: r.name }),
      disks: [
        { id: 'root', ...this.rootDisk(r) },
        { id: 'work', path: p.work, format: 'raw' },
      ],
      nets: [{ id: 'net0', tapName: net.tap, mac: net.mac }],
      runDir: p.run,
      serialLogPath: p.serial,
      vmmLogPath: p.vmmLog,
      agentSocketPath: p.agent,
      accel,
    };
    let handle: VmmHandle;
    try {
      handle = await this.d.driver(r.vmm as VmmKind).launch(spec);
    } catch (e) {
      await this.d.network.detach({ ...r, tap: net.tap });
      throw e;
    }
    // A daemon that dies here leaves a VMM no row names: the next start finds it by the run
    // directory in its argv and kills it (reconcile).
    crashPoint('vm-start:launched');
    const now = this.d.clock.now().toISOString();
    this.move(r.id, 'starting', { handle: JSON.stringify(handle), accel, started_at: now, touched_at: now, last_error: null });
    ctx?.stage('wait for agent');
    const link = this.openAgent(handle);
    this.agents.set(r.id, link);
    const timeoutMs = this.d.agentReadyTimeoutMs ?? 180_000;
    try {
      await link.waitReady(timeoutMs, ctx?.signal);
    } catch (e) {
      const alive = await isHandleAlive(handle);
      const serialTail = await readTail(p.serial, 1500);
      await this.stopLocked(r.id, true);
      const cancelled = ctx?.signal.aborted;
      const message = cancelled
        ? `start of ${r.name} was cancelled`
        : alive
          ? `guest agent of ${r.name} did not become ready within ${timeoutMs / 1000}s (${(e as Error).message}); the VM was stopped and kept for inspection`
          : `the VMM of ${r.name} exited during boot; the VM was kept for inspection`;
      this.move(r.id, 'error', { last_error: message });
      throw new BangerError(cancelled ? 'cancelled' : 'timeout', `${message}${serialTail ? `\n--- serial console tail ---\n${serialTail}` : ''}`, {
        fix: `inspect with \`banger vm logs ${r.name}\`, then \`banger vm delete ${r.name}\``,
      });
    }
    this.move(r.id, 'running');
    await this.d.network.published(this.d.repos.vms.get(r.id));
    try {
      // Never into an image build's VM: its /root becomes the image's, and synced files are the user's secrets.
      if (!r.transient) await this.d.afterGuestReady?.({ id: r.id, name: r.name }, ctx);
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
  }

  private async act(action: VmAction, id: string): Promise<void> {
    await this.d.locks.run(`vm:${id}`, async () => {
      const r = this.d.repos.vms.byId(id);
      if (!r) throw notFound('vm', id);
      this.touch(id);
      const verdict = decide(action, effectiveState(r.state as VmState, await this.handleAlive(r)), r.name);
      if (verdict.do === 'noop') return;
      if (verdict.do === 'refuse') throw new BangerError('precondition_failed', verdict.why, { fix: verdict.fix });
      switch (action) {
        case 'start':
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
        await this.d.disks.growFile(this.paths(r).work, change.diskSizeBytes);
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
      throw new BangerError('conflict', `VM ${r.name} is ${r.state}, not running`, { fix: `start it: banger vm start ${r.name}` });
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
    for (const r of this.d.repos.vms.all()) {
      if (!r.handle) {
        if (['starting', 'running', 'stopping'].includes(r.state)) this.move(r.id, 'stopped');
        continue;
      }
      const handle = handleOf(r) as VmmHandle;
      if (await isHandleAlive(handle)) {
        this.d.log.info({ vm: r.name, pid: handle.pid }, 're-adopted running VM');
        if (r.state !== 'running') {
          // starting/stopping cut short by the daemon's death; no other state keeps a live handle.
          if (canMove(r.state as VmState, 'running')) this.move(r.id, 'running');
          else this.d.log.warn({ vm: r.name, state: r.state }, 'a live VMM behind a VM recorded as not running: left as recorded');
        }
        this.agents.set(r.id, this.openAgent(handle));
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
      if (r.state !== 'created' && !r.transient) continue;
      this.d.log.warn({ vm: r.name, state: r.state, transient: !!r.transient }, 'removing a VM left by an unfinished operation');
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
  }
}

/** The VMM handle a row records (parsed in one place). */
function handleOf(r: Pick<VmRow, 'handle'>): VmmHandle | undefined {
  return r.handle ? (JSON.parse(r.handle) as VmmHandle) : undefined;
}
