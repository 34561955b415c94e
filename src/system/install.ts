import { existsSync, lstatSync, mkdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { BangerError } from '../api/errors.js';
import { SERVICE_HELPER_DIR, SERVICE_RUNTIME_DIR } from '../config/layout.js';
import { assertRootCode } from '../host/root-code.js';
import type { CommandRunner } from '../host/runner.js';
import { ensureSubordinateIds, ensureTunAccessible, lookupGroup, lookupOwner, removeSubordinateIds, writeFileAtomic } from './owner.js';
import { installedPaths, installTargets, systemdIsInit } from './paths.js';
import { DAEMON_UNIT, DEFAULT_BRIDGE, HELPER_UNIT, renderDaemonUnit, renderHelperUnit, type UnitSpec } from './units.js';

/**
 * `banger system install|uninstall`: the two units, and the owner's preparation. Everything goes
 * below `root` (`/` unless `--root DIR`, which tests use); systemctl runs only for the real root
 * and only when systemd is PID 1.
 */

export interface InstallManifest {
  owner: string;
  units: string[];
  /** Lines install appended to /etc/subuid and /etc/subgid (absent: the owner had a range already). */
  subuid?: string;
  subgid?: string;
  /** True when install added the owner to the kvm group. */
  kvmGroupAdded?: boolean;
}

export interface InstallOptions {
  owner: string;
  /** The one bridge the helper may act on (default banger0). */
  bridge?: string;
  root?: string;
  noStart?: boolean;
  runner: CommandRunner;
  say: (line: string) => void;
}

function readManifest(path: string): InstallManifest | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as InstallManifest;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new BangerError('precondition_failed', `${path} is unreadable: ${(e as Error).message}`, { fix: `remove ${path} and install again` });
  }
}

export function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new BangerError('precondition_failed', `${what} must run as root`, { fix: `sudo banger ${what}` });
  }
}

async function systemctl(runner: CommandRunner, args: string[]): Promise<void> {
  await runner.run('systemctl', args, { timeoutMs: 120_000 });
}

export async function installService(o: InstallOptions): Promise<InstallManifest> {
  const root = o.root ?? '/';
  const real = o.root === undefined;
  if (real) requireRoot('system install');
  const owner = await lookupOwner(o.owner, o.runner);
  const kvm = await lookupGroup('kvm', o.runner);
  const paths = installedPaths();
  if (real) {
    // The helper unit runs this tree's code as root, under ProtectHome=yes (no /home, /root, /run/user).
    assertRootCode(paths.root, paths.nodePath, 'banger system install');
    for (const p of [paths.root, paths.nodePath]) {
      if (/^\/(home|root|run\/user)(\/|$)/.test(p)) {
        throw new BangerError(
          'precondition_failed',
          `refusing to install units that run ${p}: the helper unit has ProtectHome=yes, so it cannot see /home, /root or /run/user`,
          {
            fix: 'install banger (and node) outside home directories, e.g. /opt/banger, root-owned and readable by the owner',
          },
        );
      }
    }
  }
  const spec: UnitSpec = {
    owner,
    nodePath: paths.nodePath,
    daemonScript: paths.daemonScript,
    helperScript: paths.helperScript,
    kvmGroup: !!kvm,
    bridge: o.bridge ?? DEFAULT_BRIDGE,
  };
  const units = { [HELPER_UNIT]: renderHelperUnit(spec), [DAEMON_UNIT]: renderDaemonUnit(spec) };
  const t = installTargets(root);
  const previous = readManifest(t.manifest);
  if (previous && previous.owner !== owner.name) {
    throw new BangerError('conflict', `banger is installed as a service for ${previous.owner}, not ${owner.name}`, {
      fix: 'banger system uninstall --purge first (one owner per host)',
    });
  }
  if (!existsSync(paths.helperScript)) o.say(`note: ${paths.helperScript} is not built yet; the helper unit names it`);

  mkdirSync(t.unitDir, { recursive: true, mode: 0o755 });
  const written: string[] = [];
  for (const [name, text] of Object.entries(units)) {
    const path = join(t.unitDir, name);
    writeFileAtomic(path, text, 0o644);
    written.push(path);
    o.say(`wrote ${path}`);
  }

  if (real) ensureTunAccessible(o.say);
  const subuid = ensureSubordinateIds(t.subuid, owner);
  const subgid = ensureSubordinateIds(t.subgid, owner);
  o.say(subuid ? `added ${subuid} to ${t.subuid}` : `${owner.name} already has subordinate uids in ${t.subuid}`);
  o.say(subgid ? `added ${subgid} to ${t.subgid}` : `${owner.name} already has subordinate gids in ${t.subgid}`);

  let kvmGroupAdded = false;
  if (!kvm) o.say('no kvm group on this host: nothing to join');
  else if (kvm.members.includes(owner.name) || kvm.gid === owner.gid) o.say(`${owner.name} is already in group kvm`);
  else if (!real) o.say(`--root: not adding ${owner.name} to the host's kvm group (run: usermod -aG kvm ${owner.name})`);
  else {
    await o.runner.run('usermod', ['-a', '-G', 'kvm', owner.name], { timeoutMs: 30_000 });
    kvmGroupAdded = true;
    o.say(`added ${owner.name} to group kvm`);
  }

  const manifest: InstallManifest = {
    owner: owner.name,
    units: written,
    ...((subuid ?? previous?.subuid) ? { subuid: subuid ?? previous?.subuid } : {}),
    ...((subgid ?? previous?.subgid) ? { subgid: subgid ?? previous?.subgid } : {}),
    ...(kvmGroupAdded || previous?.kvmGroupAdded ? { kvmGroupAdded: true } : {}),
  };
  mkdirSync(dirname(t.manifest), { recursive: true, mode: 0o755 });
  writeFileAtomic(t.manifest, `${JSON.stringify(manifest, null, 2)}\n`, 0o644);

  if (!real) return manifest;
  if (!systemdIsInit()) {
    o.say('systemd is not running this host (no /run/systemd/system): the units are installed for a later boot under systemd.');
    o.say(`start banger now without systemd: banger system start --owner ${owner.name}`);
    return manifest;
  }
  await systemctl(o.runner, ['daemon-reload']);
  if (o.noStart) {
    o.say(`installed; start with: systemctl enable --now ${HELPER_UNIT} ${DAEMON_UNIT}`);
    return manifest;
  }
  await systemctl(o.runner, ['enable', '--now', HELPER_UNIT, DAEMON_UNIT]);
  o.say(`enabled and started ${HELPER_UNIT} and ${DAEMON_UNIT}`);
  return manifest;
}

