import { spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BangerError } from '../api/errors.js';
import { SERVICE_HELPER_DIR, SERVICE_HELPER_SOCKET, SERVICE_RUNTIME_DIR } from '../config/layout.js';
import { validateBridgeName } from '../host/netplan.js';
import { assertRootCode } from '../host/root-code.js';
import type { CommandRunner } from '../host/runner.js';
import { which } from '../host/which.js';
import { BANGERD_NODE_FLAGS } from '../util/daemon-flags.js';
import { requireRoot } from './install.js';
import { ensureTunAccessible, lookupOwner, writeFileAtomic } from './owner.js';
import { installedPaths, installTargets, SUPERVISOR, systemdIsInit } from './paths.js';
import type { ChildSpec, SupervisorSpec } from './supervisor.js';
import { DAEMON_UNIT, DEFAULT_BRIDGE, HELPER_CAPABILITIES, HELPER_UNIT, type ServiceOwner, unitValue } from './units.js';

/** `banger system start|stop|restart|status`: banger's supervisor, or systemd when it runs the units. */

const DAEMON_SOCKET = join(SERVICE_RUNTIME_DIR, 'bangerd.sock');
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const LOG_ROTATE_BYTES = 10 * 1024 * 1024;

/** Alive and not a zombie; a process of another user (EPERM, e.g. `system status` as the owner) counts. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    return !/^\d+ \(.*\) Z /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const cmdlineOf = (pid: number): string[] => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
};

/** The running supervisor's pid (alive and really banger's supervisor), else undefined. */
export function supervisorPid(): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(SUPERVISOR.pidFile, 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 1 || !isAlive(pid)) return undefined;
  return cmdlineOf(pid).some((a) => a.endsWith('/supervisor-main.js')) ? pid : undefined;
}

function readSupervisorState(): SupervisorSpec | undefined {
  try {
    return JSON.parse(readFileSync(SUPERVISOR.stateFile, 'utf8')) as SupervisorSpec;
  } catch {
    return undefined;
  }
}

const isSocket = (path: string): boolean => {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
};

/**
 * A directory of the layout, made or checked: a real directory (never a link) owned by `uid`, mode
 * `mode`. An existing one owned by root or by `uid` is taken over; anyone else's is refused.
 */
function prepareDir(path: string, uid: number, gid: number, mode: number): void {
  const st = lstatSync(path);
  if (!st.isDirectory() || st.isSymbolicLink()) {
    throw new BangerError('precondition_failed', `${path} is not a directory`, { fix: `remove ${path} and start again` });
  }
  if (st.uid !== 0 && st.uid !== uid) {
    throw new BangerError('precondition_failed', `${path} belongs to uid ${st.uid}, not to the service owner (uid ${uid}) or root`, {
      fix: `remove ${path} (another owner's service left it) and start again`,
    });
  }
  chownSync(path, uid, gid);
  chmodSync(path, mode);
}

