import { Command, CommanderError } from 'commander';
import { BangerError } from '../api/errors.js';
import { versionText } from '../util/build-info.js';
import { registerDaemonCommands } from './commands/daemon.js';
import { registerMiscCommands } from './commands/misc.js';
import { registerVmCommands } from './commands/vm.js';
import { registerImageCommands } from './commands/image.js';
import { registerKernelCommands } from './commands/kernel.js';
import { exitCodeFor, formatError } from './render.js';

export function buildProgram(): Command {
  const program = new Command('banger')
    .description('One-command development sandboxes on microVMs')
    .version(versionText('banger'), '-V, --version', 'print version, commit and build time')
    .showHelpAfterError('(run with --help for usage)')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });
  registerVmCommands(program);
  registerImageCommands(program);
  registerKernelCommands(program);
  registerDaemonCommands(program);
  registerMiscCommands(program);
  // Subcommands inherit exit-override and error output settings.
  const apply = (c: Command) => {
    c.exitOverride().showHelpAfterError('(run with --help for usage)').showSuggestionAfterError(true);
    c.commands.forEach(apply);
  };
  program.commands.forEach(apply);
  return program;
}

async function main(): Promise<void> {
  // `banger vm list | head` closes the pipe early: that is not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  const program = buildProgram();
  try {
    if (process.argv.length <= 2) {
      program.outputHelp();
      process.exitCode = 2;
      return;
    }
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and --version exit 0; every usage error exits 2 (commander already printed it).
      process.exitCode = ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(e.code) ? 0 : 2;
      return;
    }
    process.stderr.write(formatError(e));
    process.exitCode = e instanceof BangerError ? exitCodeFor(e) : 1;
  }
}

await main();
