/**
 * Fixtures of the CLI tests that stand a fake daemon on a Unix socket (cli-exec-fake-daemon,
 * cli-agent-fake-daemon): a finished process record, an SSE body, a request's JSON body.
 */
import type { IncomingMessage } from 'node:http';
import type { Proc } from '../../src/api/proc-schemas.js';

/** A process record as the daemon returns it, exited 0 unless `over` says otherwise. */
export const baseProc = (over: Partial<Proc>): Proc => ({
  id: 'p1',
  name: null,
  argv: ['x'],
  shell: null,
  pid: 42,
  pty: false,
  state: 'exited',
  exitCode: 0,
  signal: null,
  timedOut: false,
  code: null,
  startedMs: Date.now() - 5000,
  endedMs: Date.now(),
  stdoutBytes: 0,
  stderrBytes: 0,
  truncated: false,
  stdin: 'null',
  stdinBytes: 0,
  ...over,
});

/** An operation's event stream body. */
export const sse = (events: unknown[]): string => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('');

/** A request's JSON body (undefined when empty). */
export async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}
