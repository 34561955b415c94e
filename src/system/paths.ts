import { existsSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SERVICE_HELPER_DIR } from '../config/layout.js';
import { type CommandRunner, ProcessRunner } from '../host/runner.js';

/** The installed banger tree (this file is dist/src/system/paths.js) and what the service runs from it. */
export function installedPaths(): { root: string; nodePath: string; daemonScript: string; helperScript: string; supervisorEntry: string } {
  const root = realpathSync(fileURLToPath(new URL('../../../', import.meta.url)));
  return {
    root,
    nodePath: realpathSync(process.execPath),
    daemonScript: join(root, 'bin', 'bangerd.js'),
    helperScript: join(root, 'bin', 'bangerd-root.js'),
    supervisorEntry: fileURLToPath(new URL('./supervisor-main.js', import.meta.url)),
  };
}

/** Where `system install` writes, below `root` (`/` normally, a scratch dir in tests). */
export function installTargets(root = '/') {
  return {
    unitDir: join(root, 'etc', 'systemd', 'system'),
    subuid: join(root, 'etc', 'subuid'),
    subgid: join(root, 'etc', 'subgid'),
    /** What install created (so uninstall --purge removes exactly that). */
    manifest: join(root, 'etc', 'banger', 'system-install.json'),
  };
}

/** The supervisor's files (`banger system start` without systemd). */
export const SUPERVISOR = {
  pidFile: join(SERVICE_HELPER_DIR, 'supervisor.pid'),
  stateFile: join(SERVICE_HELPER_DIR, 'supervisor.json'),
  logDir: '/var/log/banger',
  logFile: '/var/log/banger/supervisor.log',
};

/** True when systemd runs this host (PID 1): the test `sd_booted()` uses. */
export const systemdIsInit = (): boolean => existsSync('/run/systemd/system');

/** The runner `banger system` uses on this host (systemctl, getent, usermod, gpasswd). */
export const hostRunner = (): CommandRunner => new ProcessRunner();
