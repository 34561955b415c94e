import type { DaemonStatus } from '../api/schemas.js';
import { assertTrustedSocket } from '../client/trust.js';

/**
 * `GET /v1/daemon` over a raw `net` connection with a hand-written HTTP/1.1 request, for
 * `banger daemon status` only. It exists for start-up time: loading node:http (its agent, parser,
 * incoming/outgoing messages) is most of what keeps that command above 1.3× `node -e 0`
 * (docs/performance.md). It is deliberately narrow: it accepts exactly `HTTP/1.1 200` with one
 * Content-Length, no Transfer-Encoding, a bounded size and a JSON body whose printed fields have
 * the schema's types. Anything else (no daemon, an error status, a chunked or odd answer, a slow
 * one) returns undefined and the caller asks again through BangerClient, which autostarts, knows
 * service mode, and turns every failure into the usual error: so output, errors and exit codes
 * stay those of the normal path. The socket is trust-checked before connecting, as there.
 */

/** The client's op id header (src/client/transport.ts OP_HEADER; not imported: it loads node:http). */
export const RAW_OP_HEADER = 'x-banger-op';
/** A status answer is ~400 bytes; anything near this bound is not one. */
export const RAW_STATUS_MAX_BYTES = 64 * 1024;
/** After this the raw attempt gives up and the normal client (with its own timeout) asks again. */
export const RAW_STATUS_TIMEOUT_MS = 10_000;

const STATUS_LINE = /^HTTP\/1\.1 200 [^\r\n]*$/;
// RFC 9110 token, then optional whitespace around a value without control characters.
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\0-\x08\x0a-\x1f\x7f]*?)[ \t]*$/;

/** What a response received so far is: not complete yet, not one we accept, or the status. */
export type RawStatusParse = { kind: 'incomplete' } | { kind: 'refused'; why: string } | { kind: 'status'; status: DaemonStatus };

const refused = (why: string): RawStatusParse => ({ kind: 'refused', why });

/** Pure: parses the bytes received so far (tested with hostile inputs in test/unit/cli-raw-status.test.ts). */
export function parseRawStatus(received: Buffer): RawStatusParse {
  if (received.length > RAW_STATUS_MAX_BYTES) return refused('too large');
  const headEnd = received.indexOf('\r\n\r\n');
  if (headEnd < 0) return { kind: 'incomplete' };
  const lines = received.subarray(0, headEnd).toString('latin1').split('\r\n');
  if (!STATUS_LINE.test(lines[0] ?? '')) return refused('not HTTP/1.1 200');
  let contentLength: number | undefined;
  for (const line of lines.slice(1)) {
    const m = HEADER_LINE.exec(line);
    if (!m) return refused('malformed header line');
    const name = (m[1] as string).toLowerCase();
    if (name === 'transfer-encoding') return refused('transfer-encoding');
    if (name === 'content-length') {
      if (contentLength !== undefined || !/^\d{1,6}$/.test(m[2] as string)) return refused('bad content-length');
      contentLength = Number(m[2]);
    }
  }
  if (contentLength === undefined) return refused('no content-length');
  const body = received.subarray(headEnd + 4);
  if (body.length < contentLength) return { kind: 'incomplete' };
  if (body.length > contentLength) return refused('bytes after the body');
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return refused('invalid JSON');
  }
  return isDaemonStatus(parsed) ? { kind: 'status', status: parsed } : refused('not a daemon status');
}

const STRING_FIELDS = ['version', 'commit', 'buildTime', 'nodeVersion', 'socketPath', 'logPath', 'stateDir', 'startedAt', 'vmm'] as const;
const NULLABLE_STRING_FIELDS = ['dnsListenAddr', 'webListenAddr', 'accel'] as const;

/** DaemonStatusSchema's field types (src/api/schemas.ts), by hand: zod is not loaded on this path. */
function isDaemonStatus(v: unknown): v is DaemonStatus {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const o = v as Record<string, unknown>;
  return (
    Number.isInteger(o.pid) &&
    typeof o.uptimeSeconds === 'number' &&
    Number.isFinite(o.uptimeSeconds) &&
    STRING_FIELDS.every((k) => typeof o[k] === 'string') &&
    NULLABLE_STRING_FIELDS.every((k) => o[k] === null || typeof o[k] === 'string')
  );
}

/**
 * The daemon's status over a raw connection, or undefined when the caller must use BangerClient
 * (see the comment at the top). Never throws.
 */
export function fetchStatusRaw(socketPath: string, opId: string, timeoutMs = RAW_STATUS_TIMEOUT_MS): Promise<DaemonStatus | undefined> {
  try {
    // BangerClient runs the same check again on the fallback and reports it there.
    assertTrustedSocket(socketPath);
  } catch {
    return Promise.resolve(undefined);
  }
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    // Through getBuiltinModule, not `import`: an ESM import of a built-in reads every export (see
    // src/client/transport.ts); and only here, so loading this module costs commander's commands nothing.
    const socket = process.getBuiltinModule('node:net').connect(socketPath);
    const finish = (status: DaemonStatus | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(status);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    const check = (ended: boolean) => {
      const r = parseRawStatus(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
      if (r.kind === 'status') finish(r.status);
      else if (r.kind === 'refused' || ended) finish(undefined);
    };
    socket.on('error', () => finish(undefined));
    socket.on('data', (c: Buffer) => {
      size += c.length;
      if (size > RAW_STATUS_MAX_BYTES) return finish(undefined);
      chunks.push(c);
      check(false);
    });
    socket.on('end', () => check(true));
    socket.on('close', () => finish(undefined));
    // write, not end: a half-closed request socket makes Node's server abort the request.
    socket.write(`GET /v1/daemon HTTP/1.1\r\nHost: bangerd\r\nConnection: close\r\n${RAW_OP_HEADER}: ${opId}\r\n\r\n`);
  });
}
