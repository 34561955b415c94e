import { versionText } from '../util/build-info.js';
import { Command } from './commander.js';

type Register = (program: Command) => void;

/**
 * The top-level commands in help order, each with the module that registers it. Only the module of
 * the command being run is loaded: start-up time is most of a quick command's time (`banger daemon
 * status` loads the daemon commands and the client, not every command's code). Help, `help <cmd>`,
 * `completion` and anything not listed here (a typo needs the whole tree for "did you mean") load
 * every module; test/unit/cli-lazy.test.ts checks that each entry registers exactly its names, with
 * the same subtree as in the whole tree.
 */
export const TOP_LEVEL: ReadonlyArray<{ names: readonly string[]; load: () => Promise<Register> }> = [
  { names: ['vm'], load: async () => (await import('./commands/vm.js')).registerVmCommands },
  { names: ['ssh-config'], load: async () => (await import('./commands/ssh.js')).registerSshConfigCommand },
  { names: ['snapshot'], load: async () => (await import('./commands/snapshot.js')).registerSnapshotCommands },
  { names: ['image'], load: async () => (await import('./commands/image.js')).registerImageCommands },
  { names: ['kernel'], load: async () => (await import('./commands/kernel.js')).registerKernelCommands },
  { names: ['daemon'], load: async () => (await import('./commands/daemon.js')).registerDaemonCommands },
  { names: ['mcp'], load: async () => (await import('./commands/mcp.js')).registerMcpCommands },
  { names: ['ui'], load: async () => (await import('./commands/ui.js')).registerUiCommands },
  { names: ['system'], load: async () => (await import('./commands/system.js')).registerSystemCommands },
  // `completion` is registered here too but walks the whole tree: it is deliberately not listed.
  { names: ['version', 'doctor'], load: async () => (await import('./commands/misc.js')).registerMiscCommands },
];

/**
 * The entries whose modules a command line needs: the one naming its command, none for `--version`
 * alone (the root program answers it), else all of them.
 */
export function entriesFor(args: readonly string[]): typeof TOP_LEVEL {
  const first = args[0];
  if (args.length === 1 && (first === '-V' || first === '--version')) return [];
  const entry = first === undefined || first.startsWith('-') ? undefined : TOP_LEVEL.find((e) => e.names.includes(first));
  return entry ? [entry] : TOP_LEVEL;
}

/**
 * The commander tree for `args` (the words after `banger`): only the top-level command they name,
 * or the whole tree when they name none of the listed ones. No argument builds the whole tree.
 */
export async function buildProgram(args?: readonly string[]): Promise<Command> {
  const program = new Command('banger')
    .description('One-command development sandboxes on microVMs')
    .version(versionText('banger'), '-V, --version', 'print version, commit and build time')
    .showHelpAfterError('(run with --help for usage)')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });
  const registers = await Promise.all((args === undefined ? TOP_LEVEL : entriesFor(args)).map((e) => e.load()));
  for (const register of registers) register(program);
  // Subcommands inherit exit-override and error output settings.
  const apply = (c: Command) => {
    c.exitOverride().showHelpAfterError('(run with --help for usage)').showSuggestionAfterError(true);
    c.commands.forEach(apply);
  };
  program.commands.forEach(apply);
  return program;
}
