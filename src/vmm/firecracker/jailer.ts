import { constants } from 'node:fs';
import { chmod, chown, copyFile, link, lstat, mkdir, rm, stat, unlink } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, resolve } from 'node:path';
import { lookupUser } from '../../host/users.js';
import { which } from '../../host/which.js';
import type { VmLaunchSpec } from '../driver.js';
import { FirecrackerConfigError } from './requests.js';

/**
 * Starting Firecracker through its `jailer` (firecracker docs/jailer.md): the jailer, run as root,
 * builds `<chrootBaseDir>/<exec file name>/<id>/root`, copies Firecracker into it, enters a new
 * mount namespace chrooted there (with its own /dev/kvm and /dev/net/tun), joins a cgroup (v2), and
 * execs Firecracker as `uid:gid`, in the same process: the pid banger spawned is Firecracker's.
 * Every path Firecracker is given is then inside the chroot, so banger places the VM's files there
 * first (placeFiles) and speaks to sockets at their host path under the chroot.
 */
export interface JailerOptions {
  /** The jailer binary. */
  jailerBin: string;
  /** Absolute path of the Firecracker binary the jailer copies into the jail (its name must contain "firecracker"). */
  execFile: string;
  /**
   * Where jails are built. It must be on the same filesystem as the VM disks: a read-write disk is
   * hard-linked into the jail (a copy would be a different disk), so banger's default is a
   * directory under the state dir rather than the runtime dir (often a tmpfs).
   */
  chrootBaseDir: string;
  uid: number;
  gid: number;
  /** A network namespace handle (e.g. /var/run/netns/NAME) for Firecracker to join. */
  netns?: string;
}

/** Paths inside the jail, as Firecracker sees them. */
export const JAIL_PATHS = {
  apiSocket: '/fc.sock',
  agentSocket: '/agent.sock',
  kernel: '/vmlinux',
  initrd: '/initrd.img',
  log: '/firecracker.log',
  disk: (id: string) => `/${id}.img`,
  /** A restore's saved state and memory, hard-linked in read-only (launch with `restore`). */
  restoreState: '/snapshot.state',
  restoreMemory: '/snapshot.mem',
  /** saveState's output: the daemon's own new files, hard-linked in for the time of PUT /snapshot/create. */
  saveState: '/snapshot-out.state',
  saveMemory: '/snapshot-out.mem',
} as const;

/** The jailer's `--id`: the VM id itself, refused (never mapped: two VMs must not share a jail) unless 1-64 of [A-Za-z0-9-]. */
export function jailIdFor(vmId: string): string {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(vmId)) {
    throw new FirecrackerConfigError(`VM id ${JSON.stringify(vmId)} cannot name a jail: the jailer takes 1-64 letters, digits and hyphens`);
  }
  return vmId;
}

export interface JailLayout {
  /** `<chrootBaseDir>/<exec name>/<id>`: removed as a whole when the VM stops. */
  jailDir: string;
  /** `<jailDir>/root`: Firecracker's `/`. */
  chrootDir: string;
}

export function jailLayout(o: Pick<JailerOptions, 'chrootBaseDir' | 'execFile'>, jailId: string): JailLayout {
  const jailDir = join(o.chrootBaseDir, basename(o.execFile), jailId);
  return { jailDir, chrootDir: join(jailDir, 'root') };
}

/** Host path of a path inside the jail. */
export const hostPathOf = (layout: JailLayout, jailPath: string) => join(layout.chrootDir, jailPath);

