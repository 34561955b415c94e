import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { OperationEvent, Vm, VmAction } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { addVmSpecOptions, intArg, memoryArg, onOff, sizeArg, type VmSpecOptions, vmCreateRequest } from '../args.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable, sanitizeForTerminal, sanitizeInline } from '../render.js';
import { registerVmAgentCommands } from './agent.js';
import { registerVmCpCommand } from './cp.js';
import { registerExecCommand, registerProcCommands } from './proc.js';
import { registerRunCommand } from './run.js';
import { registerVmWarmCommands } from './snapshot.js';
import { registerVmSshCommand } from './ssh.js';
import { registerWorkspaceCommands } from './workspace.js';

function printVm(vm: Vm): void {
  printKeyValues([
    ['name', vm.name],
    ['id', vm.id],
    ['state', vm.state],
    ['image', vm.imageName],
    ['kernel', vm.kernelName],
    ['vcpus', vm.vcpus],
    ['memory', `${vm.memoryMib} MiB`],
    ['disk', formatBytes(vm.diskSizeBytes)],
    ['vmm', `${vm.vmm}${vm.accel ? ` (${vm.accel})` : ''}`],
    ['address', vm.ip ? `${vm.ip} (${vm.name}.vm)` : null],
    ['nat', vm.nat ? 'on' : 'off (host-only)'],
    ['pid', vm.pid],
    ['created', `${vm.createdAt} (${ago(vm.createdAt)})`],
    ['started', vm.startedAt],
    ['last used', ago(vm.touchedAt)],
    ['dir', vm.dir],
    [
      'workspace',
      vm.workspace ? `${vm.workspace.guestPath} from ${vm.workspace.hostPath} at ${vm.workspace.baseCommit.slice(0, 12)} (${vm.workspace.mode})` : null,
    ],
    ['last error', vm.lastError],
  ]);
}

const PAST: Record<VmAction, string> = { start: 'started', stop: 'stopped', restart: 'restarted', kill: 'killed', delete: 'deleted' };

async function bulk(action: VmAction, refs: string[], json: boolean): Promise<void> {
  const client = new BangerClient({ timeoutMs: 15 * 60_000 });
  const { results } = await client.bulk({ action, refs });
  if (json) printJson({ results });
  else {
    for (const r of results) {
      if (r.ok) process.stdout.write(`${PAST[action]} ${r.name}\n`);
      else
        process.stderr.write(
          sanitizeForTerminal(
            `error: ${r.ref}: ${r.error?.message}${r.error?.opId ? ` (${r.error.opId})` : ''}\n${r.error?.fix ? `fix: ${r.error.fix}\n` : ''}`,
          ),
        );
    }
  }
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}

