import { z } from 'zod';
import { ERROR_CODES } from './errors.js';
import { WorkspaceRecordSchema } from './workspace-schemas.js';

/**
 * The wire contract of /v1. The daemon validates every request body against these and every
 * response before it is sent; the client imports only the inferred types (zod stays off the CLI's
 * hot path) and can opt into validating responses too.
 */

export const ErrorBodySchema = z.object({
  code: z.enum(Object.keys(ERROR_CODES) as [keyof typeof ERROR_CODES, ...(keyof typeof ERROR_CODES)[]]),
  message: z.string(),
  fix: z.string().optional(),
  opId: z.string().optional(),
  details: z.unknown().optional(),
});
export const ErrorResponseSchema = z.object({ error: ErrorBodySchema });

export const StageSchema = z.object({
  name: z.string(),
  startedAt: z.string(),
  endedAt: z.string().optional(),
  detail: z.string().optional(),
});

export const OperationStateSchema = z.enum(['running', 'succeeded', 'failed', 'cancelled']);

export const OperationSchema = z.object({
  id: z.string(),
  kind: z.string(),
  target: z.string().optional(),
  state: OperationStateSchema,
  stages: z.array(StageSchema),
  progress: z.object({ current: z.number(), total: z.number().optional(), unit: z.string() }).optional(),
  /** The last lines the operation logged (bounded), so a late subscriber still sees them. */
  log: z.array(z.string()).optional(),
  result: z.unknown().optional(),
  error: ErrorBodySchema.optional(),
  createdAt: z.string(),
  endedAt: z.string().optional(),
});
export type Operation = z.infer<typeof OperationSchema>;

export const OperationEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('snapshot'), operation: OperationSchema }),
  z.object({ type: z.literal('stage'), stage: StageSchema }),
  z.object({ type: z.literal('progress'), progress: OperationSchema.shape.progress.unwrap() }),
  z.object({ type: z.literal('log'), line: z.string() }),
  z.object({ type: z.literal('done'), operation: OperationSchema }),
]);
export type OperationEvent = z.infer<typeof OperationEventSchema>;

export const OperationListSchema = z.object({ operations: z.array(OperationSchema) });

export const DaemonStatusSchema = z.object({
  pid: z.number().int(),
  version: z.string(),
  commit: z.string(),
  buildTime: z.string(),
  nodeVersion: z.string(),
  socketPath: z.string(),
  logPath: z.string(),
  stateDir: z.string(),
  startedAt: z.string(),
  uptimeSeconds: z.number(),
  dnsListenAddr: z.string().nullable(),
  webListenAddr: z.string().nullable(),
  vmm: z.string(),
  accel: z.string().nullable(),
});
export type DaemonStatus = z.infer<typeof DaemonStatusSchema>;

/** `POST /v1/web/token`: a one-use link into the web UI (docs/web.md). */
export const WebTokenRequestSchema = z.object({}).strict();
export const WebTokenSchema = z.object({ url: z.string(), expiresAt: z.string() });
export type WebToken = z.infer<typeof WebTokenSchema>;

// ---- kernels and images -------------------------------------------------------------------

export const KernelSchema = z.object({
  id: z.string(),
  name: z.string(),
  version: z.string(),
  kernelPath: z.string(),
  initrdPath: z.string().nullable(),
  modulesDir: z.string().nullable(),
  source: z.string(),
  managed: z.boolean(),
  sizeBytes: z.number(),
  createdAt: z.string(),
});
export type Kernel = z.infer<typeof KernelSchema>;

export const ResourceName = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'use lowercase letters, digits, ".", "_" and "-", starting with a letter or digit');

export const KernelImportRequestSchema = z.object({ name: ResourceName, from: z.string().min(1) }).strict();

export const ImageSchema = z.object({
  id: z.string(),
  name: z.string(),
  rootfsPath: z.string(),
  kernelId: z.string(),
  kernelName: z.string(),
  managed: z.boolean(),
  hasSystemd: z.boolean(),
  hasSshd: z.boolean(),
  /** Manifest digest for pulled images. */
  digest: z.string().nullable(),
  sizeBytes: z.number(),
  source: z.string(),
  createdAt: z.string(),
  /** Software a recipe installed at pinned versions (package → version), e.g. the agents image's Node.js and coding agents. */
  software: z.record(z.string(), z.string()),
});
export type Image = z.infer<typeof ImageSchema>;

