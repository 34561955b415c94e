/**
 * The wire protocol between the host and banger-agent (agent/banger-agent.c).
 *
 * Newline-delimited JSON, one object per line, at most AGENT_MAX_LINE_BYTES per line (newline
 * excluded), in both directions.
 *   request   {"id":<uint>,"method":"health"|"ports"|"stats"|"ping"|"poweroff"}
 *   response  {"id":<same>,"ok":true,"result":{...}} | {"id":<same>,"ok":false,"error":"..."}
 * The agent answers requests it cannot attribute (invalid JSON, over-long line, bad id) with id 0,
 * so host ids start at 1.
 *
 * Channels: QEMU virtio-serial port AGENT_VIRTIO_PORT_NAME (host: a Unix socket QEMU listens on;
 * the connection must be held, short connections lose replies) or Firecracker hybrid vsock (host:
 * a Unix socket; write `CONNECT <port>\n`, read `OK <host port>\n`, then the same protocol).
 *
 * Everything from the guest is untrusted: every field is bounded here.
 */
import { z } from 'zod';

export const AGENT_MAX_LINE_BYTES = 64 * 1024;
/** Bytes the client buffers from the guest at most: one partial line. */
export const AGENT_MAX_BUFFERED_BYTES = AGENT_MAX_LINE_BYTES;
/** Bytes of the hybrid-vsock `OK <port>` handshake line at most. */
export const AGENT_MAX_HANDSHAKE_BYTES = 64;
export const AGENT_MAX_PORTS = 1024;
/** The agent truncates command lines to 256 bytes (on a UTF-8 boundary), so ≤ 256 UTF-16 units. */
export const AGENT_MAX_COMMAND_CHARS = 256;
export const AGENT_MAX_ERROR_CHARS = 1024;
export const AGENT_VSOCK_PORT = 1024;
export const AGENT_VIRTIO_PORT_NAME = 'org.banger.agent';
export const AGENT_PROTOCOL_VERSION = '0.1.0';
/** Linux's largest possible pid_max (PID_MAX_LIMIT on 64-bit). */
const MAX_PID = 4_194_304;

const count = (max: number) => z.number().int().min(0).max(max);
const real = (max: number) => z.number().min(0).max(max);

export const AgentRequestSchema = z.object({
  id: count(Number.MAX_SAFE_INTEGER),
  method: z.string().max(64),
});
export type AgentRequest = z.infer<typeof AgentRequestSchema>;

export const AgentResponseSchema = z.discriminatedUnion('ok', [
  z.object({ id: count(Number.MAX_SAFE_INTEGER), ok: z.literal(true), result: z.unknown() }),
  z.object({ id: count(Number.MAX_SAFE_INTEGER), ok: z.literal(false), error: z.string().max(AGENT_MAX_ERROR_CHARS) }),
]);
export type AgentResponse = z.infer<typeof AgentResponseSchema>;

export const HealthResultSchema = z.object({
  ready: z.boolean(),
  uptime_s: real(1e10),
  agent_version: z.string().max(64),
  hostname: z.string().max(255),
  boot_id: z.string().max(64),
});

export const PortEntrySchema = z.object({
  proto: z.enum(['tcp', 'tcp6', 'udp', 'udp6']),
  /** IPv4 dotted quad or IPv6 text form (at most 45 chars with an embedded IPv4). */
  address: z
    .string()
    .max(45)
    .regex(/^[0-9a-fA-F.:]+$/),
  port: count(65_535),
  /** null (or 0 from older agents) when no visible process owns the socket; normalised to null. */
  pid: count(MAX_PID)
    .nullable()
    .transform((pid) => (pid === 0 ? null : pid)),
  command: z.string().max(AGENT_MAX_COMMAND_CHARS),
});

export const PortsResultSchema = z.object({
  ports: z.array(PortEntrySchema).max(AGENT_MAX_PORTS),
  /** Set when the list was cut (entry cap or line size). */
  truncated: z.boolean().optional(),
});

export const StatsResultSchema = z.object({
  mem_total_kib: count(2 ** 50),
  mem_available_kib: count(2 ** 50),
  load1: real(1e6),
  load5: real(1e6),
  load15: real(1e6),
  uptime_s: real(1e10),
});

export const PingResultSchema = z.object({});

// ---- processes and files (docs/processes.md) ------------------------------------------------

/** Ids are host-chosen; the guest must answer with one of that form. */
export const PROC_ID_RE = /^[a-z0-9][a-z0-9-]{0,39}$/;
/** Strings the guest echoes back (argv entries, shell, name): the agent's param limit. */
const MAX_ECHO_CHARS = 64 * 1024;
const BYTES = Number.MAX_SAFE_INTEGER;
const MS = 2 ** 48;

