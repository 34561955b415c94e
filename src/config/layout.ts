import { isAbsolute, join, normalize } from 'node:path';
import { BangerError } from '../api/errors.js';

// node:fs and node:os through getBuiltinModule, not `import`: this module is on every CLI start,
// and on Node 24 an ESM import of node:fs reads all its exports, loading fs/promises and more
// (docs/performance.md).
const { chmodSync, lstatSync, mkdirSync } = process.getBuiltinModule('node:fs');
const { homedir, userInfo } = process.getBuiltinModule('node:os');

/**
 * Where banger keeps everything. XDG by default; BANGER_HOME relocates all of it under one
 * directory so tests (and users) can run many isolated daemons side by side.
 */
export interface Layout {
  configDir: string;
  configFile: string;
  stateDir: string;
  cacheDir: string;
  runtimeDir: string;
  socketPath: string;
  dbPath: string;
  lockPath: string;
  pidPath: string;
  logDir: string;
  logPath: string;
  daemonStderrPath: string;
  vmsStateDir: string;
  vmsRunDir: string;
  imagesDir: string;
  kernelsDir: string;
  stagingDir: string;
  /** Frozen and writable disk layers of VMs and snapshots (docs/snapshots.md). */
  layersDir: string;
  /** One directory per snapshot: its manifest, device state and RAM. */
  snapshotsDir: string;
  /**
   * Set when this is the system service's fixed runtime dir (`/run/banger`, see
   * resolveClientLayout): a client must not start a private daemon for it.
   */
  service?: true;
}

/** The system service's fixed paths (`banger system install|start`, docs/privileges.md). */
export const SERVICE_RUNTIME_DIR = '/run/banger';
export const SERVICE_HELPER_DIR = '/run/banger-root';
export const SERVICE_HELPER_SOCKET = '/run/banger-root/helper.sock';

/**
 * The daemon's layout. BANGER_HOME puts everything under one directory (and wins over everything
 * else: tests rely on it); otherwise XDG dirs, with the runtime dir (socket, pid file, VM sockets)
 * from BANGER_RUNTIME_DIR (absolute; the system service sets `/run/banger`), else
 * `$XDG_RUNTIME_DIR/banger`, else `/tmp/banger-<uid>`.
 */
export function resolveLayout(env: NodeJS.ProcessEnv = process.env): Layout {
  const home = env.BANGER_HOME;
  let configDir: string;
  let stateDir: string;
  let cacheDir: string;
  let runtimeDir: string;
  if (home) {
    configDir = join(home, 'config');
    stateDir = join(home, 'state');
    cacheDir = join(home, 'cache');
    runtimeDir = join(home, 'run');
  } else {
    const h = env.HOME || homedir();
    configDir = join(env.XDG_CONFIG_HOME || join(h, '.config'), 'banger');
    stateDir = join(env.XDG_STATE_HOME || join(h, '.local', 'state'), 'banger');
    cacheDir = join(env.XDG_CACHE_HOME || join(h, '.cache'), 'banger');
    runtimeDir = env.BANGER_RUNTIME_DIR
      ? absoluteRuntimeDir(env.BANGER_RUNTIME_DIR)
      : env.XDG_RUNTIME_DIR
        ? join(env.XDG_RUNTIME_DIR, 'banger')
        : `/tmp/banger-${userInfo().uid}`;
  }
  const logDir = join(stateDir, 'logs');
  return {
    configDir,
    configFile: env.BANGER_CONFIG || join(configDir, 'config.toml'),
    stateDir,
    cacheDir,
    runtimeDir,
    socketPath: join(runtimeDir, 'bangerd.sock'),
    dbPath: join(stateDir, 'banger.db'),
    lockPath: join(stateDir, 'bangerd.lock'),
    pidPath: join(runtimeDir, 'bangerd.pid'),
    logDir,
    logPath: join(logDir, 'bangerd.log'),
    daemonStderrPath: join(logDir, 'bangerd.stderr.log'),
    vmsStateDir: join(stateDir, 'vms'),
    vmsRunDir: join(runtimeDir, 'vms'),
    imagesDir: join(stateDir, 'images'),
    kernelsDir: join(stateDir, 'kernels'),
    stagingDir: join(stateDir, 'staging'),
    layersDir: join(stateDir, 'layers'),
    snapshotsDir: join(stateDir, 'snapshots'),
  };
}

function absoluteRuntimeDir(dir: string): string {
  if (!isAbsolute(dir) || dir.split('/').includes('..')) {
    throw new BangerError('bad_request', `BANGER_RUNTIME_DIR must be an absolute path without "..", got ${JSON.stringify(dir.slice(0, 200))}`, {
      fix: 'set BANGER_RUNTIME_DIR to an absolute directory such as /run/banger, or unset it',
    });
  }
  return normalize(dir).replace(/(.)\/+$/, '$1');
}

/**
 * True when `dir` is a real directory (not a link) owned by `uid`: the system service's runtime
 * dir is chowned to its owner, so for anyone else it is not "theirs" and they keep their own.
 */
export function isOwnedDir(dir: string, uid: number | undefined): boolean {
  if (uid === undefined) return false;
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && !st.isSymbolicLink() && st.uid === uid;
  } catch {
    return false;
  }
}

/**
 * The layout a client (CLI, SDK) talks to. In order: BANGER_HOME or BANGER_RUNTIME_DIR name it
 * explicitly; else the system service's socket under `/run/banger` when that directory exists and
 * is owned by the caller (the service's owner; XDG_RUNTIME_DIR plays no part, so it works from
 * cron, sudo -u or a login without a systemd session); else the per-user layout (today's default,
 * where the client may start a private daemon). The state, config and cache dirs stay the caller's
 * XDG dirs either way (the service's daemon uses the same ones: it runs as the owner, HOME=owner's).
 */
export function resolveClientLayout(env: NodeJS.ProcessEnv = process.env, serviceDir = SERVICE_RUNTIME_DIR): Layout {
  if (env.BANGER_HOME || env.BANGER_RUNTIME_DIR || !isOwnedDir(serviceDir, process.getuid?.())) return resolveLayout(env);
  return { ...resolveLayout({ ...env, BANGER_RUNTIME_DIR: serviceDir }), service: true };
}

/**
 * Creates a private directory, or checks an existing one is ours and not world-accessible.
 * The runtime dir holds the API socket: a directory another user controls would let them
 * impersonate the daemon.
 */
export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  const st = lstatSync(path);
  if (!st.isDirectory() || st.isSymbolicLink()) {
    throw new BangerError('precondition_failed', `${path} is not a directory`, { fix: `remove ${path} and retry` });
  }
  const uid = process.getuid?.() ?? st.uid;
  if (st.uid !== uid) {
    throw new BangerError('precondition_failed', `${path} is owned by uid ${st.uid}, not by you (uid ${uid})`, {
      fix: `remove ${path}, or set XDG_RUNTIME_DIR / BANGER_HOME to a directory you own`,
    });
  }
  if ((st.mode & 0o077) !== 0) chmodSync(path, 0o700);
}

export function ensureLayout(layout: Layout): void {
  for (const dir of [
    layout.stateDir,
    layout.cacheDir,
    layout.runtimeDir,
    layout.logDir,
    layout.vmsStateDir,
    layout.vmsRunDir,
    layout.imagesDir,
    layout.kernelsDir,
    layout.stagingDir,
    layout.layersDir,
    layout.snapshotsDir,
  ]) {
    ensurePrivateDir(dir);
  }
}
