import { createInterface } from 'node:readline';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from '../host/runner.js';
import type { OpContext } from '../util/op-context.js';
import type { RecipeSpec } from './catalog.js';
import { applyLayer, type RootfsLedger } from './layer-apply.js';

/** Units a throwaway dev VM does not need; each costs boot time under TCG (see the guest-boot notes). */
export const MASKED_UNITS = [
  'apt-daily.timer',
  'apt-daily-upgrade.timer',
  'dpkg-db-backup.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'fstrim.timer',
  'systemd-tmpfiles-clean.timer',
  'man-db.timer',
  'systemd-pstore.service',
  'getty-static.service',
  'getty@tty1.service',
  'systemd-update-utmp.service',
  'systemd-update-utmp-runlevel.service',
  'systemd-random-seed.service',
  'systemd-journal-flush.service',
  'modprobe@configfs.service',
  'modprobe@dm_mod.service',
  'modprobe@drm.service',
  'modprobe@efi_pstore.service',
  'modprobe@fuse.service',
  'modprobe@loop.service',
  'sys-kernel-config.mount',
  'sys-kernel-debug.mount',
  'sys-kernel-tracing.mount',
  'sys-fs-fuse-connections.mount',
  'proc-sys-fs-binfmt_misc.automount',
  'systemd-binfmt.service',
];

/**
 * The shell the customize hook runs on the host against the finished tree ("$1"): host tools only
 * (ln, rm, sed, printf), nothing from the image is executed.
 */
export function tuneHook(): string {
  return [
    'set -e',
    'r="$1"',
    `for u in ${MASKED_UNITS.join(' ')}; do ln -sfn /dev/null "$r/etc/systemd/system/$u"; done`,
    // Clones of one image must not share a machine id or host keys (each VM gets its own key).
    ': > "$r/etc/machine-id"',
    'rm -f "$r/var/lib/dbus/machine-id" "$r"/etc/ssh/ssh_host_*',
    'mkdir -p "$r/etc/ssh/sshd_config.d"',
    // The first value wins in sshd_config; PAM costs ~1 s per login under TCG and key-only root logins do not need it.
    `printf 'UsePAM no\\nPasswordAuthentication no\\nKbdInteractiveAuthentication no\\n' > "$r/etc/ssh/sshd_config.d/10-banger.conf"`,
    `sed -i -E 's/^root:[^:]*:/root:*:/' "$r/etc/shadow"`,
    'rm -rf "$r/lib/modules" "$r/usr/lib/modules"',
    `printf 'banger\\n' > "$r/etc/hostname"`,
    // Not apt's lists/caches nor /tmp: mmdebstrap still needs them after this hook (its apt config
    // lives in the chroot's /tmp; without it, its final apt-get calls fall back to the HOST's apt
    // state and wipe its package lists) and cleans them itself at the end.
    'rm -f "$r"/var/log/*.log "$r"/var/log/apt/*.log',
  ].join('\n');
}

/** mmdebstrap's argv for a recipe: the tree comes out as a tar on stdout. */
export function mmdebstrapArgs(recipe: RecipeSpec, mirror: string): string[] {
  return [
    '--quiet',
    `--variant=${recipe.variant}`,
    ...(recipe.packages.length ? [`--include=${recipe.packages.join(',')}`] : []),
    '--dpkgopt=path-exclude=/usr/share/man/*',
    '--dpkgopt=path-exclude=/usr/share/locale/*',
    '--dpkgopt=path-include=/usr/share/locale/locale.alias',
    '--dpkgopt=path-exclude=/usr/share/doc/*',
    '--dpkgopt=path-include=/usr/share/doc/*/copyright',
    '--dpkgopt=path-exclude=/usr/share/info/*',
    `--customize-hook=${tuneHook()}`,
    '--format=tar',
    recipe.suite,
    '-',
    recipe.mirror ?? mirror,
  ];
}

/**
 * Builds a recipe's tree with mmdebstrap and unpacks its tar output into `root` through the same
 * unpacker as image layers (so ownership is handled the same way with or without root).
 */
export async function runRecipe(
  runner: CommandRunner,
  recipe: RecipeSpec,
  mirror: string,
  root: string,
  ledger: RootfsLedger,
  chownOnDisk: boolean,
  ctx: OpContext,
): Promise<void> {
  const args = mmdebstrapArgs(recipe, mirror);
  const child = runner.spawn('mmdebstrap', args, { stdin: 'ignore', signal: ctx.signal, neededFor: 'it builds Debian images' });
  const tail: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => {
    ctx.log(line);
    tail.push(line);
    if (tail.length > 20) tail.shift();
  });
  const exited = child.done.then(({ code }) => code ?? 1);
  const unpacked = applyLayer(
    child.stdout,
    { root, chownOnDisk, label: `mmdebstrap ${recipe.suite}`, maxBytes: 64 * 1024 ** 3, maxEntries: 5_000_000 },
    ledger,
  );
  const [code, applied] = await Promise.allSettled([exited, unpacked]);
  if (code.status === 'rejected') throw code.reason;
  if (code.value !== 0) {
    throw new BangerError('host_command_failed', `mmdebstrap failed (exit ${code.value}):\n${tail.join('\n')}`, {
      fix: 'check that the Debian mirror is reachable (config: debian_mirror) and the package names exist in the suite',
    });
  }
  if (applied.status === 'rejected') throw applied.reason;
}
