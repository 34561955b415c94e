import { statSync } from 'node:fs';
import { homedir } from 'node:os';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { OperationEvent, Vm } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { checkVm } from '../../client/trust.js';
import { dnsLabelProblem } from '../../util/ids.js';
import { addVmSpecOptions, type VmSpecOptions, vmCreateRequest } from '../args.js';
import { DEFAULT_DETACH_KEYS } from '../detach-keys.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { sanitizeInline } from '../render.js';
import { classifyRunArgs, countAfterDashDash } from '../run-args.js';
import { agentNameArg, attachAgent, startedText } from './agent.js';
import { execInVm } from './proc.js';
import { sshIntoVm } from './ssh.js';

interface RunOptions extends VmSpecOptions {
  rm?: boolean;
  detach?: boolean;
  repo?: string;
  interactive?: boolean;
  tty?: boolean;
  agent?: string;
}

/**
 * Why `vm run --agent` cannot take these options, or undefined: the agent is the command, and it
 * outlives the attach (so the VM cannot be deleted when the attach ends).
 */
export function agentRunProblem(o: { rm?: boolean; interactive?: boolean; tty?: boolean; nat?: boolean }, command: readonly string[]): string | undefined {
  if (o.rm) return '--agent and --rm do not go together: the agent keeps running in its tmux session after you detach';
  if (command.length) return '--agent runs the agent, not a command after --';
  if (o.interactive || o.tty) return '--agent always attaches a terminal: drop -i/-t';
  return undefined;
}

/** What to type next for a detached VM. */
export function nextSteps(name: string, workspace?: string): string {
  return [
    `${name} is running${workspace ? ` with the workspace in ${sanitizeInline(workspace)}` : ''}. Next:`,
    `  banger vm exec ${name} -- make test   # run a command${workspace ? ' (in the workspace)' : ''}`,
    `  banger vm ssh ${name}                 # a shell`,
    `  banger vm ports ${name}               # what it listens on (${name}.vm)`,
    `  banger vm stop ${name}`,
    `  banger vm delete ${name}`,
    '',
  ].join('\n');
}

const isDirectory = (path: string): boolean => {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
};

/** The command line's words as commander received them (the root program keeps them). */
function rawArgsOf(cmd: Command): readonly string[] {
  let root: Command = cmd;
  while (root.parent) root = root.parent;
  return (root as unknown as { rawArgs?: string[] }).rawArgs ?? process.argv;
}

