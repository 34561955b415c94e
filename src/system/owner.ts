import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, fchmodSync, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from '../host/runner.js';
import { assertUserName, type ServiceOwner } from './units.js';

/**
 * The service owner: an existing unprivileged user, looked up through NSS (`getent passwd`), and
 * what the host must grant it (subordinate ids for mmdebstrap's unshare mode, the kvm group).
 */

/** Parses one `getent passwd` line (name:pw:uid:gid:gecos:home:shell). */
export function parsePasswdLine(line: string): ServiceOwner | undefined {
  const f = line.trim().split(':');
  if (f.length !== 7) return undefined;
  const [name, , uid, gid, , home] = f as [string, string, string, string, string, string, string];
  if (!/^\d+$/.test(uid) || !/^\d+$/.test(gid) || !home.startsWith('/')) return undefined;
  return { name, uid: Number(uid), gid: Number(gid), home };
}

export async function lookupOwner(name: string, runner: CommandRunner): Promise<ServiceOwner> {
  assertUserName(name);
  const r = await runner.run('getent', ['passwd', name], { allowFailure: true, timeoutMs: 10_000 });
  const owner = r.code === 0 ? parsePasswdLine(r.stdout.split('\n')[0] ?? '') : undefined;
  if (!owner || owner.name !== name) {
    throw new BangerError('not_found', `user ${name} does not exist`, {
      fix: `create it first (useradd --create-home ${name}) or name an existing user with --owner`,
    });
  }
  if (owner.uid === 0) {
    throw new BangerError('bad_request', `the service owner must be an unprivileged user, not ${name} (uid 0)`, {
      fix: 'name an unprivileged user with --owner; the all-root development mode is `banger daemon start`',
    });
  }
  return owner;
}

/** A group from `getent group` (exists, and its explicit members), or undefined when absent. */
export async function lookupGroup(name: string, runner: CommandRunner): Promise<{ gid: number; members: string[] } | undefined> {
  const r = await runner.run('getent', ['group', name], { allowFailure: true, timeoutMs: 10_000 });
  if (r.code !== 0) return undefined;
  const f = (r.stdout.split('\n')[0] ?? '').split(':');
  if (f.length !== 4 || !/^\d+$/.test(f[2] as string)) return undefined;
  return { gid: Number(f[2]), members: (f[3] as string).split(',').filter(Boolean) };
}

/** Debian's SUB_UID_MIN: subordinate ranges start here. */
const SUB_ID_MIN = 100_000;
export const SUB_ID_COUNT = 65_536;

/**
 * The line to append to /etc/subuid or /etc/subgid for `owner`, or undefined when the owner
 * already has a range there (by name or by uid). A new range starts above every existing one
 * (and at 100000 at least), so it never overlaps another user's.
 */
export function planSubordinateIds(text: string, owner: Pick<ServiceOwner, 'name' | 'uid'>): string | undefined {
  let next = SUB_ID_MIN;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [who, start, count] = line.split(':');
    if (who === owner.name || who === String(owner.uid)) return undefined;
    if (!/^\d+$/.test(start ?? '') || !/^\d+$/.test(count ?? '')) continue;
    next = Math.max(next, Number(start) + Number(count));
  }
  return `${owner.name}:${next}:${SUB_ID_COUNT}`;
}

function readOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw e;
  }
}

/**
 * Replaces `path` with `text` atomically: a fresh file beside it (O_EXCL, so never through a link
 * someone planted), synced, then renamed over the old one.
 */
export function writeFileAtomic(path: string, text: string, mode: number): void {
  const tmp = join(dirname(path), `.${basename(path)}.banger-${randomBytes(4).toString('hex')}`);
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeSync(fd, text);
    fchmodSync(fd, mode); // the umask may have narrowed the create mode
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Appends the owner's range to a subordinate-id file when it has none; returns the line added. */
export function ensureSubordinateIds(path: string, owner: Pick<ServiceOwner, 'name' | 'uid'>): string | undefined {
  const text = readOrEmpty(path);
  const line = planSubordinateIds(text, owner);
  if (!line) return undefined;
  const sep = text === '' || text.endsWith('\n') ? '' : '\n';
  writeFileAtomic(path, `${text}${sep}${line}\n`, 0o644);
  return line;
}

/** Removes exactly `line` (one that install added) from a subordinate-id file; true when it was there. */
export function removeSubordinateIds(path: string, line: string): boolean {
  const text = readOrEmpty(path);
  const lines = text.split('\n');
  const kept = lines.filter((l) => l.trim() !== line);
  if (kept.length === lines.length) return false;
  writeFileAtomic(path, kept.join('\n'), 0o644);
  return true;
}

export const TUN_DEVICE = '/dev/net/tun';

/**
 * The owner's QEMU attaches to its TAP (created for it by bangerd-root, `ip tuntap add … user
 * <owner>`) by opening /dev/net/tun, which udev makes 0666 on every mainstream distribution — the
 * kernel, not the file mode, decides which TAP an unprivileged opener may attach to. Hosts without
 * udev (containers) leave it 0600 root; this restores udev's mode and says so. Returns what it did.
 */
export function ensureTunAccessible(say: (line: string) => void, device = TUN_DEVICE): 'ok' | 'fixed' | 'missing' {
  let mode: number;
  try {
    const st = lstatSync(device);
    if (!st.isCharacterDevice()) throw new BangerError('precondition_failed', `${device} is not a character device`, { fix: `modprobe tun; check ${device}` });
    mode = st.mode & 0o777;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      say(`${device} is missing: VMs cannot get a network (fix: modprobe tun)`);
      return 'missing';
    }
    throw e;
  }
  if ((mode & 0o666) === 0o666) return 'ok';
  chmodSync(device, 0o666);
  say(`${device} was ${mode.toString(8).padStart(4, '0')}: set to 0666, udev's default, so the owner's QEMU can open its TAP`);
  return 'fixed';
}
