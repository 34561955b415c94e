import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { Kernel } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable } from '../render.js';

export function registerKernelCommands(program: Command): void {
  const kernel = program.command('kernel').description('manage guest kernels');

  kernel
    .command('import')
    .description('import a kernel from a directory (extracted distro package, vmlinux, or kernel.json manifest)')
    .argument('<name>', 'kernel name')
    .requiredOption('--from <dir>', 'source directory')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { from: string; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 15 * 60_000 });
      const accepted = await client.importKernel(name, resolve(o.from));
      const k = await client.finish<Kernel>(accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(k) : process.stdout.write(`imported kernel ${k.name} (${k.version})\n`);
    });

  kernel
    .command('list')
    .alias('ls')
    .description('list kernels')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const kernels = await new BangerClient().kernels();
      if (o.json) return printJson({ kernels });
      printTable(
        ['NAME', 'ID', 'VERSION', 'SIZE', 'SOURCE', 'CREATED'],
        kernels.map((k) => [k.name, k.id.slice(0, 12), k.version, formatBytes(k.sizeBytes), k.source, ago(k.createdAt)]),
      );
    });

  kernel
    .command('show')
    .description('show one kernel')
    .argument('<kernel>', 'name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const k = await new BangerClient().kernel(ref);
      if (o.json) return printJson(k);
      printKeyValues([
        ['name', k.name],
        ['id', k.id],
        ['version', k.version],
        ['kernel', k.kernelPath],
        ['initrd', k.initrdPath],
        ['modules', k.modulesDir],
        ['size', formatBytes(k.sizeBytes)],
        ['source', k.source],
        ['created', k.createdAt],
      ]);
    });

  kernel
    .command('rm')
    .alias('delete')
    .description('remove a kernel (refused while an image uses it)')
    .argument('<kernel>', 'name or id prefix')
    .action(async (ref: string) => {
      const { deleted } = await new BangerClient().deleteKernel(ref);
      process.stdout.write(`removed kernel ${deleted}\n`);
    });
}
