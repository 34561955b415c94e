import { randomBytes } from 'node:crypto';
import { appendFile, chmod, copyFile, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { type CommandRunner, ProcessRunner } from '../host/runner.js';
import { buildCpioGz, type CpioEntry, normalizeArchivePath } from './cpio.js';
import { BOOT_MODULES, type ModuleResolution, resolveModules, VSOCK_MODULES } from './kernel-modules.js';

/**
 * banger's initramfs = a base archive per kernel (banger-init as /init + the virtio modules) and,
 * appended at each VM start, a small payload archive under /banger/ (agent, its unit, hostname,
 * host keys, config). The kernel unpacks concatenated archives in order, so per-VM files reach
 * the guest without the host ever mounting its disk. See agent/banger-init.c for the guest side.
 */

export const AGENT_GUEST_PATH = '/usr/local/bin/banger-agent';
export const AGENT_UNIT_NAME = 'banger-agent.service';
export const LOAD_ORDER_PATH = 'lib/modules/load-order';

/*
 * No ordering on udev or sysinit.target: the agent is a static binary that needs only /proc and
 * its port (devtmpfs creates /dev/vportNpM; the agent finds it through /sys without udev's
 * symlink) and retries the port itself. Measured under TCG: it starts ~0.3 s after systemd
 * instead of ~5 s (behind remount-fs → sysusers → tmpfiles-setup-dev → udevd).
 */
export const AGENT_UNIT = `[Unit]
Description=banger guest agent
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=${AGENT_GUEST_PATH}
# Supervised guest processes (docs/processes.md) are the agent's descendants and must outlive a
# restart of the agent: stop only the agent itself.
KillMode=process
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`;

/** systemd only sees /dev/virtio-ports/<name> as a device unit when udev tags it. */
export const AGENT_UDEV_RULE = 'SUBSYSTEM=="virtio-ports", TAG+="systemd"\n';

export interface BaseInitramfsOptions {
  /** Directory holding lib/modules/<version>/ (an extracted kernel package or banger's kernel dir). */
  kernelTree: string;
  version: string;
  /** The static banger-init binary. */
  initBinary: string;
  outPath: string;
  runner?: CommandRunner;
  required?: readonly string[];
  optional?: readonly string[];
}

export interface BaseInitramfsResult {
  outPath: string;
  bytes: number;
  /** Modules in load order. */
  modules: string[];
  resolution: ModuleResolution | undefined;
}

export interface InitramfsModule {
  /** Relative to lib/modules/<version>/, ending in .ko. */
  relPath: string;
  data: Buffer;
}

/** The base archive's tree (pure): /init, empty mount points, /dev/console, the modules, their load order. */
export function baseInitramfsEntries(o: { init: Buffer; version: string; modules: readonly InitramfsModule[] }): CpioEntry[] {
  const version = normalizeArchivePath(o.version);
  if (version.includes('/')) throw new Error(`bad kernel version "${o.version}"`);
  const entries: CpioEntry[] = [
    { type: 'file', path: 'init', mode: 0o755, data: o.init },
    { type: 'dir', path: 'dev', mode: 0o755 },
    // The kernel opens /dev/console for /init's stdio before devtmpfs exists.
    { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { type: 'dir', path: 'proc', mode: 0o555 },
    { type: 'dir', path: 'sys', mode: 0o555 },
    { type: 'dir', path: 'newroot', mode: 0o755 },
    { type: 'dir', path: 'lib/modules', mode: 0o755 },
    {
      type: 'file',
      path: LOAD_ORDER_PATH,
      mode: 0o644,
      data: o.modules.map((m) => `${version}/${normalizeArchivePath(m.relPath)}\n`).join(''),
    },
  ];
  for (const m of o.modules) {
    entries.push({ type: 'file', path: `lib/modules/${version}/${normalizeArchivePath(m.relPath)}`, mode: 0o644, data: m.data });
  }
  return entries;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes next to the target and renames, so readers never see a partial file. */
async function writeAtomic(outPath: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(dirname(outPath), `.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await write(tmp);
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Builds the base initramfs of one kernel. A kernel without lib/modules/<version> (everything
 * built in) gets banger-init alone, with an empty load order.
 */
export async function buildBaseInitramfs(o: BaseInitramfsOptions): Promise<BaseInitramfsResult> {
  const init = await readFile(o.initBinary);
  const modulesDir = join(o.kernelTree, 'lib', 'modules', o.version);
  let resolution: ModuleResolution | undefined;
  if (await exists(modulesDir)) {
    const tmp = await mkdtemp(join(tmpdir(), 'banger-modules-'));
    try {
      resolution = await resolveModules({
        modulesDir,
        version: o.version,
        required: o.required ?? BOOT_MODULES,
        optional: o.optional ?? VSOCK_MODULES,
        runner: o.runner ?? new ProcessRunner(),
        tmpDir: tmp,
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  const modules = resolution?.modules ?? [];
  // Level 9: built once per kernel, unpacked at every boot.
  const archive = buildCpioGz(baseInitramfsEntries({ init, version: o.version, modules }), 9);
  await writeAtomic(o.outPath, (tmp) => writeFile(tmp, archive, { mode: 0o644 }));
  return { outPath: o.outPath, bytes: archive.length, modules: modules.map((m) => m.name), resolution };
}

export type PayloadExtra =
  | { path: string; mode: number; content: Buffer | string }
  | { path: string; target: string }
  | { path: string; mode: number; dir: true };

export interface PayloadOptions {
  /** The static agent binary (a path, or its bytes). */
  agentBinary: string | Buffer;
  hostname: string;
  /** Installed into the guest's root, e.g. SSH host keys; absolute guest paths. */
  extraFiles?: readonly PayloadExtra[];
  /** /banger/config keys for banger-init: work_disk, work_mount, agent. */
  config?: Readonly<Record<string, string | undefined>>;
}

const CONFIG_KEY = /^[a-z][a-z0-9_]*$/;

export function renderPayloadConfig(config: Readonly<Record<string, string | undefined>>): string {
  const lines: string[] = [];
  for (const [k, v] of Object.entries(config)) {
    if (v === undefined) continue;
    if (!CONFIG_KEY.test(k)) throw new Error(`payload config: bad key "${k}"`);
    if (/[\r\n\0]/.test(v)) throw new Error(`payload config: value of ${k} contains a line break or NUL`);
    lines.push(`${k}=${v}\n`);
  }
  return lines.join('');
}

/** Guest path → archive path under banger/root/ (rejects relative paths and ".."). */
const underRoot = (guestPath: string): string => {
  if (!guestPath.startsWith('/')) throw new Error(`payload: guest path "${guestPath}" is not absolute`);
  return `banger/root/${normalizeArchivePath(guestPath)}`;
};

/** The per-VM payload's tree (pure). */
export function payloadEntries(o: {
  agent: Buffer;
  hostname: string;
  extraFiles?: readonly PayloadExtra[];
  config?: Readonly<Record<string, string | undefined>>;
}): CpioEntry[] {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(o.hostname)) throw new Error(`payload: "${o.hostname}" is not a valid hostname`);
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'banger', mode: 0o700 },
    { type: 'file', path: 'banger/config', mode: 0o600, data: renderPayloadConfig({ agent: AGENT_GUEST_PATH, ...o.config }) },
    { type: 'file', path: underRoot(AGENT_GUEST_PATH), mode: 0o755, data: o.agent },
    { type: 'file', path: underRoot(`/etc/systemd/system/${AGENT_UNIT_NAME}`), mode: 0o644, data: AGENT_UNIT },
    {
      type: 'symlink',
      path: underRoot(`/etc/systemd/system/multi-user.target.wants/${AGENT_UNIT_NAME}`),
      target: `/etc/systemd/system/${AGENT_UNIT_NAME}`,
    },
    { type: 'file', path: underRoot('/etc/udev/rules.d/90-banger-agent.rules'), mode: 0o644, data: AGENT_UDEV_RULE },
    { type: 'file', path: underRoot('/etc/hostname'), mode: 0o644, data: `${o.hostname}\n` },
  ];
  for (const f of o.extraFiles ?? []) {
    if ('target' in f) entries.push({ type: 'symlink', path: underRoot(f.path), target: f.target });
    else if ('dir' in f) entries.push({ type: 'dir', path: underRoot(f.path), mode: f.mode });
    else entries.push({ type: 'file', path: underRoot(f.path), mode: f.mode, data: f.content });
  }
  return entries;
}

/** The per-VM payload as a gzipped cpio archive, to append to the kernel's base initramfs. */
export async function buildPayloadCpio(o: PayloadOptions): Promise<Buffer> {
  const agent = typeof o.agentBinary === 'string' ? await readFile(o.agentBinary) : o.agentBinary;
  return buildCpioGz(
    payloadEntries({
      agent,
      hostname: o.hostname,
      ...(o.extraFiles ? { extraFiles: o.extraFiles } : {}),
      ...(o.config ? { config: o.config } : {}),
    }),
  );
}

/** The VM's initrd: base initramfs followed by its payload (the VM dir is private: 0600). */
export async function writeVmInitrd(o: { baseInitramfs: string; payload: Buffer; outPath: string }): Promise<void> {
  await writeAtomic(o.outPath, async (tmp) => {
    await copyFile(o.baseInitramfs, tmp);
    // It may carry private keys; copyFile took the base's mode.
    await chmod(tmp, 0o600);
    await appendFile(tmp, o.payload);
  });
}