export const ImageRegisterRequestSchema = z
  .object({
    name: ResourceName,
    rootfs: z.string().min(1),
    kernel: z.string().min(1).optional(),
    initrd: z.string().min(1).optional(),
    modules: z.string().min(1).optional(),
    kernelRef: z.string().min(1).optional(),
  })
  .strict()
  .refine((r) => (r.kernel ? !r.kernelRef : !!r.kernelRef), {
    message: 'give exactly one of --kernel FILE or --kernel-ref NAME',
  })
  .refine((r) => !(r.kernelRef && (r.initrd || r.modules)), {
    message: '--initrd and --modules go with --kernel, not with --kernel-ref',
  });

export const ImagePullRequestSchema = z
  .object({
    ref: z.string().min(1).max(512),
    name: ResourceName.optional(),
    kernelRef: z.string().min(1).optional(),
    sizeBytes: z.number().int().positive().optional(),
  })
  .strict();
export type ImagePullRequest = z.infer<typeof ImagePullRequestSchema>;

export const ImageBuildRequestSchema = z
  .object({
    from: z.string().min(1),
    name: ResourceName,
    /** The script's text; it runs as root under bash in the build VM. */
    script: z
      .string()
      .min(1)
      .max(1024 * 1024),
    /** Builds usually install packages: NAT is on unless turned off. */
    nat: z.boolean().default(true),
    diskSizeBytes: z.number().int().positive().optional(),
  })
  .strict();
export type ImageBuildRequest = z.infer<typeof ImageBuildRequestSchema>;

export const ImageCatalogListSchema = z.object({
  images: z.array(
    z.object({
      name: z.string(),
      description: z.string(),
      kernel: z.string(),
      kind: z.enum(['recipe', 'bundle', 'oci']),
      source: z.string(),
      pulled: z.boolean(),
    }),
  ),
});
export type ImageCatalogList = z.infer<typeof ImageCatalogListSchema>;

export const CachePruneReportSchema = z.object({
  removed: z.number(),
  freedBytes: z.number(),
  kept: z.number(),
  dryRun: z.boolean(),
});

// ---- VMs ---------------------------------------------------------------------------------

/**
 * `paused`: the VMM is alive with its vCPUs stopped (`vm pause`); `suspended`: its state and RAM are
 * saved on disk and no VMM runs (`vm pause --to-disk`); `vm resume` (or `vm start`) continues either.
 */
export const VmStateSchema = z.enum(['created', 'starting', 'running', 'paused', 'suspended', 'stopping', 'stopped', 'error']);
export type VmState = z.infer<typeof VmStateSchema>;

export const VmSchema = z.object({
  id: z.string(),
  name: z.string(),
  imageId: z.string(),
  imageName: z.string(),
  kernelName: z.string(),
  state: VmStateSchema,
  vcpus: z.number().int(),
  memoryMib: z.number().int(),
  diskSizeBytes: z.number().int(),
  vmm: z.string(),
  accel: z.string().nullable(),
  pid: z.number().int().nullable(),
  ip: z.string().nullable(),
  nat: z.boolean(),
  tap: z.string().nullable(),
  lastError: z.string().nullable(),
  dir: z.string(),
  createdAt: z.string(),
  startedAt: z.string().nullable(),
  touchedAt: z.string(),
  /** The git workspace prepared in the VM (docs/workspaces.md), null when none. */
  workspace: WorkspaceRecordSchema.nullable(),
});
export type Vm = z.infer<typeof VmSchema>;

/**
 * One readiness check of a new VM (`vm create --wait-for port:N|CMD`): a TCP listener on a guest
 * port, or a shell command (`sh -c`, as root in /root) that exits 0.
 */
export const ReadyCheckSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('port'), port: z.number().int().min(1).max(65535) }).strict(),
  z
    .object({
      kind: z.literal('command'),
      command: z
        .string()
        .max(4096)
        .refine((c) => c.trim() !== '', { message: 'a readiness command must not be empty' })
        .refine((c) => !c.includes('\0'), { message: 'a readiness command must not contain NUL' }),
    })
    .strict(),
]);
export type ReadyCheck = z.infer<typeof ReadyCheckSchema>;
/** The longest a create may wait for its readiness checks, and the default. */
export const READY_TIMEOUT_MAX_MS = 24 * 3_600_000;
export const READY_TIMEOUT_DEFAULT_MS = 10 * 60_000;

