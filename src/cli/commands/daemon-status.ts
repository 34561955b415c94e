import type { DaemonStatus } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatDuration } from '../../util/duration.js';
import { printJson, printKeyValues } from '../render.js';

/**
 * `banger daemon status`: its own small module because src/cli/main.ts answers the plain command
 * lines of it without commander (start-up time); commands/daemon.ts runs the same function.
 */
export async function showDaemonStatus(opts: { json?: boolean }): Promise<void> {
  const s = await new BangerClient().status();
  opts.json ? printJson(s) : printStatus(s);
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
