import type { DaemonStatus } from '../../api/schemas.js';
import { resolveClientLayout } from '../../config/layout.js';
import { formatDuration } from '../../util/duration.js';
import { newOpId } from '../../util/ids.js';
import { fetchStatusRaw, RAW_STATUS_TIMEOUT_MS } from '../raw-status.js';
import { printJson, printKeyValues } from '../render.js';

/**
 * `banger daemon status`: its own small module because src/cli/main.ts answers the plain command
 * lines of it without commander (start-up time); commands/daemon.ts runs the same function. A
 * running daemon is asked over a raw socket first (src/cli/raw-status.ts: no node:http to load);
 * for anything else BangerClient, loaded only then, does what it does for every command.
 */
export async function showDaemonStatus(opts: { json?: boolean }, rawTimeoutMs = RAW_STATUS_TIMEOUT_MS): Promise<void> {
  const layout = resolveClientLayout();
  const s = (await fetchStatusRaw(layout.socketPath, newOpId(), rawTimeoutMs)) ?? (await statusViaClient(layout));
  opts.json ? printJson(s) : printStatus(s);
}

async function statusViaClient(layout: ReturnType<typeof resolveClientLayout>): Promise<DaemonStatus> {
  const { BangerClient } = await import('../../client/client.js');
  return new BangerClient({ layout }).status();
}

export function printStatus(s: DaemonStatus): void {
  printKeyValues([
    ['state', 'running'],
    ['pid', s.pid],
    ['version', `${s.version} (commit ${s.commit}, built ${s.buildTime})`],
    ['node', s.nodeVersion],
    ['socket', s.socketPath],
    ['log', s.logPath],
    ['state dir', s.stateDir],
    ['uptime', formatDuration(s.uptimeSeconds * 1000)],
    ['vmm', `${s.vmm}${s.accel ? ` (${s.accel})` : ''}`],
    ['dns', s.dnsListenAddr ?? 'not serving'],
    ['web', s.webListenAddr ?? 'not serving'],
  ]);
}
