import { readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { Image } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { formatBytes } from '../../util/duration.js';
import { sizeArg } from '../args.js';
import { followOperation, ProgressRenderer } from '../progress.js';
import { ago, printJson, printKeyValues, printTable, sanitizeInline } from '../render.js';
import { registerImageWarmCommand } from './snapshot.js';

export function registerImageCommands(program: Command): void {
  const image = program.command('image').description('manage root filesystem images');
  registerImageWarmCommand(image);

  image
    .command('pull')
    .description('pull an OCI image (any registry) and turn it into a bootable ext4 image')
    .argument('<ref>', 'image reference, e.g. debian:bookworm, ghcr.io/org/app:v1, 127.0.0.1:5000/x@sha256:…')
    .option('--name <name>', 'image name (default: derived from the reference)')
    .option('--kernel-ref <name>', 'kernel to boot it with (default: the default kernel)')
    .option('--size <size>', 'ext4 size, e.g. 4G (default: content × 1.5, at least 1 GiB)', sizeArg)
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { name?: string; kernelRef?: string; size?: number; json?: boolean }) => {
      const sizeBytes = o.size;
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      const accepted = await client.pullImage({
        ref,
        ...(o.name ? { name: o.name } : {}),
        ...(o.kernelRef ? { kernelRef: o.kernelRef } : {}),
        ...(sizeBytes ? { sizeBytes } : {}),
      });
      const img = await followOperation<Image>(client, accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(img) : process.stdout.write(`pulled ${ref} as image ${img.name} (${formatBytes(img.sizeBytes)} ext4, kernel ${img.kernelName})\n`);
    });

  image
    .command('build')
    .description('boot a VM from an image, run a script in it (log streamed live), save the result as a new image')
    .requiredOption('--from <image>', 'image to start from')
    .requiredOption('--script <file>', 'shell script run as root with bash in the build VM')
    .option('--name <name>', 'new image name (default: <from>-<script name>)')
    .option('--no-nat', 'build without outbound network')
    .option('--disk-size <size>', 'work disk size for the build VM (it becomes the image /root seed)', sizeArg)
    .option('--json', 'print as JSON')
    .action(async (o: { from: string; script: string; name?: string; nat: boolean; diskSize?: number; json?: boolean }) => {
      let script: string;
      try {
        script = readFileSync(resolve(o.script), 'utf8');
      } catch (e) {
        throw new BangerError('bad_request', `cannot read --script ${o.script}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
          fix: 'give the path of a shell script',
        });
      }
      const name =
        o.name ??
        `${o.from}-${basename(o.script)
          .replace(/\.[^.]*$/, '')
          .toLowerCase()
          .replace(/[^a-z0-9._-]/g, '-')}`;
      const client = new BangerClient({ timeoutMs: 4 * 60 * 60_000 });
      const accepted = await client.buildImage({ from: o.from, name, script, nat: o.nat, ...(o.diskSize ? { diskSizeBytes: o.diskSize } : {}) });
      const progress = new ProgressRenderer(process.stderr, !!o.json);
      const img = await followOperation<Image>(client, accepted, (e) => {
        // The script's output is the point of a build: show it as it comes.
        if (e.type === 'log' && !o.json) process.stderr.write(`  | ${sanitizeInline(e.line)}\n`);
        else progress.onEvent(e);
      });
      o.json ? printJson(img) : process.stdout.write(`built image ${img.name} from ${o.from}\n`);
    });

  image
    .command('promote')
    .description('copy an unmanaged (registered) image into banger-owned storage')
    .argument('<image>', 'name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const client = new BangerClient({ timeoutMs: 60 * 60_000 });
      const img = await followOperation<Image>(client, await client.promoteImage(ref), new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(img) : process.stdout.write(`image ${img.name} is now managed (${img.rootfsPath})\n`);
    });

  image
    .command('cache')
    .description('manage the image layer cache')
    .command('prune')
    .description('delete cached image layers (pulled images keep working; a re-pull downloads again)')
    .option('--dry-run', 'only report what would be freed')
    .option('--json', 'print as JSON')
    .action(async (o: { dryRun?: boolean; json?: boolean }) => {
      const r = await new BangerClient().pruneImageCache(!!o.dryRun);
      if (o.json) return printJson(r);
      process.stdout.write(
        `${r.dryRun ? 'would free' : 'freed'} ${formatBytes(r.freedBytes)} in ${r.removed} blob(s)${r.kept ? `; ${r.kept} in use by a running pull kept` : ''}\n`,
      );
    });

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
      const img = await followOperation<Image>(client, accepted, new ProgressRenderer(process.stderr, !!o.json).onEvent);
      o.json ? printJson(img) : process.stdout.write(`registered image ${img.name} (kernel ${img.kernelName})\n`);
    });

  image
    .command('list')
    .alias('ls')
    .description('list images (--available: the image catalog, pulled or not)')
    .option('--available', 'list the catalog entries `image pull NAME` and `vm run --image NAME` can fetch')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean; available?: boolean }) => {
      if (o.available) {
        const catalog = await new BangerClient().imageCatalog();
        if (o.json) return printJson(catalog);
        printTable(
          ['NAME', 'STATE', 'KIND', 'KERNEL', 'SOURCE', 'DESCRIPTION'],
          catalog.images.map((e) => [e.name, e.pulled ? 'pulled' : 'available', e.kind, e.kernel, e.source, e.description]),
        );
        return;
      }
      const images = await new BangerClient().images();
      if (o.json) return printJson({ images });
      printTable(
        ['NAME', 'ID', 'KERNEL', 'SIZE', 'MANAGED', 'SYSTEMD', 'CREATED'],
        images.map((i) => [
          i.name,
          i.id.slice(0, 12),
          i.kernelName,
          formatBytes(i.sizeBytes),
          i.managed ? 'yes' : 'no',
          i.hasSystemd ? 'yes' : 'no',
          ago(i.createdAt),
        ]),
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
        ['managed', i.managed ? 'yes' : 'no (used in place)'],
        ['systemd', i.hasSystemd ? 'yes' : 'no'],
        ['sshd', i.hasSshd ? 'yes' : 'no (installed at first boot in VMs with NAT)'],
        ['digest', i.digest],
        ['size', formatBytes(i.sizeBytes)],
        ['source', i.source],
        ['created', i.createdAt],
        // Pinned at build time (a recipe's npm lock): one package per line.
        ...Object.entries(i.software ?? {})
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([pkg, version], n): [string, string] => [n === 0 ? 'software' : '', `${pkg} ${version}`]),
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
