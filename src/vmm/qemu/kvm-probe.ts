import { constants } from 'node:fs';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readHostTscKhz } from '../../guest/cmdline.js';
import { isProcessAlive, killAndWait, spawnDetached } from '../process.js';

/** Printed by the kernel when it hands over to userspace, and by banger-init itself. */
const MARKER = /Run \/init as init process|banger-init:/;

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
}

/** Boots the kernel under the given accelerator and reports whether it reached userspace in time. */
export async function bootProbe(opts: ProbeOptions, accel: 'kvm' | 'tcg'): Promise<KvmProbeOutcome> {
  const dir = await mkdtemp(join(tmpdir(), 'banger-boot-probe-'));
  const serial = join(dir, 'serial.log');
  const deadline = opts.deadlineMs ?? 10_000;
  const khz = await readHostTscKhz();
  const args = [
    '-M', 'microvm,acpi=on', ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']), '-smp', '1', '-m', '256M',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-chardev', `file,id=s0,path=${serial}`, '-serial', 'chardev:s0',
    '-kernel', opts.kernelPath,
    ...(opts.initrdPath ? ['-initrd', opts.initrdPath] : []),
    '-append', `console=ttyS0 panic=-1 loglevel=6 rdinit=/init banger.probe=1${khz ? ` tsc_early_khz=${khz}` : ''}`,
  ];
  const started = Date.now();
  let proc: { pid: number; startTime: string } | undefined;
  try {
    proc = await spawnDetached(opts.qemuBin, args, join(dir, 'qemu.log'));
    while (Date.now() - started < deadline) {
      const text = await readFile(serial, 'utf8').catch(() => '');
      if (MARKER.test(text)) return { usable: true, detail: `guest reached userspace in ${((Date.now() - started) / 1000).toFixed(1)}s` };
      if (!(await isProcessAlive(proc.pid, proc.startTime))) {
        const log = await readFile(join(dir, 'qemu.log'), 'utf8').catch(() => '');
        return { usable: false, detail: `QEMU exited under ${accel}: ${log.trim().split('\n').at(-1) ?? 'no output'}` };
      }
      await sleep(100);
    }
    return { usable: false, detail: `guest did not reach userspace within ${deadline / 1000}s under ${accel}` };
  } catch (e) {
    return { usable: false, detail: (e as Error).message };
  } finally {
    if (proc) await killAndWait(proc.pid, proc.startTime).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}