function ensureDir(path: string, uid: number, gid: number, mode: number): void {
  try {
    mkdirSync(path, { mode });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  prepareDir(path, uid, gid, mode);
}

/** The two children, with the same layout and environment as the systemd units. */
export function childSpecs(
  owner: ServiceOwner,
  opts: { nodePath: string; daemonScript: string; helper: string[]; setpriv: string; bridge: string },
): ChildSpec[] {
  return [
    {
      name: 'bangerd-root',
      // The unit's sandbox, as far as setpriv goes: the same capability bounding set, no new
      // privileges, no inheritable capabilities.
      argv: [
        opts.setpriv,
        `--bounding-set=-all,${HELPER_CAPABILITIES.map((c) => `+${c.slice(4).toLowerCase()}`).join(',')}`,
        '--inh-caps=-all',
        '--no-new-privs',
        '--',
        ...opts.helper,
        '--bridge',
        validateBridgeName(opts.bridge),
        '--owner',
        owner.name,
        '--socket',
        SERVICE_HELPER_SOCKET,
      ],
      env: { PATH, HOME: '/root', LANG: 'C.UTF-8' },
      cwd: '/',
    },
    {
      name: 'bangerd',
      // setpriv execs bangerd itself (the supervised pid is bangerd's, signals reach it directly)
      // after setgid, initgroups (so kvm membership counts) and setuid; node's own spawn({uid})
      // would drop every supplementary group instead.
      argv: [
        opts.setpriv,
        `--reuid=${owner.uid}`,
        `--regid=${owner.gid}`,
        '--init-groups',
        '--inh-caps=-all',
        '--',
        opts.nodePath,
        ...BANGERD_NODE_FLAGS,
        opts.daemonScript,
        '--foreground',
      ],
      env: {
        PATH,
        HOME: owner.home,
        USER: owner.name,
        LOGNAME: owner.name,
        LANG: 'C.UTF-8',
        BANGER_RUNTIME_DIR: SERVICE_RUNTIME_DIR,
        BANGER_ROOT_HELPER: SERVICE_HELPER_SOCKET,
      },
      cwd: owner.home,
    },
  ];
}

export interface StartOptions {
  owner: string;
  /** The one bridge the helper may act on (default banger0, the default `bridge_name`). */
  bridge?: string;
  /** The helper's program and leading arguments (default: node bin/bangerd-root.js). Tests pass a fake. */
  helper?: string[];
  runner: CommandRunner;
  say: (line: string) => void;
  timeoutMs?: number;
}

async function systemdActive(runner: CommandRunner, unit: string): Promise<string | undefined> {
  if (!systemdIsInit()) return undefined;
  const r = await runner.run('systemctl', ['is-active', unit], { allowFailure: true, timeoutMs: 10_000 });
  return r.stdout.trim() || undefined;
}

export async function startSupervisor(o: StartOptions): Promise<SupervisorSpec> {
  requireRoot('system start');
  const owner = await lookupOwner(o.owner, o.runner);
  const running = supervisorPid();
  if (running) {
    const st = readSupervisorState();
    throw new BangerError('conflict', `banger's supervisor already runs (pid ${running}, owner ${st?.owner.name ?? '?'})`, {
      fix: 'banger system status; banger system restart (or stop, then start with another --owner)',
    });
  }
  if ((await systemdActive(o.runner, DAEMON_UNIT)) === 'active') {
    throw new BangerError('conflict', `${DAEMON_UNIT} runs under systemd`, { fix: `systemctl status ${DAEMON_UNIT}` });
  }
  const setpriv = await which('setpriv');
  if (!setpriv) throw new BangerError('missing_dependency', 'setpriv is not installed (it starts bangerd as the owner)', { fix: 'apt-get install util-linux' });
  const paths = installedPaths();
  // The supervisor and the helper run this tree's code as root.
  assertRootCode(paths.root, paths.nodePath, 'banger system start');
  const helper = o.helper ?? [paths.nodePath, paths.helperScript];
  if (!existsSync(helper[0] as string) || (o.helper === undefined && !existsSync(paths.helperScript))) {
    throw new BangerError('missing_dependency', `the root helper ${helper.join(' ')} is not installed`, {
      fix: 'build banger (npm run build) or reinstall it',
    });
  }

  ensureTunAccessible(o.say);
  ensureDir(SERVICE_HELPER_DIR, 0, 0, 0o755);
  ensureDir(SERVICE_RUNTIME_DIR, owner.uid, owner.gid, 0o700);
  ensureDir(SUPERVISOR.logDir, 0, 0, 0o700);
  rmSync(SUPERVISOR.pidFile, { force: true }); // stale: no supervisor runs (checked above)
  try {
    if (statSync(SUPERVISOR.logFile).size > LOG_ROTATE_BYTES) renameSync(SUPERVISOR.logFile, `${SUPERVISOR.logFile}.1`);
  } catch {
    /* no log yet */
  }

  const spec: SupervisorSpec = {
    owner,
    helperSocket: SERVICE_HELPER_SOCKET,
    helper,
    daemonSocket: DAEMON_SOCKET,
    children: childSpecs(owner, { nodePath: paths.nodePath, daemonScript: paths.daemonScript, helper, setpriv, bridge: o.bridge ?? DEFAULT_BRIDGE }),
  };
  writeFileAtomic(SUPERVISOR.stateFile, `${JSON.stringify(spec, null, 2)}\n`, 0o644);

  const fd = openSync(SUPERVISOR.logFile, 'a', 0o600);
  const logStart = fstatSync(fd).size;
  let exited: number | null | undefined;
  try {
    // Its own session (detached): a terminal's hangup or ^C never reaches it or its children.
    const child = spawn(paths.nodePath, [paths.supervisorEntry, SUPERVISOR.stateFile], {
      detached: true,
      stdio: ['ignore', fd, fd],
      cwd: '/',
      env: { PATH, LANG: 'C.UTF-8' },
    });
    child.on('exit', (code) => {
      exited = code;
    });
    child.unref();
  } finally {
    closeSync(fd);
  }
  const deadline = Date.now() + (o.timeoutMs ?? 60_000);
  const logTail = () => {
    try {
      return readFileSync(SUPERVISOR.logFile).subarray(logStart).toString('utf8').trim().split('\n').slice(-8).join('\n');
    } catch {
      return '';
    }
  };
  while (!(isSocket(SERVICE_HELPER_SOCKET) && isSocket(DAEMON_SOCKET))) {
    if (exited !== undefined || Date.now() > deadline) {
      const why = exited !== undefined ? `the supervisor exited (${exited})` : `${SERVICE_HELPER_SOCKET} and ${DAEMON_SOCKET} did not appear in time`;
      throw new BangerError('unavailable', `banger did not start: ${why}\n${logTail()}`, { fix: `read ${SUPERVISOR.logFile}; banger system stop cleans up` });
    }
    await sleep(50);
  }
  const state = readSupervisorState() ?? spec;
  o.say(`banger runs for ${owner.name}: supervisor pid ${state.pid ?? '?'}, bangerd-root (root) and bangerd (uid ${owner.uid})`);
  o.say(`API socket ${DAEMON_SOCKET}; log ${SUPERVISOR.logFile}`);
  return state;
}

/** Stops the supervisor (and so both children); true when one was running. VMs keep running. */
export async function stopSupervisor(timeoutMs = 90_000): Promise<boolean> {
  requireRoot('system stop');
  const pid = supervisorPid();
  if (!pid) {
    // A supervisor killed with SIGKILL leaves its children: stop the ones its state names.
    const st = readSupervisorState();
    let any = false;
    for (const child of Object.values(st?.pids ?? {})) {
      if (child && isAlive(child) && cmdlineOf(child).some((a) => /bangerd|setpriv/.test(a))) {
        process.kill(child, 'SIGTERM');
        any = true;
      }
    }
    rmSync(SUPERVISOR.stateFile, { force: true });
    rmSync(SUPERVISOR.pidFile, { force: true });
    return any;
  }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline)
      throw new BangerError('timeout', `the supervisor (pid ${pid}) did not stop within ${timeoutMs / 1000}s`, { fix: `kill -9 ${pid}` });
    await sleep(50);
  }
  return true;
}

