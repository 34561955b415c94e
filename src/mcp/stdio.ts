/**
 * `banger mcp`: the server over stdin/stdout. stdout carries only protocol messages; anything
 * else goes to stderr. The allowlist starts with the directory the server was started in (the
 * project an MCP client launches it from) plus every `--allow` path.
 */
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
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

export async function runStdioServer(opts: StdioOptions): Promise<void> {
  const allow = new HostAllowlist(opts.cwd, [...(opts.noCwd ? [] : [opts.cwd]), ...opts.allow]);
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
