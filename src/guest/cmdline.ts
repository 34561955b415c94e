/** The kernel command line of a banger guest booted through banger's initramfs. */
export interface CmdlineOptions {
  /** DNS label; systemd sets it before anything reads /etc/hostname. */
  hostname: string;
  /**
   * Host TSC frequency in kHz (host/cpu.ts). microvm has no HPET or PM timer to calibrate the
   * TSC against: without it about 1 boot in 7 hangs early under TCG.
   */
  tscKhz?: number;
  /** Kernel `ip=` value (client::gw:mask:host:dev:autoconf); userspace reads it, the kernel has no IP_PNP. */
  ip?: string;
  /** Default ttyS0 (QEMU microvm and Firecracker both have an 8250 at the legacy port). */
  console?: string;
  root?: string;
  rootfstype?: string;
  rootflags?: string;
  /** Default true: kernel chatter costs boot time on a slow serial console. */
  quiet?: boolean;
  /** Appended verbatim, one argument each (no whitespace inside an argument). */
  extra?: readonly string[];
}

const HOSTNAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

function checkArg(arg: string, what: string): string {
  if (arg === '' || /\s/.test(arg)) throw new Error(`kernel command line: ${what} "${arg}" is empty or contains whitespace`);
  return arg;
}

export function buildCmdline(o: CmdlineOptions): string {
  if (!HOSTNAME.test(o.hostname)) throw new Error(`kernel command line: "${o.hostname}" is not a valid hostname`);
  const args = [
    `console=${checkArg(o.console ?? 'ttyS0', 'console')}`,
    // Reboot at once on panic: with -no-reboot the VMM then exits instead of hanging.
    'panic=-1',
    `root=${checkArg(o.root ?? '/dev/vda', 'root')}`,
    `rootfstype=${checkArg(o.rootfstype ?? 'ext4', 'rootfstype')}`,
    `rootflags=${checkArg(o.rootflags ?? 'rw,noatime', 'rootflags')}`,
  ];
  if (o.quiet ?? true) args.push('quiet');
  // The crypto self-tests cost ~0.25 s of boot under TCG and test nothing banger relies on.
  args.push('cryptomgr.notests');
  if (o.tscKhz !== undefined) {
    if (!Number.isInteger(o.tscKhz) || o.tscKhz <= 0) throw new Error(`kernel command line: bad TSC frequency ${o.tscKhz} kHz`);
    args.push(`tsc_early_khz=${o.tscKhz}`);
  }
  if (o.ip !== undefined) args.push(`ip=${checkArg(o.ip, 'ip')}`);
  args.push(`systemd.hostname=${o.hostname}`);
  for (const a of o.extra ?? []) args.push(checkArg(a, 'argument'));
  return args.join(' ');
}
