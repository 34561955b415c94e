import { resolve } from 'node:path';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { KernelCatalogItem } from '../../api/kernel-schemas.js';
import type { Kernel } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable } from '../render.js';

function describeSource(s: KernelCatalogItem['source']): string {
  return s.kind === 'debian-index'
    ? `debian ${s.suite}/${s.component} ${s.package}${s.mirror ? ` (${s.mirror})` : ''}`
    : `${s.url}${s.format ? ` (${s.format})` : ''}`;
}

export function registerKernelCommands(program: Command): void {
  const kernel = program.command('kernel').description('manage guest kernels (pull from the catalog, import your own)');

  kernel
    .command('pull')
    .description('download a kernel from the catalog (`banger kernel list --available`), verify it, and install it under its catalog name')
    .argument('<name>', 'catalog entry name, e.g. debian-cloud')
    .option('--force', 'replace an existing kernel of that name (refused while images use it)')
    .option('--json', 'print the kernel as JSON')
    .action(async (name: string, o: { force?: boolean; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 30 * 60_000 });
      const accepted = await client.pullKernel(name, !!o.force);
      const k = await followOperation<Kernel>(client, accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(k) : process.stdout.write(`pulled kernel ${k.name} (${k.version})\n`);
    });

  kernel
    .command('import')
    .description('import a kernel from a directory (extracted distro package, vmlinux, or kernel.json manifest)')
    .argument('<name>', 'kernel name')
    .requiredOption('--from <dir>', 'source directory')
    .option('--json', 'print as JSON')
    .action(async (name: string, o: { from: string; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 15 * 60_000 });
      const accepted = await client.importKernel(name, resolve(o.from));
      const k = await followOperation<Kernel>(client, accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(k) : process.stdout.write(`imported kernel ${k.name} (${k.version})\n`);
    });

  kernel
    .command('list')
    .alias('ls')
    .description('list local kernels; with --available, the catalog (pulled or available)')
    .option('--available', 'list the catalog entries with their state')
    .option('--json', 'print as JSON')
    .action(async (o: { available?: boolean; json?: boolean }) => {
      const client = new BangerClient();
      if (o.available) {
        const catalog = await client.kernelCatalog();
        if (o.json) return printJson({ kernels: catalog });
        printTable(
          ['NAME', 'STATE', 'DISTRO', 'VERSION', 'SIZE', 'DESCRIPTION'],
          catalog.map((c) => [
            c.name,
            c.state,
            c.distro,
            c.kernel ? c.kernel.version : c.version,
            c.size !== undefined ? formatBytes(c.size) : '',
            c.description,
          ]),
        );
        return;
      }
      const kernels = await client.kernels();
      if (o.json) return printJson({ kernels });
      printTable(
        ['NAME', 'ID', 'VERSION', 'SIZE', 'SOURCE', 'CREATED'],
        kernels.map((k) => [k.name, k.id.slice(0, 12), k.version, formatBytes(k.sizeBytes), k.source, ago(k.createdAt)]),
      );
    });

  kernel
    .command('show')
    .description('show one kernel: a local one, or a catalog entry not pulled yet')
    .argument('<kernel>', 'name or id prefix (or a catalog entry name)')
    .option('--json', 'print as JSON (a local kernel, or the catalog entry with state "available")')
    .action(async (ref: string, o: { json?: boolean }) => {
      const client = new BangerClient();
      let k: Kernel | undefined;
      try {
        k = await client.kernel(ref);
      } catch (e) {
        if (!(e instanceof BangerError && e.code === 'not_found')) throw e;
      }
      // A local kernel shows even when a configured catalog cannot be read.
      const catalog = await client.kernelCatalog().catch((e: unknown) => {
        if (k) return [];
        throw e;
      });
      const entry = catalog.find((c) => c.name === (k?.name ?? ref));
      if (!k && !entry) {
        throw new BangerError('not_found', `kernel "${ref}" not found, locally or in the catalog`, {
          fix: 'list them with `banger kernel list` and `banger kernel list --available`',
        });
      }
      if (o.json) return printJson(k ?? entry);
      if (k) {
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
          ...(entry ? ([['catalog', `${entry.description} [${entry.origin}]`]] as Array<[string, string]>) : []),
        ]);
        return;
      }
      const c = entry as KernelCatalogItem;
      printKeyValues([
        ['name', c.name],
        ['state', `${c.state} (banger kernel pull ${c.name})`],
        ['distro', c.distro],
        ['arch', c.arch],
        ['version', c.version],
        ['size', c.size !== undefined ? formatBytes(c.size) : undefined],
        ['source', describeSource(c.source)],
        ['catalog', c.origin],
        ['description', c.description],
      ]);
    });

  kernel
    .command('rm')
    .alias('delete')
    .description(
      'remove a kernel. Refused while images or VMs use it (the error names them); --force also deletes the images that use it, never VMs. A catalog kernel can be pulled again later (the download stays cached).',
    )
    .argument('<kernel>', 'name or id prefix')
    .option('--force', 'also delete the images that boot this kernel (refused while VMs use it); no error when the kernel does not exist')
    .action(async (ref: string, o: { force?: boolean }) => {
      const { deleted } = await new BangerClient().deleteKernel(ref, !!o.force);
      process.stdout.write(`removed kernel ${deleted}\n`);
    });
}