export const VmCreateRequestSchema = z
  .object({
    name: z.string().optional(),
    image: z.string().min(1).optional(),
    vcpus: z.number().int().optional(),
    memoryMib: z.number().int().optional(),
    diskSizeBytes: z.number().int().optional(),
    nat: z.boolean().default(false),
    start: z.boolean().default(true),
    /**
     * What "ready" waits for: `ssh` (default) — the agent and, where the image has sshd, a
     * listener on port 22, so `ssh <name>.vm` works at once; `agent` — the agent only (commands run
     * through the agent's process API, e.g. `vm run -- CMD`, need no sshd).
     */
    waitFor: z.enum(['ssh', 'agent']).default('ssh'),
    /**
     * Then, in order, until each holds: readiness checks of the user's own (a port that listens, a
     * command that succeeds). Needs `start`. A timeout keeps the VM running for inspection.
     */
    readyWhen: z.array(ReadyCheckSchema).max(8).optional(),
    /** One bound for all the readyWhen checks (default 10 minutes, at most 24 hours). */
    readyTimeoutMs: z.number().int().min(1000).max(READY_TIMEOUT_MAX_MS).optional(),
    /** Start from this snapshot (name or id) instead of the image: its disks, and its memory when it has one. */
    fromSnapshot: z.string().min(1).max(128).optional(),
    /** Boot cold even when the image has a matching warm snapshot (`image warm`). */
    cold: z.boolean().default(false),
  })
  .strict()
  .refine((r) => !(r.fromSnapshot && r.image), { message: 'give --image or --from-snapshot, not both (a snapshot names its image)' })
  .refine((r) => r.start || (r.readyWhen === undefined && r.readyTimeoutMs === undefined), {
    message: 'readiness checks (--wait-for port:N or a command, --wait-timeout) need a started VM (not --no-start)',
  });
export type VmCreateRequest = z.input<typeof VmCreateRequestSchema>;

export const VmSetRequestSchema = z
  .object({
    nat: z.boolean().optional(),
    vcpus: z.number().int().optional(),
    memoryMib: z.number().int().optional(),
    diskSizeBytes: z.number().int().optional(),
  })
  .strict();
export type VmSetRequest = z.infer<typeof VmSetRequestSchema>;

export const VmActionSchema = z.enum(['start', 'stop', 'restart', 'kill', 'delete']);
export type VmAction = z.infer<typeof VmActionSchema>;
export const VmBulkRequestSchema = z
  .object({ action: VmActionSchema, refs: z.array(z.string().min(1)).min(1).max(256), force: z.boolean().default(false) })
  .strict();
export type VmBulkRequest = z.input<typeof VmBulkRequestSchema>;

export const VmBulkResultSchema = z.object({
  results: z.array(z.object({ ref: z.string(), id: z.string().optional(), name: z.string().optional(), ok: z.boolean(), error: ErrorBodySchema.optional() })),
});
export type VmBulkResult = z.infer<typeof VmBulkResultSchema>;

/** What the guest agent reports; the API adds the host's view (latency, endpoints, URLs). */
export const AgentHealthSchema = z.object({
  ready: z.boolean(),
  uptimeSeconds: z.number(),
  agentVersion: z.string(),
  hostname: z.string(),
});
export type AgentHealth = z.infer<typeof AgentHealthSchema>;
export const GuestHealthSchema = AgentHealthSchema.extend({ latencyMs: z.number() });
export type GuestHealth = z.infer<typeof GuestHealthSchema>;

/** One listening socket as the agent reads it from /proc. */
export const GuestListenerSchema = z.object({
  proto: z.string(),
  address: z.string(),
  port: z.number().int(),
  pid: z.number().int().nullable(),
  command: z.string(),
});
export type GuestListener = z.infer<typeof GuestListenerSchema>;
export const GuestPortSchema = GuestListenerSchema.extend({
  /** `<name>.vm:<port>` */
  endpoint: z.string().optional(),
  /** Set for TCP listeners that answered HTTPS or HTTP from the host. */
  url: z.string().optional(),
});
export type GuestPort = z.infer<typeof GuestPortSchema>;
/** `note`: set when probing stopped at its deadline and some ports were not probed. */
export const GuestPortsSchema = z.object({ ports: z.array(GuestPortSchema), note: z.string().optional() });
export type GuestPorts = z.infer<typeof GuestPortsSchema>;

