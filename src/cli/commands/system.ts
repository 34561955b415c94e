import { resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { restartService, type ServiceStatus, serviceStatus, serviceVmmPids, startSupervisor, stopSupervisor } from '../../system/control.js';
import { installService, uninstallService } from '../../system/install.js';
import { hostRunner } from '../../system/paths.js';
import { printJson, printKeyValues } from '../render.js';

/**
 * `banger system …`: install and run banger as a system service (the split layout: bangerd-root as
 * root, bangerd as the owner). Local-only, like `doctor`: it works when no daemon runs.
 */

const say = (line: string) => process.stdout.write(`${line}\n`);

function printServiceStatus(s: ServiceStatus): void {
  const units = s.units.installed
    ? `installed (${s.units.paths.join(', ')})${s.units.enabled ? `, ${s.units.enabled}, ${s.units.active}` : ', systemd not running this host'}`
    : 'not installed';
  printKeyValues([
    ['mode', s.mode === 'systemd' ? 'split, under systemd' : s.mode === 'supervisor' ? "split, under banger's supervisor" : 'not running as a service'],
    ['owner', s.owner ?? s.units.owner],
    ['units', units],
    [
      'supervisor',
      s.supervisor
        ? `pid ${s.supervisor.pid} (bangerd-root ${s.supervisor.pids['bangerd-root'] ?? '-'}, bangerd ${s.supervisor.pids.bangerd ?? '-'})`
        : 'not running',
    ],
    ['helper socket', `${s.helperSocket.path} (${s.helperSocket.present ? 'present' : 'absent'})`],
    ['daemon socket', `${s.daemonSocket.path} (${s.daemonSocket.present ? 'present' : 'absent'})`],
  ]);
}

export function registerSystemCommands(program: Command): void {
  const system = program.command('system').description('install and run banger as a system service (root helper + daemon as an owner)');
  const helperOption = () => new Option('--helper <program>', 'run this program as the root helper instead of bangerd-root (tests)').hideHelp();

  system
    .command('install')
    .description('write the systemd units (bangerd-root, bangerd as OWNER), prepare the owner, enable and start them')
    .requiredOption('--owner <user>', 'the unprivileged user bangerd runs as (owns the VMs and the state)')
    .option('--root <dir>', 'write below DIR instead of / (no systemctl, no group change)')
    .option('--no-start', 'install only; do not enable or start the units')
    .option('--bridge <name>', "the one bridge the root helper may act on: the owner's bridge_name", 'banger0')
    .action(async (o: { owner: string; root?: string; start: boolean; bridge: string }) => {
      await installService({ owner: o.owner, bridge: o.bridge, ...(o.root ? { root: o.root } : {}), noStart: !o.start, runner: hostRunner(), say });
    });

  system
    .command('uninstall')
    .description('stop, disable and remove the units (--purge: also what install added and the runtime dirs)')
    .option('--root <dir>', 'remove below DIR instead of /')
    .option('--purge', "also remove the subuid/subgid entries and kvm membership install added, and /run/banger*; never the owner's state")
    .action(async (o: { root?: string; purge?: boolean }) => {
      await uninstallService({
        ...(o.root ? { root: o.root } : {}),
        purge: !!o.purge,
        runner: hostRunner(),
        say,
        stopSupervisor: () => stopSupervisor(),
        vmmPids: serviceVmmPids,
      });
    });

  system
    .command('start')
    .description('start banger without systemd: a supervisor runs bangerd-root as root and bangerd as OWNER')
    .requiredOption('--owner <user>', 'the unprivileged user bangerd runs as')
    .option('--bridge <name>', "the one bridge the root helper may act on: the owner's bridge_name", 'banger0')
    .addOption(helperOption())
    .action(async (o: { owner: string; bridge: string; helper?: string }) => {
      await startSupervisor({ owner: o.owner, bridge: o.bridge, runner: hostRunner(), say, ...(o.helper ? { helper: [resolve(o.helper)] } : {}) });
    });

  system
    .command('stop')
    .description("stop banger's supervisor and both daemons (running VMs keep running)")
    .action(async () => {
      say((await stopSupervisor()) ? 'banger stopped (VMs keep running)' : "banger's supervisor is not running");
    });

  system
    .command('restart')
    .description('restart the service (systemd units, or the supervisor with the same owner); VMs keep running')
    .action(async () => {
      await restartService({ runner: hostRunner(), say });
    });

  system
    .command('status')
    .description('show how banger runs as a service: units, supervisor, sockets, owner')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await serviceStatus(hostRunner());
      o.json ? printJson(s) : printServiceStatus(s);
    });
}