export interface UninstallOptions {
  root?: string;
  purge?: boolean;
  runner: CommandRunner;
  say: (line: string) => void;
  /** Stops banger's supervisor when it runs (purge removes the runtime dirs it uses). */
  stopSupervisor?: () => Promise<boolean>;
  /** Pids of processes still using the service's runtime dir (running VMs); purge refuses while any live. */
  vmmPids?: () => number[];
}

/**
 * Stops, disables and removes the units. `--purge` also removes what install created and nothing
 * else: the subuid/subgid lines and kvm membership install added (recorded in its manifest), the
 * manifest, and the runtime dirs /run/banger and /run/banger-root. The owner's state, config and
 * cache (VM disks, images) are never touched: they are the owner's data.
 */
export async function uninstallService(o: UninstallOptions): Promise<void> {
  const root = o.root ?? '/';
  const real = o.root === undefined;
  if (real) requireRoot('system uninstall');
  const t = installTargets(root);
  const manifest = readManifest(t.manifest);
  if (real && o.purge) {
    const busy = o.vmmPids?.() ?? [];
    if (busy.length) {
      throw new BangerError(
        'conflict',
        `VMs of the service are still running (pids ${busy.slice(0, 10).join(', ')}): purging ${SERVICE_RUNTIME_DIR} would orphan their sockets`,
        {
          fix: 'as the owner: banger vm stop --all, then uninstall again (or uninstall without --purge)',
        },
      );
    }
  }
  if (real && systemdIsInit() && existsSync(join(t.unitDir, DAEMON_UNIT))) {
    await o.runner.run('systemctl', ['disable', '--now', DAEMON_UNIT, HELPER_UNIT], { timeoutMs: 120_000, allowFailure: true });
    o.say(`stopped and disabled ${DAEMON_UNIT} and ${HELPER_UNIT}`);
  }
  for (const name of [DAEMON_UNIT, HELPER_UNIT]) {
    const path = join(t.unitDir, name);
    if (existsSync(path)) {
      rmSync(path);
      o.say(`removed ${path}`);
    }
  }
  if (real && systemdIsInit()) await o.runner.run('systemctl', ['daemon-reload'], { timeoutMs: 60_000, allowFailure: true });
  if (!o.purge) {
    o.say('kept: subordinate ids, group membership and the runtime dirs (--purge removes what install added)');
    return;
  }
  if (manifest?.subuid && removeSubordinateIds(t.subuid, manifest.subuid)) o.say(`removed ${manifest.subuid} from ${t.subuid}`);
  if (manifest?.subgid && removeSubordinateIds(t.subgid, manifest.subgid)) o.say(`removed ${manifest.subgid} from ${t.subgid}`);
  if (real && manifest?.kvmGroupAdded) {
    await o.runner.run('gpasswd', ['-d', manifest.owner, 'kvm'], { timeoutMs: 30_000, allowFailure: true });
    o.say(`removed ${manifest.owner} from group kvm`);
  }
  rmSync(t.manifest, { force: true });
  if (real) {
    if (await o.stopSupervisor?.()) o.say('stopped the banger supervisor');
    for (const dir of [SERVICE_RUNTIME_DIR, SERVICE_HELPER_DIR]) {
      if (await removeAsItsOwner(dir, o.runner)) o.say(`removed ${dir}`);
    }
  }
  if (manifest) o.say(`kept: ${manifest.owner}'s banger state, config and cache (VM disks, images) in their home; remove them as that user if unwanted`);
}

/**
 * Removes a runtime dir. /run/banger belongs to the owner, who could swap a directory inside it for
 * a link while a recursive delete walks it: its contents are removed AS its owner, and root only
 * removes the (then empty) directory entry itself, which sits in root's /run. A link in its place
 * is unlinked, never followed.
 */
export async function removeAsItsOwner(dir: string, runner: CommandRunner): Promise<boolean> {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(dir);
  } catch {
    return false;
  }
  if (!st.isDirectory()) {
    rmSync(dir, { force: true });
    return true;
  }
  if (st.uid === 0) {
    rmSync(dir, { recursive: true, force: true });
    return true;
  }
  // rm cannot remove `dir` itself as the owner (/run is root's): that part fails, by design.
  await runner.run('setpriv', [`--reuid=${st.uid}`, `--regid=${st.gid}`, '--clear-groups', 'rm', '-rf', '--one-file-system', '--', dir], {
    timeoutMs: 120_000,
    allowFailure: true,
  });
  rmdirSync(dir);
  return true;
}
