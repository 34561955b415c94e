import type { Command } from 'commander';
import { BangerClient } from '../../client/client.js';

export function registerVmCpCommand(vm: Command): void {
  vm.command('cp')
    .description('copy files and directories between the host and a VM (docker cp style): banger vm cp ./src dev:/root/app, banger vm cp dev:/root/out .')
    .argument('<src>', 'HOST_PATH or VM:PATH (a trailing "/." copies a directory\'s contents)')
    .argument('<dst>', 'VM:PATH or HOST_PATH (an existing directory receives the source inside it)')
    .option('-L, --follow-link', 'follow a symlink given as the host source (links inside a tree are copied as links)')
    .option('-a, --archive', 'archive mode: keep owners (uid/gid) and modes without the umask (guest → host: needs root on the host)')
    .addHelpText(
      'after',
      [
        '',
        'Without -a (docker cp semantics) the receiving side owns what it receives: root in the guest, you on the host.',
        'Guest → host, modes are kept but masked by your umask (a guest 0777 lands as 0755 under umask 022), and',
        'setuid/setgid/sticky bits are always dropped, even with -a. Guest paths may not contain "..".',
        "What comes out of a guest is unpacked only by banger's hostile-input extractor: no entry outside the destination,",
        'no link out of the copied tree, at most 1 TiB and 1,000,000 entries.',
      ].join('\n'),
    )
    .action(async (src: string, dst: string, o: { followLink?: boolean; archive?: boolean }) => {
      const { runCp } = await import('../cp-host.js');
      await runCp(new BangerClient({ timeoutMs: 15 * 60_000 }), src, dst, o);
    });
}
