import { constants, existsSync, readFileSync } from 'node:fs';
import { access, stat, statfs } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { defaultConfig, loadConfig } from '../config/config.js';
import type { Layout } from '../config/layout.js';
import { readKvmProbeCache } from '../host/kvm-cache.js';
import { ProcessRunner } from '../host/runner.js';
import { hasInclude } from '../host/ssh-config.js';
import { which } from '../host/which.js';
import { checkMigrations } from '../store/db.js';
import { inspectUnits, serviceStatus } from '../system/control.js';
import type { HostProbe, RunMode } from './checks.js';

/** The development daemon of this layout: the pid its pid file names, when that process lives (and its uid). */
function devDaemon(pidPath: string): { pid: number; uid: number } | undefined {
  try {
    const pid = Number(readFileSync(pidPath, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    const uid = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return uid === undefined ? undefined : { pid, uid: Number(uid) };
  } catch {
    return undefined;
  }
}

export function realHostProbe(layout: Layout): HostProbe {
  const runner = new ProcessRunner();
  let cfg: ReturnType<typeof loadConfig> | undefined;
  let cfgError: string | undefined;
  try {
    cfg = loadConfig(layout);
  } catch (e) {
    cfgError = (e as Error).message;
  }
  return {
    arch: process.arch,
    nodeVersion: process.version,
    uid: process.getuid?.() ?? -1,
    which,
    versionOf: async (cmd, args) => {
      try {
        const r = await runner.run(cmd, args, { timeoutMs: 5000, allowFailure: true });
        return (r.stdout || r.stderr).trim().split('\n')[0];
      } catch {
        return undefined;
      }
    },
    deviceAccess: async (path) => {
      if (!existsSync(path)) return 'missing';
      try {
        await access(path, constants.R_OK | constants.W_OK);
        return 'ok';
      } catch {
        return 'no-access';
      }
    },
    passwordlessSudo: async () => {
      try {
        return (await runner.run('sudo', ['-n', 'true'], { timeoutMs: 5000, allowFailure: true })).code === 0;
      } catch {
        return false;
      }
    },
    freeBytes: async (path) => {
      let p = path;
      while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
      try {
        const s = await statfs(p);
        return s.bavail * s.bsize;
      } catch {
        return undefined;
      }
    },
    migrations: () => {
      try {
        return checkMigrations(layout.dbPath);
      } catch (e) {
        return { error: (e as Error).message };
      }
    },
    config: () => (cfgError ? { ok: false, error: cfgError } : { ok: true, path: layout.configFile, exists: existsSync(layout.configFile) }),
    kvmProbe: () => readKvmProbeCache(layout.cacheDir, readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()),
    sshInclude: () => {
      try {
        const text = readFileSync(join(process.env.HOME || homedir(), '.ssh', 'config'), 'utf8');
        return hasInclude(text, join(layout.stateDir, 'ssh', 'config'));
      } catch {
        return false;
      }
    },
    runMode: async () => {
      const units = await inspectUnits(runner);
      const s = await serviceStatus(runner);
      const base: RunMode = { mode: 'none', ...(units ? { units } : {}) };
      if (s.mode === 'systemd') return { ...base, mode: 'systemd', ...(s.owner ? { owner: s.owner } : {}) };
      if (s.mode === 'supervisor') return { ...base, mode: 'supervisor', pid: s.supervisor?.pid as number, ...(s.owner ? { owner: s.owner } : {}) };
      const dev = devDaemon(layout.pidPath);
      return dev ? { ...base, mode: 'dev', ...dev } : base;
    },
    qemuBin: (cfg ?? defaultConfig()).qemu_bin,
    firecrackerBin: (cfg ?? defaultConfig()).firecracker_bin,
    stateDir: layout.stateDir,
    fileSync: cfg?.file_sync ?? [],
    homeDir: process.env.HOME || homedir(),
    hostPathInfo: async (path) => {
      try {
        const s = await stat(path);
        return { type: s.isDirectory() ? 'dir' : s.isFile() ? 'file' : 'other', mode: s.mode & 0o7777 };
      } catch {
        return undefined;
      }
    },
  };
}
