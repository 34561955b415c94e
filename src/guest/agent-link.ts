import type { AgentHealth, GuestListener, GuestStats } from '../api/schemas.js';
import type { VmmHandle } from '../vmm/driver.js';
import { AGENT_DATA_PORTS, agentDataSocketPath } from '../vmm/qemu/args.js';
import { AgentClient } from './agent-client.js';
import { AgentDataPool } from './agent-data.js';
import { AGENT_DATA_VSOCK_PORT, type IdentityParams } from './agent-protocol.js';
import type { GuestChannel } from './guest-channel.js';
import { AgentGuestChannel } from './guest-channel-agent.js';

/** The daemon's view of one VM's agent: one held connection, camelCase results. */
export interface AgentLink {
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void>;
  health(timeoutMs: number): Promise<AgentHealth>;
  ports(timeoutMs: number): Promise<GuestListener[]>;
  stats(timeoutMs: number): Promise<GuestStats>;
  poweroff(timeoutMs: number): Promise<void>;
  /** Re-identifies a restored guest (agent method identity.set; docs/snapshots.md, docs/processes.md "Warm start"); idempotent, retry it whole. */
  identitySet(params: GuestIdentity, timeoutMs: number): Promise<void>;
  /** FIFREEZE of the paths (thawed by the agent itself after thawAfterMs), and FITHAW. */
  freezeFilesystems(paths: string[], thawAfterMs: number, timeoutMs: number): Promise<void>;
  thawFilesystems(paths: string[], timeoutMs: number): Promise<void>;
  /** Processes and files in the guest (control channel + data channels). */
  readonly guest: GuestChannel;
  close(): void;
}

/** What identity.set sets (every field but the clock optional): the wire params, checked by AgentClient before sending. */
export type GuestIdentity = IdentityParams;

export const VSOCK_AGENT_PORT = 1024;

export function openAgentLink(handle: VmmHandle): AgentLink {
  const client = new AgentClient({
    socketPath: handle.agentSocket,
    transport: handle.agentTransport,
    vsockPort: VSOCK_AGENT_PORT,
  });
  const data = new AgentDataPool(
    handle.agentTransport === 'virtio-serial'
      ? { transport: 'virtio-serial', sockets: Array.from({ length: AGENT_DATA_PORTS }, (_, k) => agentDataSocketPath(handle.agentSocket, k)) }
      : { transport: 'hybrid-vsock', socketPath: handle.agentSocket, port: AGENT_DATA_VSOCK_PORT },
  );
  const guest = new AgentGuestChannel(client, data);
  return {
    guest,
    waitReady: (timeoutMs, signal) => client.waitReady(timeoutMs, signal),
    health: async (timeoutMs) => {
      const h = await client.health(timeoutMs);
      return { ready: h.ready, uptimeSeconds: h.uptime_s, agentVersion: h.agent_version, hostname: h.hostname };
    },
    ports: async (timeoutMs) => {
      const r = await client.ports(timeoutMs);
      return r.ports.map((p) => ({ proto: p.proto, address: p.address, port: p.port, pid: p.pid ?? null, command: p.command }));
    },
    stats: async (timeoutMs) => {
      const s = await client.stats(timeoutMs);
      return {
        memTotalKib: s.mem_total_kib,
        memAvailableKib: s.mem_available_kib,
        load1: s.load1,
        load5: s.load5,
        load15: s.load15,
        uptimeSeconds: s.uptime_s,
      };
    },
    poweroff: (timeoutMs) => client.poweroff(timeoutMs),
    identitySet: async (params, timeoutMs) => {
      await client.identitySet(params, timeoutMs);
    },
    freezeFilesystems: async (paths, thawAfterMs, timeoutMs) => {
      await client.freezeFilesystems(paths, thawAfterMs, timeoutMs);
    },
    thawFilesystems: async (paths, timeoutMs) => {
      await client.thawFilesystems(paths, timeoutMs);
    },
    close: () => {
      data.close();
      client.close();
    },
  };
}