/** The agent's proc info (the host's camelCase GuestProc is made from it in guest-channel-agent.ts). */
export const ProcInfoSchema = z.object({
  id: z.string().regex(PROC_ID_RE),
  name: z.string().max(256).nullable(),
  argv: z.array(z.string().max(MAX_ECHO_CHARS)).max(4096).nullable(),
  shell: z.string().max(MAX_ECHO_CHARS).nullable(),
  pid: count(MAX_PID).nullable(),
  pty: z.boolean(),
  state: z.enum(['running', 'exited', 'lost']),
  exit_code: z.number().int().min(0).max(255).nullable(),
  signal: z.number().int().min(1).max(64).nullable(),
  timed_out: z.boolean(),
  code: z
    .string()
    .max(64)
    .regex(/^[a-z_]*$/)
    .nullable(),
  started_ms: count(MS),
  ended_ms: count(MS).nullable(),
  stdout_bytes: count(BYTES),
  stderr_bytes: count(BYTES),
  truncated: z.boolean(),
  stdin: z.enum(['null', 'open', 'closed']),
  stdin_bytes: count(BYTES),
});
export type AgentProcInfo = z.infer<typeof ProcInfoSchema>;

/** The agent caps its process directories at 256. */
export const AGENT_MAX_PROCS = 256;
export const ProcListResultSchema = z.object({ procs: z.array(ProcInfoSchema).max(AGENT_MAX_PROCS) });
export const ProcOffsetResultSchema = z.object({ offset: count(BYTES) });

const FileTypeSchema = z.enum(['file', 'dir', 'symlink', 'other']);
const NAME_MAX = 255;
const PATH_MAX = 4096;
export const FsStatResultSchema = z.object({
  type: FileTypeSchema,
  mode: count(0o7777),
  size: count(BYTES),
  mtime_ms: z.number().int().min(-MS).max(MS),
  uid: count(0xffffffff),
  gid: count(0xffffffff),
  link_target: z.string().max(PATH_MAX).nullable().optional(),
});
export const AGENT_MAX_LIST_ENTRIES = 10_000;
export const FsListResultSchema = z.object({
  entries: z
    .array(
      z.object({
        name: z
          .string()
          .min(1)
          .max(NAME_MAX)
          .refine((n) => n !== '.' && n !== '..' && !n.includes('/') && !n.includes('\0'), 'not a file name'),
        type: FileTypeSchema,
        mode: count(0o7777),
        size: count(BYTES),
        mtime_ms: z.number().int().min(-MS).max(MS),
      }),
    )
    .max(AGENT_MAX_LIST_ENTRIES),
  truncated: z.boolean(),
});

// ---- warm start: identity.set, fs.freeze, fs.thaw (docs/processes.md, "Warm start") ---------

/** The agent's rules for identity.set, checked on the host too so a bad call fails before it is sent. */
/** A VM name (ResourceName in src/api/schemas.ts): the daemon names a guest after its VM. */
export const IDENTITY_HOSTNAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const IDENTITY_MACHINE_ID_RE = /^(?!0{32}$)[0-9a-f]{32}$/;
/** Unicast (first octet even), lowercase. */
export const IDENTITY_MAC_RE = /^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$/;
export const IDENTITY_IFACE_RE = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}$/;
const IPV4_RE = /^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$/;
/** 2020-01-01 .. 2100-01-01 in ms: a clock outside is a bug, not a restore. */
export const IDENTITY_MIN_CLOCK_MS = 1_577_836_800_000;
export const IDENTITY_MAX_CLOCK_MS = 4_102_444_800_000;
/** Bounds of fs.freeze. */
export const FREEZE_MAX_PATHS = 8;
export const FREEZE_MIN_THAW_AFTER_MS = 100;
export const FREEZE_MAX_THAW_AFTER_MS = 60_000;

const ipv4 = z.string().regex(IPV4_RE, 'a dotted-quad IPv4 address');
export const IdentityParamsSchema = z
  .object({
    clock_unix_ms: z.number().int().min(IDENTITY_MIN_CLOCK_MS).max(IDENTITY_MAX_CLOCK_MS),
    hostname: z.string().regex(IDENTITY_HOSTNAME_RE, '1-63 of a-z, 0-9, ".", "_" and "-", starting with a letter or digit').optional(),
    machine_id: z.string().regex(IDENTITY_MACHINE_ID_RE, '32 lowercase hex digits, not all zeros').optional(),
    net: z
      .object({
        iface: z.string().regex(IDENTITY_IFACE_RE),
        mac: z.string().regex(IDENTITY_MAC_RE, 'a lowercase unicast MAC like 52:54:00:ab:cd:ef').optional(),
        addr: ipv4,
        prefix: z.number().int().min(1).max(32),
        gateway: ipv4.optional(),
      })
      .strict()
      .optional(),
    /** 32..256 bytes of fresh randomness, lowercase hex; credited to the guest's entropy pool. */
    seed_hex: z
      .string()
      .regex(/^([0-9a-f]{2}){32,256}$/, '64 to 512 lowercase hex digits')
      .optional(),
    generation: count(Number.MAX_SAFE_INTEGER).optional(),
  })
  .strict();
