import type { Command } from 'commander';
import { BangerClient } from '../../client/client.js';

export function registerVmCpCommand(vm: Command): void {
  vm.command('cp')
    .description('copy files and directories between the host and a VM (docker cp style): banger vm cp ./src dev:/root/app, banger vm cp dev:/root/out .')
    .argument('<src>', 'HOST_PATH or VM:PATH (a trailing "/." copies a directory\'s contents)')
    .argument('<dst>', 'VM:PATH or HOST_PATH (an existing directory receives the source inside it)')
    .option('-L, --follow-link', 'follow a symlink given as the host source (links inside a tree are copied as links)')
    .addHelpText(
      'after',
      "\nModes are kept; owners are kept only when the receiving side can set them (the guest always can when this runs as root; the host when this runs as root).\nWhat comes out of a guest is unpacked only by banger's hostile-input extractor: no entry outside the destination, no link out of the copied tree.",
    )
    .action(async (src: string, dst: string, o: { followLink?: boolean }) => {
      const { runCp } = await import('../cp-host.js');
      await runCp(new BangerClient({ timeoutMs: 15 * 60_000 }), src, dst, o);
    });
}
