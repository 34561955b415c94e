import { chmodSync, lstatSync, mkdirSync } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import { join } from 'node:path';
import { BangerError } from '../api/errors.js';

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
}

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
    runtimeDir = env.XDG_RUNTIME_DIR ? join(env.XDG_RUNTIME_DIR, 'banger') : `/tmp/banger-${userInfo().uid}`;
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
  };
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
  ]) {
    ensurePrivateDir(dir);
  }
}
