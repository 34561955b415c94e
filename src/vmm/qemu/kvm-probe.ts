import { constants } from 'node:fs';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readHostTscKhz } from '../../host/cpu.js';
import { openLogFile } from '../console-log.js';
import { isProcessAlive, killAndWait, readTail, spawnDetached } from '../process.js';
import { microvmArgs } from './args.js';
import { QemuConfinementCheck } from './sandbox.js';

/** One check per process: the probe's QEMU runs under the same sandbox as every VM. */
const sharedCheck = new QemuConfinementCheck();

/** Printed by the kernel when it hands over to userspace, and by banger-init itself. */
const MARKER = /Run \/init as init process|banger-init:/;
/** The marker comes after ~100 KiB of boot messages; a console past this is a flood, not a boot. */
const MAX_CONSOLE_BYTES = 16 * 1024 * 1024;
const CHUNK = 64 * 1024;

export interface KvmProbeOutcome {
  usable: boolean;
  detail: string;
}

/**
 * Proves KVM works by booting a real kernel to userspace under `-accel kvm` within a deadline.
 * /dev/kvm existing is not enough: nested or paravirtualized hosts (e.g. PVM) expose it while
 * stock guest kernels hang or crawl there.
 */
export async function probeKvm(opts: ProbeOptions): Promise<KvmProbeOutcome> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { usable: false, detail: '/dev/kvm missing or not accessible' };
  }
  return bootProbe(opts, 'kvm');
}

export interface ProbeOptions {
  qemuBin: string;
  kernelPath: string;
  initrdPath?: string;
  deadlineMs?: number;
  /**
   * Where the probe's files go (default: the system temp dir). The daemon gives a directory of its
   * own: the probe's QEMU names it in its argv, so a daemon killed mid-probe finds it at its next
   * start and kills it.
   */
  workDir?: string;
  /** Checks that QEMU accepts the sandbox (default: one shared check per process). */
  confinementCheck?: QemuConfinementCheck;
  /** vmm_user: a root daemon's probe QEMU drops to it like every VM's (ignored when not root). */
  vmmUser?: string;
}

/** Boots the kernel under the given accelerator and reports whether it reached userspace in time. */
export async function bootProbe(opts: ProbeOptions, accel: 'kvm' | 'tcg'): Promise<KvmProbeOutcome> {
  // Thrown, not an outcome: a QEMU without seccomp says nothing about KVM, and must not be cached
  // as "KVM unusable".
  const confinement = opts.vmmUser && process.getuid?.() === 0 ? { runAs: opts.vmmUser } : {};
  const runAsSpelling = await (opts.confinementCheck ?? sharedCheck).check(opts.qemuBin, confinement);
  const dir = await mkdtemp(join(opts.workDir ?? tmpdir(), 'banger-boot-probe-'));
  const serial = join(dir, 'serial.log');
  const deadline = opts.deadlineMs ?? 10_000;
  const khz = await readHostTscKhz();
  const args = microvmArgs(
    {
      accel,
      vcpus: 1,
      memoryMib: 256,
      serialLogPath: serial,
      kernelPath: opts.kernelPath,
      ...(opts.initrdPath ? { initrdPath: opts.initrdPath } : {}),
      cmdline: `console=ttyS0 panic=-1 loglevel=6 rdinit=/init banger.probe=1${khz ? ` tsc_early_khz=${khz}` : ''}`,
    },
    { ...confinement, runAsSpelling },
  );
  const started = Date.now();
  let proc: { pid: number; startTime: string; bootId?: string } | undefined;
  try {
    proc = await spawnDetached(opts.qemuBin, args, join(dir, 'qemu.log'));
    const scan = new ConsoleScanner(serial);
    try {
      while (Date.now() - started < deadline) {
        const seen = await scan.next();
        if (seen === 'marker') return { usable: true, detail: `guest reached userspace in ${((Date.now() - started) / 1000).toFixed(1)}s` };
        if (seen === 'flood')
          return {
            usable: false,
            detail: `the kernel wrote over ${MAX_CONSOLE_BYTES / 1024 ** 2} MiB to the console without reaching userspace under ${accel}`,
          };
        if (!(await isProcessAlive(proc.pid, proc.startTime, proc.bootId))) {
          const log = await readTail(join(dir, 'qemu.log'), 4096);
          return { usable: false, detail: `QEMU exited under ${accel}: ${log.split('\n').at(-1) || 'no output'}` };
        }
        await sleep(100);
      }
    } finally {
      await scan.close();
    }
    return { usable: false, detail: `guest did not reach userspace within ${deadline / 1000}s under ${accel}` };
  } catch (e) {
    return { usable: false, detail: (e as Error).message };
  } finally {
    if (proc) await killAndWait(proc.pid, proc.startTime, undefined, proc.bootId).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Reads a growing console file incrementally (never the whole file at once) and looks for MARKER,
 * keeping a short overlap so a marker split across reads is still found.
 */
class ConsoleScanner {
  private fh: Awaited<ReturnType<typeof openLogFile>>;
  private offset = 0;
  private carry = '';

  constructor(private readonly path: string) {}

  async next(): Promise<'marker' | 'flood' | undefined> {
    this.fh ??= await openLogFile(this.path).catch(() => undefined);
    if (!this.fh) return undefined;
    const buf = Buffer.alloc(CHUNK);
    for (;;) {
      if (this.offset >= MAX_CONSOLE_BYTES) return 'flood';
      const { bytesRead } = await this.fh.read(buf, 0, CHUNK, this.offset);
      if (bytesRead === 0) return undefined;
      this.offset += bytesRead;
      const text = this.carry + buf.subarray(0, bytesRead).toString('latin1');
      if (MARKER.test(text)) return 'marker';
      this.carry = text.slice(-64);
    }
  }

  async close(): Promise<void> {
    await this.fh?.close();
  }
}
