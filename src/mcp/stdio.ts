/**
 * `banger mcp`: the server over stdin/stdout. stdout carries only protocol messages; anything
 * else goes to stderr. The allowlist starts with the directory the server was started in (the
 * project an MCP client launches it from) plus every `--allow` path.
 */
import { realpathSync } from 'node:fs';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { BangerError } from '../api/errors.js';
import { BangerClient } from '../client/client.js';
import { HostAllowlist } from './allowlist.js';
import { createMcpServer } from './server.js';

export interface StdioOptions {
  cwd: string;
  /** Extra host directories the client may read from and export into. */
  allow: readonly string[];
  /** Drop the start directory from the allowlist (only the --allow paths remain). */
  noCwd?: boolean;
}

/**
 * The start directory, when it is to be allowed and is not too wide: a client that starts servers
 * in `/` or in the home directory (some do) would otherwise hand the agent every file of the user.
 */
export function implicitRoot(cwd: string, home: string | undefined, explicit: readonly string[]): string[] {
  const real = realpathSync(cwd);
  let realHome: string | undefined;
  try {
    realHome = home ? realpathSync(home) : undefined;
  } catch {
    realHome = undefined; // no home directory: only / is too wide
  }
  const tooWide = real === '/' || (realHome !== undefined && (realHome === real || realHome.startsWith(`${real}/`)));
  if (!tooWide) return [real];
  if (explicit.length > 0) {
    process.stderr.write(`banger mcp: not allowing the start directory ${real} (too wide); allowed: ${explicit.join(', ')}\n`);
    return [];
  }
  throw new BangerError('bad_request', `banger mcp started in ${real}, which is too wide to allow (it holds the home directory)`, {
    fix: 'start it from the project directory, or name what it may use: banger mcp --allow DIR',
  });
}

export async function runStdioServer(opts: StdioOptions): Promise<void> {
  const roots = opts.noCwd ? [] : implicitRoot(opts.cwd, process.env.HOME, opts.allow);
  const allow = new HostAllowlist(opts.cwd, [...roots, ...opts.allow]);
  // Long operations (a first image pull) run as daemon operations: no client-side request timeout.
  const api = new BangerClient({ timeoutMs: 60 * 60_000 });
  const server = createMcpServer({ api, allow });
  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    process.stdin.once('end', () => resolve());
  });
  await server.connect(transport);
  await closed;
  await server.close().catch(() => undefined);
}