/** Pure: the jailer argv. `firecrackerArgs` follow `--` (the jailer adds --id itself). */
export function buildJailerArgs(o: JailerOptions, jailId: string, firecrackerArgs: readonly string[]): string[] {
  if (!isAbsolute(o.execFile) || !basename(o.execFile).includes('firecracker')) {
    throw new FirecrackerConfigError(`the jailer needs the absolute path of a binary whose name contains "firecracker", not ${JSON.stringify(o.execFile)}`);
  }
  if (!isAbsolute(o.chrootBaseDir)) throw new FirecrackerConfigError(`the jail base dir must be absolute: ${o.chrootBaseDir}`);
  for (const [k, v] of [
    ['uid', o.uid],
    ['gid', o.gid],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xfffffffe) throw new FirecrackerConfigError(`invalid jailer ${k} ${v}`);
  }
  if (o.netns !== undefined && !isAbsolute(o.netns)) throw new FirecrackerConfigError(`the netns handle must be an absolute path: ${o.netns}`);
  return [
    '--id',
    jailIdFor(jailId),
    '--exec-file',
    o.execFile,
    '--uid',
    String(o.uid),
    '--gid',
    String(o.gid),
    '--chroot-base-dir',
    o.chrootBaseDir,
    '--cgroup-version',
    '2',
    ...(o.netns ? ['--netns', o.netns] : []),
    '--',
    ...firecrackerArgs,
  ];
}

/** Pure: the launch spec as the jailed Firecracker sees it (every path inside the chroot). */
export function jailedSpec(spec: VmLaunchSpec): VmLaunchSpec {
  return {
    ...spec,
    kernelPath: JAIL_PATHS.kernel,
    ...(spec.initrdPath ? { initrdPath: JAIL_PATHS.initrd } : {}),
    disks: spec.disks.map((d) => ({ ...d, path: JAIL_PATHS.disk(d.id) })),
    agentSocketPath: JAIL_PATHS.agentSocket,
    ...(spec.restore ? { restore: { statePath: JAIL_PATHS.restoreState, memoryPath: JAIL_PATHS.restoreMemory } } : {}),
  };
}

/**
 * Builds a fresh jail for `spec`: removes a leftover one, then places the VM's files in the chroot.
 * - Disks (read-write) are HARD-LINKED: the guest writes the very file banger keeps (a copy would be
 *   a fork of the disk); a disk on another filesystem than the jail is refused with the fix. They are
 *   chowned to uid:gid when that is another user (the jailer documents that the VMM user needs read
 *   and write access); the files stay in banger's VM directory.
 * - Kernel and initrd (read-only) are hard-linked when Firecracker's user can read them, else copied
 *   (a copy owned by that user); a cross-filesystem link falls back to a copy too.
 * - The log (when separate) is hard-linked so it stays readable at its usual path.
 */
export async function buildJail(o: JailerOptions, spec: VmLaunchSpec, layout: JailLayout, logPath?: string): Promise<void> {
  // A restore needs no kernel or initrd (the spec forbids a boot source before a load): only the saved state.
  const restore = spec.restore;
  await removeJail(o, layout);
  await mkdir(layout.chrootDir, { recursive: true, mode: 0o700 });
  const place = (jailPath: string) => hostPathOf(layout, jailPath);
  for (const d of spec.disks) {
    const to = place(JAIL_PATHS.disk(d.id));
    try {
      await link(d.path, to);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EXDEV') {
        throw new FirecrackerConfigError(
          `disk ${d.path} is on another filesystem than the jail ${layout.chrootDir}: it cannot be hard-linked into it, and a copy would not be the VM's disk; put the jail base dir on the state dir's filesystem`,
        );
      }
      throw e;
    }
    await giveTo(o, to);
  }
  if (restore) {
    await placeSnapshotFile(o, restore.statePath, place(JAIL_PATHS.restoreState));
    await placeSnapshotFile(o, restore.memoryPath, place(JAIL_PATHS.restoreMemory));
  } else {
    await placeReadOnly(o, spec.kernelPath, place(JAIL_PATHS.kernel));
    if (spec.initrdPath) await placeReadOnly(o, spec.initrdPath, place(JAIL_PATHS.initrd));
  }
  if (logPath) {
    const to = place(JAIL_PATHS.log);
    await link(logPath, to);
    await giveTo(o, to);
  }
}

/**
 * Removes a jail directory (after Firecracker exited): it may hold what a hostile guest's Firecracker
 * created in its chroot, which rm removes without following (links are unlinked, not followed).
 * Refuses anything that is not a directory below the jail base.
 */