export const GuestStatsSchema = z.object({
  memTotalKib: z.number(),
  memAvailableKib: z.number(),
  load1: z.number(),
  load5: z.number(),
  load15: z.number(),
  uptimeSeconds: z.number(),
});
export type GuestStats = z.infer<typeof GuestStatsSchema>;
export const VmStatsSchema = z.object({
  vmm: z.object({ pid: z.number().int(), cpuPercent: z.number(), rssBytes: z.number() }).nullable(),
  guest: GuestStatsSchema.nullable(),
});
export type VmStats = z.infer<typeof VmStatsSchema>;

export const VmListSchema = z.object({ vms: z.array(VmSchema) });
export const ImageListSchema = z.object({ images: z.array(ImageSchema) });
export const KernelListSchema = z.object({ kernels: z.array(KernelSchema) });
export const AcceptedOperationSchema = z.object({ operation: OperationSchema });

// ---- snapshots, pause/resume, fork, warm pool (docs/snapshots.md) ---------------------------

/** What a snapshot was taken with; a restore refuses (`snapshot_incompatible`) when a field differs. */
export const SnapshotManifestSchema = z.object({
  format: z.literal(1),
  vmm: z.string(),
  vmmVersion: z.string(),
  /** sha256 of the device configuration a restore must reproduce (machine, vCPUs, memory, disks, NICs). */
  deviceHash: z.string(),
  kernelId: z.string(),
  kernelName: z.string(),
  imageId: z.string(),
  imageName: z.string(),
  /** sha256 of the banger-agent binary the guest runs (a restored guest keeps its old agent). */
  agentHash: z.string(),
  vcpus: z.number().int(),
  memoryMib: z.number().int(),
  diskSizeBytes: z.number().int(),
  memory: z.boolean(),
  stateBytes: z.number().int(),
  memoryBytes: z.number().int(),
  sourceVm: z.string(),
  /** The source's generation counter: a VM made from the snapshot gets the next one (a clone of a clone sees it change too). */
  generation: z.number().int().min(0).optional(),
  /** `agent-ready`: taken right after the agent answered, before any file sync (warm pool). */
  takenAt: z.enum(['running', 'agent-ready']),
});
export type SnapshotManifest = z.infer<typeof SnapshotManifestSchema>;

export const SnapshotSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** `user` (vm snapshot), `warm` (image warm), `fork` (the transient snapshot of a vm fork). */
  purpose: z.enum(['user', 'warm', 'fork']),
  sourceVm: z.string(),
  imageName: z.string(),
  hasMemory: z.boolean(),
  sizeBytes: z.number().int(),
  manifest: SnapshotManifestSchema,
  /** VMs whose disks are layered on this snapshot's (a delete refuses while any exist, unless forced). */
  dependents: z.array(z.string()),
  createdAt: z.string(),
});
export type Snapshot = z.infer<typeof SnapshotSchema>;
export const SnapshotListSchema = z.object({ snapshots: z.array(SnapshotSchema) });

export const VmSnapshotRequestSchema = z
  .object({
    name: ResourceName.optional(),
    /** false: freeze the guest's filesystems and keep the disk layers only; a start from it is a cold boot. */
    memory: z.boolean().default(true),
  })
  .strict();
export type VmSnapshotRequest = z.input<typeof VmSnapshotRequestSchema>;

export const VmPauseRequestSchema = z.object({ toDisk: z.boolean().default(false) }).strict();
export type VmPauseRequest = z.input<typeof VmPauseRequestSchema>;

export const VmForkRequestSchema = z
  .object({
    count: z.number().int().min(1).max(16).default(1),
    /** Names of the clones (default `<source>-fork-<k>`); as many as count. */
    names: z.array(z.string().min(1).max(63)).max(16).optional(),
  })
  .strict()
  .refine((r) => !r.names || r.names.length === r.count, { message: 'give as many names as --count' });
export type VmForkRequest = z.input<typeof VmForkRequestSchema>;

export const VmForkResultSchema = z.object({
  snapshot: z.string(),
  results: z.array(z.object({ name: z.string(), ok: z.boolean(), vm: VmSchema.optional(), error: ErrorBodySchema.optional() })),
});
export type VmForkResult = z.infer<typeof VmForkResultSchema>;

export const ImageWarmRequestSchema = z
  .object({ vcpus: z.number().int().optional(), memoryMib: z.number().int().optional(), diskSizeBytes: z.number().int().optional() })
  .strict();
export type ImageWarmRequest = z.input<typeof ImageWarmRequestSchema>;
