/** Coding agents in a VM's tmux sessions (docs/agents.md): start one, list the sessions. */
import type { AgentSession, AgentStartResult } from '../api/agent-schemas.js';
import type { BangerClient } from '../client/client.js';
import { abortable, type CallOptions } from './util.js';

export type { AgentSession, AgentStartResult };

export interface AgentStartOptions extends CallOptions {
  /** Guest working directory (default: the workspace, else /root). */
  cwd?: string;
}

export class Agents {
  constructor(
    private readonly client: BangerClient,
    private readonly vm: string,
  ) {}

  /**
   * Starts an agent (claude, opencode, pi, codex, or an `[agents.NAME]` of the daemon's config) in
   * its tmux session in the running VM; a session of that name already there is reused
   * (`created: false`). Attach with `banger vm agent attach`.
   */
  start(agent: string, o: AgentStartOptions = {}): Promise<AgentStartResult> {
    return abortable(this.client.startAgent(this.vm, { agent, ...(o.cwd !== undefined ? { cwd: o.cwd } : {}) }), o.signal);
  }

  /** The guest's tmux sessions; `command` is set on those banger started. */
  list(o: CallOptions = {}): Promise<AgentSession[]> {
    return abortable(this.client.agentSessions(this.vm), o.signal).then((r) => r.sessions);
  }
}
