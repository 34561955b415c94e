import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { OperationEvent, Vm } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { checkVm } from '../../client/trust.js';
import { dnsLabelProblem } from '../../util/ids.js';
import { addVmSpecOptions, type VmSpecOptions, vmCreateRequest } from '../args.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { sshIntoVm } from './ssh.js';

interface RunOptions extends VmSpecOptions {
  rm?: boolean;
  detach?: boolean;
}

/** What to type next for a detached VM. */
export function nextSteps(name: string): string {
  return [
    `${name} is running. Next:`,
    `  banger vm ssh ${name}                 # a shell`,
    `  banger vm ssh ${name} -- make test    # run a command`,
    `  banger vm ports ${name}               # what it listens on (${name}.vm)`,
    `  banger vm stop ${name}`,
    `  banger vm delete ${name}`,
    '',
  ].join('\n');
}

export function registerRunCommand(vm: Command): void {
  addVmSpecOptions(
    vm
      .command('run')
      .description('create a VM (default image, pulled on first use) and open a shell in it, or run a command and exit with its status')
      .argument('[command...]', 'command to run (put it after --)'),
    'image name (default: default_image_name; catalog images are pulled on first use)',
  )
    .option('--rm', 'delete the VM when the shell or command ends')
    .option('-d, --detach', 'leave the VM running and print how to reach it')
    .addHelpText(
      'after',
      '\nExamples:\n  banger vm run                          # a shell in a fresh VM\n  banger vm run --rm -- uname -r         # run, print, delete\n  banger vm run -d --name api --nat      # keep it running\n',
    )
    .action(async (command: string[], o: RunOptions) => {
      if (o.detach && o.rm) throw new BangerError('bad_request', '--rm and --detach contradict each other', { fix: 'drop one of them', details: 'usage' });
      if (o.detach && command.length)
        throw new BangerError('bad_request', '--detach does not run a command', { fix: 'run it later with banger vm ssh NAME -- CMD', details: 'usage' });
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      const accepted = await client.createVm(vmCreateRequest(o, true));
      const progress = new ProgressRenderer(process.stderr, false);
      let name: string | undefined;
      const onEvent = (e: OperationEvent): void => {
        // The operation names its VM (a generated name too) as its target.
        if ((e.type === 'snapshot' || e.type === 'done') && e.operation.target && !dnsLabelProblem(e.operation.target)) name = e.operation.target;
        progress.onEvent(e);
      };
      let vm: Vm;
      try {
        // The name goes to the terminal and to ssh's argv: checked like any VM from the daemon.
        vm = checkVm(await followOperation<Vm>(client, accepted, onEvent));
      } catch (e) {
        // A guest that launched but never became ready is kept for a post-mortem, --rm or not.
        if (e instanceof BangerError && e.code === 'timeout' && name) {
          process.stderr.write(`${name} was kept for inspection: banger vm logs ${name}; remove it with banger vm delete ${name}\n`);
        }
        throw e;
      }
      if (o.detach) {
        process.stdout.write(nextSteps(vm.name));
        return;
      }
      let code: number;
      try {
        code = await sshIntoVm(client, vm, command);
      } finally {
        if (o.rm) {
          const { results } = await client.bulk({ action: 'delete', refs: [vm.id] });
          if (results[0]?.ok) process.stderr.write(`deleted ${vm.name}\n`);
          else process.stderr.write(`could not delete ${vm.name}: ${results[0]?.error?.message}\n`);
        }
      }
      if (!o.rm && command.length === 0) process.stderr.write(`${vm.name} is still running; stop it with: banger vm stop ${vm.name}\n`);
      process.exitCode = code;
    });
}
