import { z } from 'zod';
import { ErrorBodySchema } from './schemas.js';

/**
 * The wire contract of guest processes, `/v1/vms/:ref/procs…` (docs/processes.md, "Daemon API").
 * A process lives in the guest (its output too); the daemon keeps nothing it cannot rebuild.
 */

/** Ids are chosen by the daemon: `[a-z0-9][a-z0-9-]{0,39}` (the agent's rule). */
export const PROC_ID = /^[a-z0-9][a-z0-9-]{0,39}$/;
/** Names are chosen by users (`--name`): a letter or digit, then letters, digits, `_ . -`. */
export const PROC_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Default and ceiling of the buffered stdout/stderr of `mode: "wait"` (each). */
export const DEFAULT_MAX_BUFFER = 16 * 1024 * 1024;
export const MAX_MAX_BUFFER = 256 * 1024 * 1024;
/** Decoded bytes of one stdin write (the request body is at most 1 MiB of JSON). */
export const MAX_STDIN_WRITE = 512 * 1024;

const MAX_ARG_CHARS = 64 * 1024;

export const ProcStateSchema = z.enum(['running', 'exited', 'lost']);

export const ProcSchema = z.object({
  id: z.string(),
  name: z.string().nullable(),
  argv: z.array(z.string()).nullable(),
  shell: z.string().nullable(),
  pid: z.number().int().nullable(),
  pty: z.boolean(),
  state: ProcStateSchema,
  exitCode: z.number().int().nullable(),
  /** Name of the signal that ended the process without `SIG` ("KILL"), or its number as text when it has no name. */
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  /** `command_not_found`, `permission_denied`, `exec_failed`, or null. */
  code: z.string().nullable(),
  /** Guest clock, ms since the epoch. */
  startedMs: z.number(),
  endedMs: z.number().nullable(),
  stdoutBytes: z.number().int(),
  stderrBytes: z.number().int(),
  truncated: z.boolean(),
  stdin: z.enum(['null', 'open', 'closed']),
  stdinBytes: z.number().int(),
});
export type Proc = z.infer<typeof ProcSchema>;

export const ProcListSchema = z.object({ procs: z.array(ProcSchema) });

/** What a finished process produced, buffered (`mode: "wait"`, `/wait`). */
export const ProcResultSchema = z.object({
  exitCode: z.number().int().nullable(),
  signal: z.string().nullable(),
  timedOut: z.boolean(),
  durationMs: z.number(),
  /** UTF-8 text (invalid sequences replaced), at most maxBuffer bytes each. */
  stdout: z.string(),
  stderr: z.string(),
  /** The guest's log cap or maxBuffer cut stdout or stderr. */
  truncated: z.boolean(),
  code: z.string().nullable(),
});
export type ProcResult = z.infer<typeof ProcResultSchema>;

export const ProcWaitResultSchema = z.object({
  proc: ProcSchema,
  /** null when `timeoutMs` passed with the process still running. */
  result: ProcResultSchema.nullable(),
});
export type ProcWaitResult = z.infer<typeof ProcWaitResultSchema>;

export const ProcModeSchema = z.enum(['detach', 'wait', 'stream']);
export type ProcMode = z.infer<typeof ProcModeSchema>;

export const ProcStartRequestSchema = z
  .object({
    argv: z.array(z.string().min(0).max(MAX_ARG_CHARS)).min(1).max(4096).optional(),
    shell: z.string().min(1).max(MAX_ARG_CHARS).optional(),
    cwd: z.string().min(1).max(4096).optional(),
    env: z
      .array(
        z
          .string()
          .max(MAX_ARG_CHARS)
          .regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'must be K=V with K a variable name'),
      )
      .max(1024)
      .optional(),
    user: z
      .string()
      .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/, 'must be a user name or uid')
      .optional(),
    stdin: z.enum(['null', 'pipe']).optional(),
    pty: z
      .object({ rows: z.number().int().min(1).max(65535), cols: z.number().int().min(1).max(65535) })
      .strict()
      .optional(),
    name: z.string().regex(PROC_NAME, 'must start with a letter or digit and hold only letters, digits, "_", "." and "-" (at most 64)').optional(),
    timeoutMs: z
      .number()
      .int()
      .min(1)
      .max(30 * 24 * 3600 * 1000)
      .optional(),
    outputLimit: z
      .number()
      .int()
      .min(0)
      .max(1024 * 1024 * 1024)
      .optional(),
    mode: ProcModeSchema.default('detach'),
    maxBuffer: z.number().int().min(0).max(MAX_MAX_BUFFER).optional(),
  })
  .strict()
  .refine((b) => (b.argv === undefined) !== (b.shell === undefined), { message: 'give exactly one of argv and shell' });
export type ProcStartRequest = z.input<typeof ProcStartRequestSchema>;

export const ProcStdinRequestSchema = z
  .object({
    /** Byte offset of data in the process's stdin: bytes below what the guest has are skipped (a retried write is harmless). */
    offset: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    data: z
      .string()
      .max(Math.ceil(MAX_STDIN_WRITE / 3) * 4)
      .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'must be base64')
      .default(''),
    eof: z.boolean().optional(),
  })
  .strict();
export type ProcStdinRequest = z.input<typeof ProcStdinRequestSchema>;
export const ProcStdinResultSchema = z.object({ offset: z.number().int() });

export const ProcSignalRequestSchema = z
  .object({
    /** A name ("TERM", "SIGKILL", case-insensitive) or a number 1–64. */
    signal: z.union([
      z.number().int().min(1).max(64),
      z
        .string()
        .min(1)
        .max(16)
        .regex(/^[A-Za-z0-9+]+$/),
    ]),
  })
  .strict();

export const ProcResizeRequestSchema = z.object({ rows: z.number().int().min(1).max(65535), cols: z.number().int().min(1).max(65535) }).strict();

export const ProcWaitRequestSchema = z
  .object({
    timeoutMs: z
      .number()
      .int()
      .min(0)
      .max(24 * 3600 * 1000)
      .optional(),
    maxBuffer: z.number().int().min(0).max(MAX_MAX_BUFFER).optional(),
  })
  .strict();

/** Events of `mode: "stream"` and of `/output`: `start` (stream only), output, then one `exit` or `error`. */
export const ProcEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), proc: ProcSchema }),
  z.object({ type: z.literal('stdout'), offset: z.number().int(), data: z.string() }),
  z.object({ type: z.literal('stderr'), offset: z.number().int(), data: z.string() }),
  z.object({ type: z.literal('exit'), proc: ProcSchema }),
  z.object({ type: z.literal('error'), error: ErrorBodySchema }),
]);
export type ProcEvent = z.infer<typeof ProcEventSchema>;

/** HTTP Upgrade protocol of `/procs/:proc/attach`: frames in the data-channel format (docs/processes.md). */
export const ATTACH_UPGRADE = 'banger-attach';
