import { writeFile } from 'node:fs/promises';
import { BangerError } from '../api/errors.js';
import type { DiskTools } from '../host/disks.js';
import type { RootfsLedger } from './layer-apply.js';

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
/** Per-inode overhead assumed when sizing (inode + directory entry + a partly used block). */
const PER_ENTRY = 4096;

/** Image size: content × 1.5 with a 1 GiB floor, rounded up to a MiB; an explicit size must hold the content. */
export function imageSizeFor(ledger: Pick<RootfsLedger, 'bytes' | 'entries'>, requested?: number): number {
  const content = ledger.bytes + ledger.entries * PER_ENTRY;
  if (requested !== undefined) {
    if (requested < content * 1.1) {
      throw new BangerError('bad_request', `--size ${Math.round(requested / MIB)} MiB cannot hold this image (${Math.ceil(content / MIB)} MiB of content)`, {
        fix: `give at least ${Math.ceil((content * 1.2) / MIB)}M, or leave --size out for content × 1.5`,
      });
    }
    return Math.ceil(requested / MIB) * MIB;
  }
  return Math.ceil(Math.max(content * 1.5, GIB) / MIB) * MIB;
}

/**
 * debugfs reads a script line by line (fgets into a BUFSIZ buffer: a longer line would run on as a
 * second command) and splits it like libss: inside double quotes everything is literal, `""` is
 * one `"`. A newline or carriage return cannot be written at all. Longest quoted argument allowed:
 * well under half the buffer, so no script line can be split.
 */
const MAX_QUOTED = 3000;

/** One debugfs argument; undefined for a name that cannot be written (the caller reports it). */
export function debugfsQuote(arg: string): string | undefined {
  if (/[\n\r\0]/.test(arg)) return undefined;
  const q = `"${arg.replace(/"/g, '""')}"`;
  return q.length > MAX_QUOTED ? undefined : q;
}

function quote(path: string): string | undefined {
  return debugfsQuote(`/${path}`);
}

const TYPE_BITS = { char: 0o020000, block: 0o060000, fifo: 0o010000 } as const;

/**
 * The debugfs commands that finish an ext4 made by `mkfs.ext4 -d`: device nodes and fifos (which
 * the staging tree holds only in the ledger), and, when the tree could not be chowned (not root),
 * every recorded owner. Returns the script and the paths it had to skip.
 */
export function fixupScript(ledger: RootfsLedger, ownersOnDisk: boolean): { script: string; skipped: string[] } {
  const lines: string[] = [];
  const skipped: string[] = [];
  if (!ownersOnDisk) {
    for (const [rel, o] of ledger.owners) {
      if (ledger.specials.has(rel)) continue;
      const q = rel === '' ? '"/"' : quote(rel);
      if (!q) {
        skipped.push(rel);
        continue;
      }
      // The tree was written by this user; mkfs recorded that user. Only differences need writing.
      lines.push(`sif ${q} uid ${o.uid}`, `sif ${q} gid ${o.gid}`);
    }
  }
  for (const [rel, n] of ledger.specials) {
    const q = quote(rel);
    if (!q) {
      skipped.push(rel);
      continue;
    }
    // debugfs's mknod links the name into the current directory as given: cd there first.
    const slash = rel.lastIndexOf('/');
    const dir = debugfsQuote(slash < 0 ? '/' : `/${rel.slice(0, slash)}`) as string;
    const base = debugfsQuote(rel.slice(slash + 1)) as string;
    lines.push(`cd ${dir}`, n.type === 'fifo' ? `mknod ${base} p` : `mknod ${base} ${n.type === 'char' ? 'c' : 'b'} ${n.major} ${n.minor}`, 'cd "/"');
    lines.push(`sif ${q} mode 0${(TYPE_BITS[n.type] | n.mode).toString(8)}`, `sif ${q} uid ${n.uid}`, `sif ${q} gid ${n.gid}`);
  }
  return { script: lines.length ? `${lines.join('\n')}\n` : '', skipped };
}

/** Turns the staging tree into the image's ext4, then applies the ledger with debugfs. */
export async function buildRootfs(
  disks: DiskTools,
  o: { tree: string; out: string; sizeBytes: number; ledger: RootfsLedger; ownersOnDisk: boolean; scriptPath: string },
): Promise<{ skipped: string[] }> {
  await disks.mkfsFromDir(o.out, o.sizeBytes, o.tree, 'banger-root');
  const { script, skipped } = fixupScript(o.ledger, o.ownersOnDisk);
  if (script) {
    await writeFile(o.scriptPath, script, { mode: 0o600 });
    await disks.debugfsScript(o.out, o.scriptPath);
  }
  return { skipped };
}