export interface ServiceStatus {
  mode: 'systemd' | 'supervisor' | 'none';
  owner?: string;
  units: { installed: boolean; owner?: string; enabled?: string; active?: string; helperActive?: string; paths: string[] };
  supervisor?: { pid: number; pids: Partial<Record<string, number>> };
  helperSocket: { path: string; present: boolean };
  daemonSocket: { path: string; present: boolean };
  runtimeDirOwnerUid?: number;
}

function ownerUidOf(path: string): number | undefined {
  try {
    return lstatSync(path).uid;
  } catch {
    return undefined;
  }
}

/** What runs (read-only, any user: the pid and state files are world-readable). */
export async function serviceStatus(runner: CommandRunner, root = '/'): Promise<ServiceStatus> {
  const t = installTargets(root);
  const unitPaths = [join(t.unitDir, HELPER_UNIT), join(t.unitDir, DAEMON_UNIT)];
  const installed = unitPaths.every((p) => existsSync(p));
  let unitOwner: string | undefined;
  try {
    unitOwner = unitValue(readFileSync(unitPaths[1] as string, 'utf8'), 'User');
  } catch {
    /* not installed */
  }
  const units: ServiceStatus['units'] = { installed, paths: unitPaths, ...(unitOwner ? { owner: unitOwner } : {}) };
  if (installed && systemdIsInit()) {
    const r = await runner.run('systemctl', ['is-enabled', DAEMON_UNIT], { allowFailure: true, timeoutMs: 10_000 });
    units.enabled = r.stdout.trim() || 'unknown';
    units.active = (await systemdActive(runner, DAEMON_UNIT)) ?? 'unknown';
    units.helperActive = (await systemdActive(runner, HELPER_UNIT)) ?? 'unknown';
  }
  const pid = supervisorPid();
  const st = pid ? readSupervisorState() : undefined;
  const mode = units.active === 'active' ? 'systemd' : pid ? 'supervisor' : 'none';
  const owner = mode === 'systemd' ? unitOwner : st?.owner.name;
  const runtimeDirOwnerUid = ownerUidOf(SERVICE_RUNTIME_DIR);
  return {
    mode,
    ...(owner ? { owner } : {}),
    units,
    ...(pid ? { supervisor: { pid, pids: st?.pids ?? {} } } : {}),
    helperSocket: { path: SERVICE_HELPER_SOCKET, present: isSocket(SERVICE_HELPER_SOCKET) },
    daemonSocket: { path: DAEMON_SOCKET, present: isSocket(DAEMON_SOCKET) },
    ...(runtimeDirOwnerUid !== undefined ? { runtimeDirOwnerUid } : {}),
  };
}

