import { resolve } from 'node:path';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export function registerMcpCommands(program: Command): void {
  const mcp = program
    .command('mcp')
    .description('serve MCP on stdin/stdout: coding agents (Claude Code, opencode, …) drive sandboxes through it')
    .option('--allow <path>', 'also allow this host directory (repeatable; the start directory is always allowed unless --no-cwd)', collect, [])
    .option('--no-cwd', 'do not allow the directory the server starts in')
    .addHelpText(
      'after',
      '\nAn MCP client starts it; see docs/mcp.md. Examples:\n  banger mcp install claude --write     # add it to ./.mcp.json\n  banger mcp --allow ~/src/lib          # serve, also allowing ~/src/lib\n',
    )
    .action(async (o: { allow: string[]; cwd: boolean }) => {
      // Loaded only here: the MCP SDK and zod stay off every other command's start-up path.
      const { runStdioServer } = await import('../../mcp/stdio.js');
      await runStdioServer({ cwd: process.cwd(), allow: o.allow, noCwd: !o.cwd });
    });

  mcp
    .command('install')
    .description("print (or --write) an MCP client's configuration that starts `banger mcp`")
    .argument('<client>', 'claude (Claude Code: .mcp.json) or opencode (opencode.json)')
    .option('--write', "merge it into the project's file instead of printing it (other servers are kept)")
    .option('--dir <dir>', 'the project directory', '.')
    .option('--allow <path>', 'a host directory the server also allows (repeatable)', collect, [])
    .option('--command <path>', 'how the client starts banger', 'banger')
    .action(async (client: string, o: { write?: boolean; dir: string; allow: string[]; command: string }, cmd: Command) => {
      const { MCP_CLIENTS, snippet, writeClientConfig } = await import('../../mcp/install.js');
      if (!(MCP_CLIENTS as readonly string[]).includes(client)) {
        throw new BangerError('bad_request', `unknown MCP client "${client}"`, { fix: `use one of: ${MCP_CLIENTS.join(', ')}`, details: 'usage' });
      }
      const kind = client as (typeof MCP_CLIENTS)[number];
      // commander gives `--allow` after `install` to the parent command, which has the same option.
      const allow = [...(cmd.parent?.opts<{ allow?: string[] }>().allow ?? []), ...o.allow];
      const args = ['mcp', ...allow.flatMap((p) => ['--allow', resolve(p)])];
      if (!o.write) {
        process.stdout.write(`${JSON.stringify(snippet(kind, o.command, args), null, 2)}\n`);
        return;
      }
      const path = await writeClientConfig(kind, resolve(o.dir), o.command, args);
      process.stdout.write(`wrote the "banger" server into ${path}\n`);
    });
}
