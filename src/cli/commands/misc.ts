import type { Command } from 'commander';
import { resolveClientLayout } from '../../config/layout.js';
import { versionText } from '../../util/build-info.js';
import { completionScript, type Shell } from '../completion.js';
import { printJson } from '../render.js';

export function registerMiscCommands(program: Command): void {
  program
    .command('version')
    .description('print version, commit and build time')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      if (opts.json) {
        const { buildInfo } = await import('../../util/build-info.js');
        return printJson({ ...buildInfo(), node: process.version });
      }
      process.stdout.write(`${versionText('banger')}\n`);
    });

  program
    .command('doctor')
    .description('check that this host can run banger (changes nothing)')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      const { runChecks } = await import('../../doctor/checks.js');
      const { realHostProbe } = await import('../../doctor/probe.js');
      const checks = await runChecks(realHostProbe(resolveClientLayout()));
      const failed = checks.some((c) => c.status === 'FAIL');
      if (opts.json) printJson({ ok: !failed, checks });
      else {
        for (const c of checks) {
          process.stdout.write(`${c.status.padEnd(4)}  ${c.name}: ${c.detail}\n`);
          // A multi-line fix (TOML to paste) is indented under its FIX.
          if (c.fix) process.stdout.write(`      FIX: ${c.fix.replaceAll('\n', '\n           ')}\n`);
        }
        const n = (s: string) => checks.filter((c) => c.status === s).length;
        process.stdout.write(`\n${n('PASS')} passed, ${n('WARN')} warnings, ${n('FAIL')} failed\n`);
      }
      if (failed) process.exitCode = 1;
    });

  program
    .command('completion')
    .description('print a shell completion script (bash, zsh or fish)')
    .argument('<shell>', 'bash | zsh | fish')
    .addHelpText(
      'after',
      '\nExamples:\n  banger completion bash > /etc/bash_completion.d/banger\n  banger completion fish > ~/.config/fish/completions/banger.fish',
    )
    .action((shell: string) => {
      if (!['bash', 'zsh', 'fish'].includes(shell)) {
        program.error(`error: unsupported shell "${shell}": use bash, zsh or fish`, { exitCode: 2, code: 'banger.usage' });
      }
      process.stdout.write(completionScript(program, shell as Shell));
    });
}
