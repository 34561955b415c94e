/**
 * The MCP server of banger: the tools of tools.ts on an McpServer of the official SDK. Transport
 * free (stdio.ts connects it to stdin/stdout; tests connect it to an in-memory pair), so every
 * tool is testable against a fake client.
 */
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { type CallToolResult, ListToolsRequestSchema, type Tool } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { BangerError } from '../api/errors.js';
import { buildInfo } from '../util/build-info.js';
import { capText, MAX_RESULT_CHARS, MAX_STRUCTURED_CHARS, sanitizeInline } from './text.js';
import { INSTRUCTIONS, type Session, TOOLS, type ToolContext, type ToolDef } from './tools.js';

export const SERVER_NAME = 'banger';
/** The arguments of one call, serialised (a whole file_write content fits). */
export const MAX_ARGUMENT_CHARS = 5 * 1024 * 1024;

/** An error as the model sees it: code, message and the fix, bounded, no control characters. */
export function errorResult(e: unknown): CallToolResult {
  const err = e instanceof BangerError ? e : new BangerError('internal', e instanceof Error ? e.message : String(e));
  const text = [`error (${err.code}): ${err.message}`, err.fix ? `fix: ${err.fix}` : ''].filter(Boolean).join('\n');
  return { content: [{ type: 'text', text: capText(text, 4000).text }], isError: true };
}

/**
 * A tool's value as an MCP result: structuredContent plus the same JSON as text (for clients that
 * read only text). The tools keep their big fields under budget; this checks the whole result
 * anyway and answers an error rather than an oversized result.
 */
export function toolResult(name: string, value: Record<string, unknown>): CallToolResult {
  const json = JSON.stringify(value);
  if (json.length > MAX_STRUCTURED_CHARS) {
    return errorResult(new BangerError('internal', `${name}: its result (${json.length} characters) is over the ${MAX_STRUCTURED_CHARS} cap`));
  }
  const result: CallToolResult = { content: [{ type: 'text', text: json }], structuredContent: value };
  if (JSON.stringify(result).length > MAX_RESULT_CHARS) return errorResult(new BangerError('internal', `${name}: result over ${MAX_RESULT_CHARS} characters`));
  return result;
}

/** Optional observer of each call (name, milliseconds, serialised size): the e2e test's diagnostics. */
export type CallObserver = (name: string, ms: number, chars: number, isError: boolean) => void;

export function createMcpServer(ctx: Omit<ToolContext, 'session'> & { session?: Session }, observe?: CallObserver): McpServer {
  const full: ToolContext = { ...ctx, session: ctx.session ?? { current: undefined } };
  const server = new McpServer({ name: SERVER_NAME, version: buildInfo().version }, { instructions: INSTRUCTIONS });
  for (const tool of TOOLS) register(server, full, tool, observe);
  // The tool list goes into every conversation's context: it is served compact (the SDK's own list
  // repeats "$schema" twice per tool and a default task hint). Same names, schemas and annotations.
  server.server.setRequestHandler(ListToolsRequestSchema, () => ({ tools: listTools() }));
  return server;
}

/**
 * A JSON Schema without the keys that carry nothing for a caller: `$schema`, and the
 * `additionalProperties: false` zod adds to every object of an output (results may carry more
 * fields than their schema declares).
 */
function compactSchema(schema: unknown): Tool['inputSchema'] {
  const strip = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(strip);
    if (typeof node !== 'object' || node === null) return node;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(node)) {
      if (k === '$schema' || (k === 'additionalProperties' && v === false)) continue;
      out[k] = strip(v);
    }
    return out;
  };
  return strip(schema) as Tool['inputSchema'];
}

/** The tools as tools/list describes them. */
export function listTools(): Tool[] {
  return TOOLS.map((t) => ({
    name: t.name,
    description: t.description,
    inputSchema: compactSchema(z.toJSONSchema(z.object(t.input), { io: 'input', target: 'draft-7' })),
    outputSchema: compactSchema(z.toJSONSchema(z.object(t.output), { io: 'output', target: 'draft-7' })),
    annotations: t.annotations,
  }));
}

function register(server: McpServer, ctx: ToolContext, tool: ToolDef, observe?: CallObserver): void {
  server.registerTool(
    tool.name,
    { description: tool.description, inputSchema: tool.input, outputSchema: tool.output, annotations: tool.annotations },
    async (args: Record<string, unknown>, extra) => {
      const started = performance.now();
      const token = extra._meta?.progressToken;
      let step = 0;
      const progress =
        token === undefined
          ? undefined
          : (message: string) => {
              step++;
              void extra
                .sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress: step, message: sanitizeInline(message, 100) } })
                .catch(() => undefined);
            };
      let result: CallToolResult;
      try {
        // The schemas leave string lengths out (they would double the tool list): one bound here.
        const argChars = JSON.stringify(args ?? {}).length;
        if (argChars > MAX_ARGUMENT_CHARS) {
          throw new BangerError('payload_too_large', `the arguments are ${argChars} characters (at most ${MAX_ARGUMENT_CHARS})`, {
            fix: 'write big files in parts, or copy them with `banger vm cp`',
          });
        }
        result = toolResult(tool.name, await tool.run(ctx, args, { signal: extra.signal, ...(progress ? { progress } : {}) }));
      } catch (e) {
        result = errorResult(e);
      }
      observe?.(tool.name, performance.now() - started, JSON.stringify(result).length, result.isError === true);
      return result;
    },
  );
}