export function registerRunCommand(vm: Command): void {
  addVmSpecOptions(
    vm
      .command('run')
      .description(
        'create a VM (default image, pulled on first use), optionally prepare a host repository in it, then open a shell there or run a command and exit with its status',
      )
      .argument('[args...]', 'an optional repository directory (., ./dir, ../dir, /dir, ~/dir), then the command (put it after --)'),
    'image name (default: default_image_name; catalog images are pulled on first use)',
  )
    .option('--repo <path>', 'prepare this host git repository as the workspace (same as a first argument like ./repo)')
    .option('--rm', 'delete the VM when the shell or command ends')
    .option('-i, --interactive', "feed this terminal's stdin to the command (as `vm exec -i`)")
    .option('-t, --tty', 'run the command under a terminal (as `vm exec -t`)')
    .option('-d, --detach', 'leave the VM running and print how to reach it')
    .option(
      '--agent <name>',
      'start a coding agent (claude, opencode, pi, codex, or an [agents.NAME] of config.toml) in a tmux session and attach to it; the VM comes from the agent image (debian-bookworm-agents unless configured) with NAT on, which agents need to reach their APIs',
      agentNameArg,
    )
    .addHelpText(
      'after',
      [
        '',
        'A command runs through the guest agent (no ssh), in the workspace when there is one; a shell uses ssh.',
        '',
        'Examples:',
        '  banger vm run                          # a shell in a fresh VM',
        '  banger vm run --rm -- uname -r         # run, print, delete',
        '  banger vm run --rm . -- make test      # this repository in the VM, its tests, delete',
        '  banger vm run ~/src/app                # a shell in /root/repo, a copy of ~/src/app',
        '  banger vm run -d --name api --nat      # keep it running',
        '  banger vm run --agent claude .         # Claude Code on a copy of this repository',
        '',
        "With --agent, tmux's detach (Ctrl-B then d) leaves the agent running: banger vm agent attach NAME.",
        'docs/agents.md has the [[file_sync]] entries that bring your logins along.',
        '',
      ].join('\n'),
    )
    .action(async (operands: string[], o: RunOptions, cmd: Command) => {
      const args = classifyRunArgs(operands, countAfterDashDash(rawArgsOf(cmd), operands.length), {
        ...(o.repo !== undefined ? { repo: o.repo } : {}),
        cwd: process.cwd(),
        home: process.env.HOME || homedir(),
        isDirectory,
      });
      if ('error' in args) throw new BangerError('bad_request', args.error, { fix: 'give the directory of a git repository', details: 'usage' });
      const { repo, command } = args;
      if (o.detach && o.rm) throw new BangerError('bad_request', '--rm and --detach contradict each other', { fix: 'drop one of them', details: 'usage' });
      if (o.detach && command.length)
        throw new BangerError('bad_request', '--detach does not run a command', { fix: 'run it later with banger vm exec NAME -- CMD', details: 'usage' });
      if (o.agent !== undefined) {
        const problem = agentRunProblem(o, command);
        if (problem)
          throw new BangerError('bad_request', problem, { fix: 'banger vm run --agent NAME [./repo]; delete the VM yourself when done', details: 'usage' });
      }
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      // The agent's image and NAT (agents talk to their APIs); --image still wins.
      let agentSpec: Partial<VmSpecOptions> = {};
      if (o.agent !== undefined) {
        const { agents } = await client.agents();
        const def = agents.find((a) => a.name === o.agent);
        if (!def)
          throw new BangerError('bad_request', `no coding agent named "${o.agent}"`, {
            fix: `use one of ${agents.map((a) => sanitizeInline(a.name)).join(', ')}, or define [agents.${o.agent}] in config.toml (docs/agents.md)`,
            details: 'usage',
          });
        agentSpec = { image: o.image ?? def.image, nat: true };
      }
      // A command (or an agent) runs through the guest agent: ready needs no sshd unless the user asked for it.
      const base = o.waitFor?.some((w) => w.kind === 'ssh' || w.kind === 'agent');
      const waitFor = (command.length || o.agent !== undefined) && !base ? [{ kind: 'agent' as const }, ...(o.waitFor ?? [])] : o.waitFor;
      const accepted = await client.createVm(vmCreateRequest({ ...o, ...agentSpec, ...(waitFor ? { waitFor } : {}) }, true));
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
      let workspace: Vm['workspace'] = null;
      try {
        if (repo !== undefined) {
          const prepared = await client.prepareWorkspace(vm.id, { hostPath: repo }, new ProgressRenderer(process.stderr, false).onEvent);
          workspace = prepared.workspace;
          process.stderr.write(`workspace: ${sanitizeInline(repo)} → ${vm.name}:${sanitizeInline(prepared.workspace.guestPath)} (${prepared.files} files)\n`);
          if (prepared.untrackedSkipped > 0) {
            process.stderr.write(
              `note: ${prepared.untrackedSkipped} untracked file(s) were not copied (banger vm workspace prepare ${vm.name} --include-untracked copies them)\n`,
            );
          }
        }
        if (o.agent !== undefined) {
          const started = await client.startAgent(vm.id, { agent: o.agent });
          process.stderr.write(`${startedText(vm.name, started)}\n`);
          if (o.detach) {
            process.stdout.write(`${nextSteps(vm.name, workspace?.guestPath)}  banger vm agent attach ${vm.name}   # the agent's terminal\n`);
            return;
          }
          await attachAgent(client, { ...vm, workspace }, started.session, true);
          return;
        }
        if (o.detach) {
          process.stdout.write(nextSteps(vm.name, workspace?.guestPath));
          return;
        }
        if (command.length) {
          // Through the agent's process API: no wait for sshd, exit status and streams kept apart.
          await execInVm(client, { ...vm, workspace }, command, {
            detachKeys: DEFAULT_DETACH_KEYS,
            ...(o.interactive ? { interactive: true } : {}),
            ...(o.tty ? { tty: true } : {}),
          });
        } else {
          process.exitCode = await sshIntoVm(client, vm, [], workspace ? { cwd: workspace.guestPath } : {});
        }
      } catch (e) {
        if (!o.rm) process.stderr.write(`${vm.name} is still running; stop it with: banger vm stop ${vm.name}\n`);
        throw e;
      } finally {
        if (o.rm) {
          const { results } = await client.bulk({ action: 'delete', refs: [vm.id] });
          if (results[0]?.ok) process.stderr.write(`deleted ${vm.name}\n`);
          else process.stderr.write(`could not delete ${vm.name}: ${sanitizeInline(results[0]?.error?.message ?? 'unknown error')}\n`);
        }
      }
      if (!o.rm && command.length === 0 && o.agent === undefined)
        process.stderr.write(`${vm.name} is still running; stop it with: banger vm stop ${vm.name}\n`);
    });
}
