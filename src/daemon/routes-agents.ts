/**
 * Coding agents in VMs (docs/agents.md): the agents the daemon knows, and their tmux sessions in a
 * guest (start, idempotent; list). The work is AgentSessionService's.
 */

import type { ServerResponse } from 'node:http';
import { AgentListSchema, AgentSessionListSchema, type AgentStartRequest, AgentStartRequestSchema, AgentStartResultSchema } from '../api/agent-schemas.js';
import type { Route } from './http.js';
import type { AgentSessionService } from './services/agent-sessions.js';

/** Aborted when the client goes away: the guest calls behind a request stop waiting then. */
function whileConnected(res: ServerResponse): AbortSignal {
  const gone = new AbortController();
  res.on('close', () => gone.abort());
  return gone.signal;
}

export function agentRoutes(agents: AgentSessionService): Route[] {
  return [
    { method: 'GET', path: '/v1/agents', response: AgentListSchema, handler: () => ({ agents: agents.definitions() }) },
    {
      method: 'POST',
      path: '/v1/vms/:ref/agents',
      body: AgentStartRequestSchema,
      response: AgentStartResultSchema,
      handler: ({ params, body, res }) => agents.start(params.ref as string, body as AgentStartRequest, whileConnected(res)),
    },
    {
      method: 'GET',
      path: '/v1/vms/:ref/agents',
      response: AgentSessionListSchema,
      handler: async ({ params, res }) => ({ sessions: await agents.list(params.ref as string, whileConnected(res)) }),
    },
  ];
}
