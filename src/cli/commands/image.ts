import type { Command } from 'commander';
import type { Image, Kernel } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable } from '../render.js';
import { resolve } from 'node:path';

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('manage root filesystem images');

  image
    .command('register')
    .description('register an ext4 rootfs (used in place, never modified) with a kernel')
    .requiredOption('--name <name>', 'image name')
    .requiredOption('--rootfs <file>', 'raw ext4 root filesystem image')
    .option('--kernel <file>', 'kernel (vmlinuz or vmlinux)')
    .option('--initrd <file>', 'initrd to use instead of banger-built initramfs (the agent must then be in the image)')
    .option('--modules <dir>', "the kernel's lib/modules/<version> directory")
    .option('--kernel-ref <name>', 'an already imported kernel')
    .option('--json', 'print as JSON')
    .action(async (o: { name: string; rootfs: string; kernel?: string; initrd?: string; modules?: string; kernelRef?: string; json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 15 * 60_000 });
      const accepted = await client.registerImage({
        name: o.name,
        rootfs: resolve(o.rootfs),
        ...(o.kernel ? { kernel: resolve(o.kernel as string) } : {}),
        ...(o.initrd ? { initrd: resolve(o.initrd as string) } : {}),
        ...(o.modules ? { modules: resolve(o.modules as string) } : {}),
        ...(o.kernelRef ? { kernelRef: o.kernelRef } : {}),
      });
      const img = await client.finish<Image>(accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(img) : process.stdout.write(`registered image ${img.name} (kernel ${img.kernelName})\n`);
    });

  image
    .command('list')
    .alias('ls')
    .description('list images')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const images = await new BangerClient().images();
      if (o.json) return printJson({ images });
      printTable(
        ['NAME', 'ID', 'KERNEL', 'SIZE', 'MANAGED', 'SYSTEMD', 'CREATED'],
        images.map((i) => [i.name, i.id.slice(0, 12), i.kernelName, formatBytes(i.sizeBytes), i.managed ? 'yes' : 'no', i.hasSystemd ? 'yes' : 'no', ago(i.createdAt)]),
      );
    });

  image
    .command('show')
    .description('show one image')
    .argument('<image>', 'name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const i = await new BangerClient().image(ref);
      if (o.json) return printJson(i);
      printKeyValues([
        ['name', i.name],
        ['id', i.id],
        ['rootfs', i.rootfsPath],
        ['kernel', i.kernelName],
        ['work seed', i.workSeedPath],
        ['managed', i.managed ? 'yes' : 'no (used in place)'],
        ['systemd', i.hasSystemd ? 'yes' : 'no'],
        ['size', formatBytes(i.sizeBytes)],
        ['source', i.source],
        ['created', i.createdAt],
      ]);
    });

  image
    .command('delete')
    .alias('rm')
    .description('delete an image (refused while VMs use it)')
    .argument('<image>', 'name or id prefix')
    .action(async (ref: string) => {
      const { deleted } = await new BangerClient().deleteImage(ref);
      process.stdout.write(`deleted image ${deleted}\n`);
    });
}
