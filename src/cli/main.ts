import { CommanderError } from 'commander';
import { BangerError } from '../api/errors.js';
import { buildProgram } from './program.js';
import { exitCodeFor, formatError } from './render.js';

async function main(): Promise<void> {
  // `banger vm list | head` closes the pipe early: that is not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  try {
    const program = await buildProgram(process.argv.slice(2));
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
