/**
 * One error shape for the whole API: a stable machine code, a human message, and where possible a
 * fix the user can run. Daemon services throw BangerError; the server renders it; the client
 * rebuilds it; the CLI prints `error: <message>` + `fix: <fix>` + `(op-id)`.
 */
export const ERROR_CODES = {
  bad_request: 400,
  invalid_config: 400,
  /** No valid web UI session (docs/web.md): run `banger ui`. */
  unauthorized: 401,
  /** A web UI request that failed its CSRF or Origin check. */
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  busy: 409,
  precondition_failed: 412,
  /** A snapshot that cannot be restored here: its manifest (VMM, kernel, agent, devices) differs; `details.field` names what. */
  snapshot_incompatible: 409,
  payload_too_large: 413,
  /** Untrusted content (a layer, a manifest, an archive) that banger refuses to unpack. */
  rejected_content: 422,
  cancelled: 499,
  internal: 500,
  vmm_failed: 500,
  host_command_failed: 500,
  /** A command banger ran in a guest (through the agent) failed. */
  guest_command_failed: 500,
  /**
   * A guest process ended without success (non-zero exit, a signal, its timeout), raised only when
   * the caller asks for it (the SDK's `result.check()`, a `waitForPort`/`waitForLog` whose process
   * ended first): process outcomes are results, not errors.
   */
  process_failed: 500,
  /** A registry or download server failed or answered with something unusable. */
  upstream_failed: 502,
  missing_dependency: 503,
  unavailable: 503,
  timeout: 504,
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  fix?: string;
  opId?: string;
  details?: unknown;
}

export class BangerError extends Error {
  readonly code: ErrorCode;
  readonly fix: string | undefined;
  readonly details: unknown;
  opId: string | undefined;

  constructor(code: ErrorCode, message: string, options: { fix?: string; details?: unknown; opId?: string; cause?: unknown } = {}) {
    super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'BangerError';
    this.code = code;
    this.fix = options.fix;
    this.details = options.details;
    this.opId = options.opId;
  }

  get status(): number {
    return ERROR_CODES[this.code];
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.fix) body.fix = this.fix;
    if (this.opId) body.opId = this.opId;
    if (this.details !== undefined) body.details = this.details;
    return body;
  }

  static fromBody(body: ErrorBody): BangerError {
    return new BangerError(body.code, body.message, { fix: body.fix, opId: body.opId, details: body.details });
  }
}

export function toBangerError(err: unknown): BangerError {
  if (err instanceof BangerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new BangerError('internal', message, { cause: err });
}

export const notFound = (what: string, ref: string, fix?: string) =>
  new BangerError('not_found', `${what} "${ref}" not found`, { fix: fix ?? `list them with \`banger ${what} list\`` });
