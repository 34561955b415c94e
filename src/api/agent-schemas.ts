import { z } from 'zod';

/**
 * The wire contract of coding agents in VMs (/v1/agents, /v1/vms/:ref/agents; docs/agents.md):
 * the agents the daemon knows (built-in presets with the config's overrides) and the tmux
 * sessions they run in, inside a guest.
 */

/** Like a resource name (a DNS label, lowercase), at most 32 characters: it names a tmux session. */
export const AgentNameSchema = z
  .string()
  .max(32)
  .regex(/^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/, 'an agent name: a-z, 0-9 and "-", starting and ending with a letter or digit');

export const AgentDefinitionSchema = z.object({
  name: z.string(),
  command: z.array(z.string()),
  /** Names of the variables it gets (their values may be secrets: never sent). */
  envKeys: z.array(z.string()),
  /** The image `vm run --agent` creates its VM from. */
  image: z.string(),
  /** Its tmux session in the guest. */
  session: z.string(),
  /** A preset of banger's (possibly overridden by config), not one the config adds. */
  builtin: z.boolean(),
});
export type AgentDefinitionView = z.infer<typeof AgentDefinitionSchema>;

export const AgentListSchema = z.object({ agents: z.array(AgentDefinitionSchema) });
export type AgentList = z.infer<typeof AgentListSchema>;

export const AgentStartRequestSchema = z
  .object({
    agent: AgentNameSchema,
    /** Guest working directory (default: the VM's workspace, else /root). */
    cwd: z
      .string()
      .max(4096)
      .regex(/^\/[^\x00-\x1f\x7f]*$/, 'an absolute guest path without control characters')
      .optional(),
  })
  .strict();
export type AgentStartRequest = z.input<typeof AgentStartRequestSchema>;

export const AgentSessionSchema = z.object({
  /** The tmux session name (sanitised guest data). */
  name: z.string(),
  windows: z.number().int(),
  /** Terminals attached to it now. */
  attached: z.number().int(),
  createdAt: z.string().nullable(),
  /** The command line banger started it with (its `@banger-command`, environment values shown as `NAME=…`), null for sessions banger did not start. */
  command: z.string().nullable(),
});
export type AgentSession = z.infer<typeof AgentSessionSchema>;

export const AgentSessionListSchema = z.object({ sessions: z.array(AgentSessionSchema) });
export type AgentSessionList = z.infer<typeof AgentSessionListSchema>;

export const AgentStartResultSchema = z.object({
  agent: z.string(),
  session: z.string(),
  /** False when a session of that name was already there (it is reused, its agent untouched). */
  created: z.boolean(),
  cwd: z.string(),
  /** The shell command line the session runs, its environment values shown as `NAME=…` (they may be secrets). */
  command: z.string(),
});
export type AgentStartResult = z.infer<typeof AgentStartResultSchema>;
