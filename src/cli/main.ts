import { BangerError } from '../api/errors.js';
import { fastPathFor } from './fast-path.js';
import { exitCodeFor, formatError } from './render.js';

async function main(): Promise<void> {
  // `banger vm list | head` closes the pipe early: that is not an error.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  const args = process.argv.slice(2);
  const fast = fastPathFor(args);
  try {
    if (fast) return await fast.run();
    const { buildProgram } = await import('./program.js');
    const program = await buildProgram(args);
    if (args.length === 0) {
      program.outputHelp();
      process.exitCode = 2;
      return;
    }
    await program.parseAsync(process.argv);
  } catch (e) {
    // A fast path never builds commander, so it has no commander errors (and must not load it for them).
    if (!fast && e instanceof (await import('./commander.js')).CommanderError) {
      // Help and --version exit 0; every usage error exits 2 (commander already printed it).
      process.exitCode = ['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(e.code) ? 0 : 2;
      return;
    }
    process.stderr.write(formatError(e));
    process.exitCode = e instanceof BangerError ? exitCodeFor(e) : 1;
  }
}

await main();
