/**
 * `banger mcp install claude|opencode`: the client configuration that starts `banger mcp`, printed
 * or merged into the project's file (Claude Code: `.mcp.json`, key `mcpServers`; opencode:
 * `opencode.json`, key `mcp`, or `mcp.servers` when the file already uses that layout). The merge
 * only adds or replaces banger's own entry: other servers and keys stay as they were.
 */
import { constants } from 'node:fs';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError } from '../api/errors.js';

export type McpClientKind = 'claude' | 'opencode';
export const MCP_CLIENTS: readonly McpClientKind[] = ['claude', 'opencode'];
/** The name the server is registered under in the client's configuration. */
export const SERVER_KEY = 'banger';

export function configFileName(kind: McpClientKind): string {
  return kind === 'claude' ? '.mcp.json' : 'opencode.json';
}

/** banger's own entry for the client: `command` then `args` (e.g. ['mcp', '--allow', '/src']). */
export function serverEntry(kind: McpClientKind, command: string, args: readonly string[]): Record<string, unknown> {
  if (kind === 'claude') return { type: 'stdio', command, args: [...args] };
  return { type: 'local', command: [command, ...args], enabled: true };
}

/** A whole configuration file holding only banger's entry (what `install` prints). */
export function snippet(kind: McpClientKind, command: string, args: readonly string[]): Record<string, unknown> {
  return mergeConfig(kind, kind === 'opencode' ? { $schema: 'https://opencode.ai/config.json' } : {}, serverEntry(kind, command, args));
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * `existing` with banger's entry set (a copy; the input is not changed). Refuses a file whose
 * shape it does not understand rather than guessing (e.g. `mcpServers` that is not an object).
 */
export function mergeConfig(kind: McpClientKind, existing: unknown, entry: Record<string, unknown>): Record<string, unknown> {
  if (!isObject(existing))
    throw new BangerError('invalid_config', `${configFileName(kind)} does not hold a JSON object`, { fix: 'fix or move the file, then run again' });
  const out: Record<string, unknown> = structuredClone(existing);
  const key = kind === 'claude' ? 'mcpServers' : 'mcp';
  const servers = out[key] ?? {};
  if (!isObject(servers))
    throw new BangerError('invalid_config', `"${key}" in ${configFileName(kind)} is not an object`, { fix: 'fix the file, then run again' });
  // opencode's newer layout keeps servers under mcp.servers: follow the file's own layout.
  if (kind === 'opencode' && isObject(servers.servers)) servers.servers = { ...servers.servers, [SERVER_KEY]: entry };
  else servers[SERVER_KEY] = entry;
  out[key] = servers;
  return out;
}

/**
 * Merges banger's entry into `<dir>/<config file>` atomically: the file is read, merged, written to
 * a new staging file (O_EXCL) and renamed over the original, so a crash leaves the old file or the
 * new one, never half of one. Returns the path written.
 */
export async function writeClientConfig(kind: McpClientKind, dir: string, command: string, args: readonly string[]): Promise<string> {
  const path = join(dir, configFileName(kind));
  let existing: unknown = kind === 'opencode' ? { $schema: 'https://opencode.ai/config.json' } : {};
  let mode = 0o644;
  const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw e;
  });
  if (text !== undefined) {
    try {
      existing = JSON.parse(text);
    } catch (e) {
      throw new BangerError('invalid_config', `${path} is not valid JSON (${(e as Error).message})`, {
        fix: 'fix the file (comments are not supported here), or print the snippet with `banger mcp install` and merge it by hand',
      });
    }
    const st = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).then(async (fh) => {
      try {
        return await fh.stat();
      } finally {
        await fh.close();
      }
    });
    mode = st.mode & 0o777;
  }
  const merged = mergeConfig(kind, existing, serverEntry(kind, command, args));
  const staging = `${path}.banger-${process.pid}-${Date.now().toString(36)}`;
  const fh = await open(staging, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(`${JSON.stringify(merged, null, 2)}\n`);
    await fh.sync();
    await fh.close();
    await rename(staging, path);
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(staging).catch(() => {});
    throw e;
  }
  return path;
}