export async function removeJail(o: Pick<JailerOptions, 'chrootBaseDir'>, layout: Pick<JailLayout, 'jailDir'>): Promise<void> {
  const rel = relative(o.chrootBaseDir, layout.jailDir);
  if (!rel || rel.startsWith('..') || isAbsolute(rel)) throw new Error(`refusing to remove ${layout.jailDir}: not under ${o.chrootBaseDir}`);
  const st = await lstat(layout.jailDir).catch(() => undefined);
  if (!st) return;
  if (!st.isDirectory()) throw new Error(`refusing to remove ${layout.jailDir}: not a directory`);
  await rm(layout.jailDir, { recursive: true, force: true });
}

async function placeReadOnly(o: JailerOptions, from: string, to: string): Promise<void> {
  const st = await stat(from);
  if (!st.isFile()) throw new FirecrackerConfigError(`${from} is not a regular file`);
  if (readableBy(o, st)) {
    try {
      await link(from, to);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      await unlink(to).catch(() => {});
    }
  }
  await copyFile(from, to, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
  await giveTo(o, to);
}

/**
 * A saved state or memory file for a restore: Firecracker only reads them (the memory file is mapped
 * private, copy-on-write), and one snapshot may start many clones at once, so it is HARD-LINKED,
 * never handed over: the owner stays, and when the jail's user cannot read it, the group becomes the
 * jail's gid with read permission only (g=r), so a jailed Firecracker can read but never change
 * the snapshot. Only a regular file is taken (a symlink is refused, not followed). On another
 * filesystem than the jail, a private copy owned by the jail's user takes its place (slower, same bytes).
 */
async function placeSnapshotFile(o: JailerOptions, from: string, to: string): Promise<void> {
  const st = await lstat(from);
  if (!st.isFile()) throw new FirecrackerConfigError(`snapshot file ${from} is not a regular file`);
  try {
    await link(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await copyFile(from, to, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
    await giveTo(o, to);
    return;
  }
  if (readableBy(o, st)) return;
  if (st.gid !== o.gid) await chown(to, st.uid, o.gid);
  await chmod(to, (st.mode & 0o7707) | 0o040);
}

function readableBy(o: Pick<JailerOptions, 'uid' | 'gid'>, st: { uid: number; gid: number; mode: number }): boolean {
  if (o.uid === 0) return true;
  return st.uid === o.uid ? (st.mode & 0o400) !== 0 : st.gid === o.gid ? (st.mode & 0o040) !== 0 : (st.mode & 0o004) !== 0;
}

/** chown to the jail's user when it is not already the owner (only root can, and only root runs the jailer). */
async function giveTo(o: JailerOptions, path: string): Promise<void> {
  const st = await lstat(path);
  if (st.uid !== o.uid || st.gid !== o.gid) await chown(path, o.uid, o.gid);
}

export interface JailerSettings {
  /** `jailer_bin`; empty: never jail. */
  jailerBin: string;
  /** `firecracker_bin`. */
  firecrackerBin: string;
  /** `vmm_user`; empty: Firecracker keeps the daemon's uid/gid (root). */
  vmmUser: string;
  chrootBaseDir: string;
  isRoot?: boolean;
}

/**
 * The jailer options for a daemon's config, or undefined when Firecracker runs unjailed: no
 * `jailer_bin` (empty or not found), or a daemon that is not root (only root can chroot, mknod and
 * change uid; an unprivileged daemon's Firecracker already runs as that user). Throws for a
 * vmm_user that does not exist: a misconfigured jail must not silently become no jail.
 */
export async function jailerOptionsFor(s: JailerSettings): Promise<JailerOptions | undefined> {
  if (!s.jailerBin || !(s.isRoot ?? process.geteuid?.() === 0)) return undefined;
  const jailerBin = await which(s.jailerBin);
  if (!jailerBin) return undefined;
  const execFile = await which(s.firecrackerBin);
  if (!execFile) return undefined;
  const ids = s.vmmUser ? lookupUser(s.vmmUser) : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  if (!ids) throw new FirecrackerConfigError(`vmm_user ${JSON.stringify(s.vmmUser)} does not exist in /etc/passwd`);
  return { jailerBin, execFile: resolve(execFile), chrootBaseDir: resolve(s.chrootBaseDir), ...ids };
}