export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description('create and manage VMs');

  addVmSpecOptions(
    vm.command('create').description('create a VM and start it (an operation with live stages)'),
    'image name or id (default: default_image_name)',
  )
    .option('--no-start', 'create the disks but do not boot')
    .option('--json', 'print the VM as JSON')
    .action(async (o: VmSpecOptions & { start: boolean; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 15 * 60_000 });
      const accepted = await client.createVm(vmCreateRequest(o, o.start));
      const progress = new ProgressRenderer(process.stderr, !!o.json);
      // The spec line goes to stdout (scripts can read it); stages go to stderr.
      const onEvent = (e: OperationEvent): void => {
        if (e.type === 'snapshot') {
          for (const line of e.operation.log ?? []) onEvent({ type: 'log', line });
          progress.onEvent({ ...e, operation: { ...e.operation, log: [] } });
        } else if (e.type === 'log' && e.line.startsWith('spec: ')) {
          if (!o.json) process.stdout.write(`${sanitizeInline(e.line)}\n`);
        } else progress.onEvent(e);
      };
      const created = await followOperation<Vm>(client, accepted, onEvent);
      if (o.json) printJson(created);
      else
        process.stdout.write(
          `${created.name} is ${created.state} (id ${created.id.slice(0, 12)}, ${created.vmm}${created.accel ? `/${created.accel}` : ''})\n`,
        );
    });

  for (const action of ['start', 'stop', 'restart', 'kill', 'delete'] as const) {
    const c = vm
      .command(action)
      .description(`${action} one or more VMs`)
      .argument('<vm...>', 'VM names or id prefixes')
      .option('--json', 'print per-VM results as JSON')
      .action((refs: string[], o: { json?: boolean }) => bulk(action, refs, !!o.json));
    if (action === 'delete') c.alias('rm');
  }

  registerVmWarmCommands(vm);

  vm.command('list')
    .alias('ls')
    .description('list VMs')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const vms = await new BangerClient().vms();
      if (o.json) return printJson({ vms });
      printTable(
        ['NAME', 'ID', 'STATE', 'IP', 'NAT', 'IMAGE', 'VCPUS', 'MEMORY', 'DISK', 'VMM', 'CREATED'],
        vms.map((v) => [
          v.name,
          v.id.slice(0, 12),
          v.state,
          v.ip,
          v.nat ? 'on' : 'off',
          v.imageName,
          v.vcpus,
          `${v.memoryMib}M`,
          formatBytes(v.diskSizeBytes),
          `${v.vmm}${v.accel ? `/${v.accel}` : ''}`,
          ago(v.createdAt),
        ]),
      );
    });

  vm.command('show')
    .description('show one VM')
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const v = await new BangerClient().vm(ref);
      o.json ? printJson(v) : printVm(v);
    });

  vm.command('set')
    .description('change a VM: NAT (live); vcpus, memory, grow the work disk (stopped VMs)')
    .argument('<vm>', 'VM name or id prefix')
    .option('--nat <on|off>', 'outbound NAT', onOff)
    .option('--vcpus <n>', 'virtual CPUs', intArg('--vcpus'))
    .option('--memory <size>', 'memory in MiB, or a size like 2G', memoryArg)
    .option('--disk-size <size>', 'new work disk size (grow only)', sizeArg)
    .option('--json', 'print the VM as JSON')
    .action(async (ref: string, o: { nat?: boolean; vcpus?: number; memory?: number; diskSize?: number; json?: boolean }) => {
      if (o.nat === undefined && o.vcpus === undefined && o.memory === undefined && o.diskSize === undefined) {
        throw new BangerError('bad_request', 'nothing to change', { fix: 'give --nat, --vcpus, --memory or --disk-size', details: 'usage' });
      }
      const v = await new BangerClient().setVm(ref, {
        ...(o.nat !== undefined ? { nat: o.nat } : {}),
        ...(o.vcpus !== undefined ? { vcpus: o.vcpus } : {}),
        ...(o.memory !== undefined ? { memoryMib: o.memory } : {}),
        ...(o.diskSize !== undefined ? { diskSizeBytes: o.diskSize } : {}),
      });
      o.json ? printJson(v) : printVm(v);
    });

  vm.command('logs')
    .description("show a VM's serial console")
    .argument('<vm>', 'VM name or id prefix')
    .option('-f, --follow', 'keep printing new output until the VM stops (or restarts)')
    .option('-n, --lines <n>', 'lines to show', intArg('--lines'), 200)
    .action(async (ref: string, o: { follow?: boolean; lines: number }) => {
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      // The serial console is the guest's: its escape sequences never reach the terminal.
      await new BangerClient().logs(ref, { lines: o.lines, follow: !!o.follow, signal: ac.signal }, (t) => process.stdout.write(sanitizeForTerminal(t)));
    });

  vm.command('stats')
    .description('VMM process CPU/RSS and guest memory/load')
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const s = await new BangerClient().stats(ref);
      if (o.json) return printJson(s);
      printKeyValues([
        ['vmm pid', s.vmm?.pid],
        ['vmm cpu', s.vmm ? `${s.vmm.cpuPercent}%` : null],
        ['vmm rss', s.vmm ? formatBytes(s.vmm.rssBytes) : null],
        [
          'guest memory',
          s.guest
            ? `${formatBytes(((s.guest.memTotalKib ?? 0) - (s.guest.memAvailableKib ?? 0)) * 1024)} used of ${formatBytes((s.guest.memTotalKib ?? 0) * 1024)}`
            : null,
        ],
        ['guest load', s.guest ? `${s.guest.load1} ${s.guest.load5} ${s.guest.load15}` : null],
        ['guest uptime', s.guest ? `${Math.round(s.guest.uptimeSeconds ?? 0)}s` : null],
      ]);
    });

  vm.command('health')
    .description("ask the VM's guest agent whether it is ready")
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const h = await new BangerClient().health(ref);
      if (o.json) return printJson(h);
      printKeyValues([
        ['ready', h.ready ? 'yes' : 'no'],
        ['hostname', h.hostname],
        ['agent', h.agentVersion],
        ['uptime', `${Math.round(h.uptimeSeconds)}s`],
        ['latency', `${h.latencyMs} ms`],
      ]);
      if (!h.ready) process.exitCode = 1;
    });

  vm.command('ports')
    .description('listening TCP/UDP sockets in the guest')
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const { ports, note } = await new BangerClient().ports(ref);
      if (o.json) return printJson(note ? { ports, note } : { ports });
      if (note) process.stderr.write(`note: ${sanitizeInline(note)}\n`);
      printTable(
        ['PROTO', 'ENDPOINT', 'URL', 'PID', 'COMMAND'],
        ports.map((p) => [p.proto, p.endpoint ?? `${p.address}:${p.port}`, p.url, p.pid, p.command]),
      );
    });

  registerVmSshCommand(vm);
  registerVmCpCommand(vm);
  registerRunCommand(vm);
  registerExecCommand(vm);
  registerProcCommands(vm);
  registerWorkspaceCommands(vm);
  registerVmAgentCommands(vm);

  vm.command('prune')
    .description('delete every VM that is not running')
    .option('-f, --force', 'do not ask for confirmation')
    .option('--dry-run', 'only list what would be deleted')
    .option('--json', 'print as JSON')
    .action(async (o: { force?: boolean; dryRun?: boolean; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 15 * 60_000 });
      const preview = (await client.prune(true)).pruned;
      if (preview.length === 0) {
        if (o.json) printJson({ pruned: [] });
        else process.stdout.write('nothing to prune\n');
        return;
      }
      if (o.dryRun) {
        if (o.json) return printJson({ pruned: preview, dryRun: true });
        for (const v of preview) process.stdout.write(`would delete ${v.name}\n`);
        return;
      }
      if (!o.force) {
        if (!process.stdin.isTTY) {
          throw new BangerError('bad_request', `prune would delete ${preview.length} VM(s) and needs confirmation`, {
            fix: 'rerun with -f to confirm',
            details: 'usage',
          });
        }
        const { createInterface } = await import('node:readline/promises');
        const rl = createInterface({ input: process.stdin, output: process.stderr });
        const answer = await rl.question(`delete ${preview.map((v) => v.name).join(', ')}? [y/N] `);
        rl.close();
        if (!/^y(es)?$/i.test(answer.trim())) return void process.stdout.write('aborted\n');
      }
      const { pruned } = await client.prune(false);
      if (o.json) printJson({ pruned });
      else for (const v of pruned) process.stdout.write(`deleted ${v.name}\n`);
    });
}