/** identity.set params (wire names): everything but the clock is optional, and absent means unchanged. */
export type IdentityParams = z.input<typeof IdentityParamsSchema>;

export const IdentityResultSchema = z.object({
  /** The guest's hostname after the call (uname). */
  hostname: z.string().max(64),
  /** The generation the call wrote; null when the call had none. */
  generation: count(Number.MAX_SAFE_INTEGER).nullable(),
  boot_id: z.string().max(64),
});
export type AgentIdentity = z.output<typeof IdentityResultSchema>;

const mountPath = z.string().min(1).max(PATH_MAX).startsWith('/');
export const FreezeResultSchema = z.object({ frozen: z.array(mountPath).max(FREEZE_MAX_PATHS) });
export const ThawResultSchema = z.object({ thawed: z.array(mountPath).max(FREEZE_MAX_PATHS) });

/** Each method's result schema; the method names are the protocol's. */
export const AGENT_METHODS = {
  health: HealthResultSchema,
  ports: PortsResultSchema,
  stats: StatsResultSchema,
  ping: PingResultSchema,
  /** Asks the guest's init for a clean power-off; the reply comes before the shutdown starts. */
  poweroff: PingResultSchema,
  'proc.start': ProcInfoSchema,
  'proc.list': ProcListResultSchema,
  'proc.show': ProcInfoSchema,
  'proc.signal': ProcInfoSchema,
  'proc.resize': PingResultSchema,
  'proc.stdin': ProcOffsetResultSchema,
  'proc.eof': ProcOffsetResultSchema,
  'proc.forget': PingResultSchema,
  'fs.stat': FsStatResultSchema,
  'fs.list': FsListResultSchema,
  'fs.mkdir': PingResultSchema,
  'fs.move': PingResultSchema,
  'fs.remove': PingResultSchema,
  'identity.set': IdentityResultSchema,
  'fs.freeze': FreezeResultSchema,
  'fs.thaw': ThawResultSchema,
} as const;

export type AgentMethod = keyof typeof AGENT_METHODS;
export type AgentResult<M extends AgentMethod> = z.output<(typeof AGENT_METHODS)[M]>;
export type AgentHealth = AgentResult<'health'>;
export type AgentPorts = AgentResult<'ports'>;
export type AgentPortEntry = AgentPorts['ports'][number];
export type AgentStats = AgentResult<'stats'>;

// ---- data channels (docs/processes.md, "Data channels") ------------------------------------

/** Guest vsock port of the data channels under Firecracker (one connection per session): privileged (≤ 1023), so no unprivileged guest user can bind it while the agent restarts and receive file_sync secrets. */
export const AGENT_DATA_VSOCK_PORT = 1023;
/** QEMU's data ports (virtio-serial `org.banger.data.K`). */
export const AGENT_DATA_PORTS = 4;

export const AcceptedSchema = z.object({ nonce: z.string().max(64) });

/** The terminal R frame of a session; what `ok: true` carries depends on the op. */
export const SessionResultSchema = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true) }).passthrough(),
  z.object({
    ok: z.literal(false),
    error: z.string().max(AGENT_MAX_ERROR_CHARS).optional(),
    code: z.string().max(64).optional(),
    /** tar-in / tar-out: tar's status and its (capped) stderr. */
    exit_code: z.number().int().min(0).max(255).nullable().optional(),
    stderr: z.string().max(8192).optional(),
  }),
]);
export const OutputResultSchema = z.object({ ok: z.literal(true), proc: ProcInfoSchema });
export const ReadResultSchema = z.object({ ok: z.literal(true), size: count(BYTES), mode: count(0o7777) });
export const WriteResultSchema = z.object({ ok: z.literal(true), size: count(BYTES) });
export const TarResultSchema = z.object({
  ok: z.literal(true),
  exit_code: z.number().int().min(0).max(255).nullable().optional(),
  stderr: z.string().max(8192).optional(),
});

/** `OK <host port>` answer of Firecracker's hybrid-vsock `CONNECT <port>`. */
export const HYBRID_VSOCK_OK = /^OK [0-9]{1,10}$/;