/** Restarts whichever runs the service: systemd's units, or the supervisor with the same owner. */
export async function restartService(o: { runner: CommandRunner; say: (line: string) => void; helper?: string[] }): Promise<void> {
  requireRoot('system restart');
  const s = await serviceStatus(o.runner);
  if (s.units.installed && systemdIsInit()) {
    await o.runner.run('systemctl', ['restart', HELPER_UNIT, DAEMON_UNIT], { timeoutMs: 120_000 });
    o.say(`restarted ${HELPER_UNIT} and ${DAEMON_UNIT}`);
    return;
  }
  const st = readSupervisorState();
  if (!s.supervisor || !st) {
    throw new BangerError('unavailable', 'the banger service is not running', { fix: 'banger system start --owner USER' });
  }
  const helper = o.helper ?? st.helper;
  await stopSupervisor();
  await startSupervisor({ owner: st.owner.name, runner: o.runner, say: o.say, ...(helper ? { helper } : {}) });
}

/** Processes whose argv names the service's VM run dir (running VMs), for purge's refusal. */
export function serviceVmmPids(): number[] {
  const needle = join(SERVICE_RUNTIME_DIR, 'vms');
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    if (cmdlineOf(Number(e)).some((a) => a.includes(needle))) out.push(Number(e));
  }
  return out;
}

export interface UnitInspection {
  owner?: string;
  ownerExists: boolean;
  /** Both units are there (not one left over). */
  complete: boolean;
  /** Absolute paths the units' ExecStart lines name that do not exist. */
  missingPaths: string[];
}

/** Checks installed units (doctor): their owner still exists and the programs they run are there. */
export async function inspectUnits(runner: CommandRunner, root = '/'): Promise<UnitInspection | undefined> {
  const t = installTargets(root);
  const texts: string[] = [];
  for (const name of [HELPER_UNIT, DAEMON_UNIT]) {
    try {
      texts.push(readFileSync(join(t.unitDir, name), 'utf8'));
    } catch {
      /* absent */
    }
  }
  if (texts.length === 0) return undefined;
  const owner = texts.map((x) => unitValue(x, 'User')).find(Boolean);
  let ownerExists = false;
  if (owner)
    ownerExists = await lookupOwner(owner, runner).then(
      () => true,
      () => false,
    );
  const missingPaths = texts
    .flatMap((x) => (unitValue(x, 'ExecStart') ?? '').split(' '))
    .filter((a) => a.startsWith('/') && !a.startsWith('/run/') && !existsSync(a));
  return { ...(owner ? { owner } : {}), ownerExists, complete: texts.length === 2, missingPaths };
}
