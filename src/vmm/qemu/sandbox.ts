import { BangerError } from '../../api/errors.js';
import { VMM_USER_PATTERN } from '../../config/config.js';
import { type CommandRunner, ProcessRunner } from '../../host/runner.js';

/**
 * QEMU's seccomp sandbox and privilege drop: the one place that says how every banger QEMU (VMs
 * and the KVM boot probe) is confined. docs/privileges.md ("QEMU and Firecracker") describes it.
 *
 * `-sandbox on` installs a seccomp filter (mode 2) before the guest runs. Every option is at its
 * strictest value that banger's own use of QEMU allows (boot, QMP query-status/system_powerdown,
 * serial console to a file, virtio-serial/QMP Unix sockets, TAP with script=no, power-off):
 * - obsolete=deny: no obsolete system calls;
 * - elevateprivileges=deny: no set*uid/set*gid (a QEMU that must drop to `vmm_user` with -runas
 *   calls setgid/setuid once, after the filter is in place, so that mode needs `allow`; once the
 *   drop is done an unprivileged process cannot gain a uid back, so little is lost);
 * - spawn=deny: no fork/execve. QEMU then cannot run helper scripts, which banger never asks for
 *   (TAP netdevs use script=no,downscript=no). Note for snapshots/migration: an `exec:` migration
 *   URI forks a shell, so under spawn=deny QEMU is KILLED by the filter; use `unix:` or `fd:`
 *   migrations (and files opened after -runas are opened as `vmm_user`);
 * - resourcecontrol=deny: no scheduler/affinity/priority changes (banger sets none in QEMU).
 */
export interface QemuConfinement {
  /** User QEMU drops to after opening its disks, TAP, sockets and console (`-runas`), or undefined. */
  runAs?: string;
}

/** The `-sandbox` value for a QEMU that does (runAs) or does not drop privileges itself. */
export function qemuSandboxPolicy(c: QemuConfinement = {}): string {
  const elevate = c.runAs ? 'allow' : 'deny';
  return `on,obsolete=deny,elevateprivileges=${elevate},spawn=deny,resourcecontrol=deny`;
}

/** The policy of every QEMU that does not drop privileges itself (the daemon's own user runs it). */
export const QEMU_SANDBOX_POLICY = qemuSandboxPolicy();

/** How this QEMU spells the privilege drop: `-runas USER` (QEMU 7.2) or `-run-with user=USER` (QEMU 9.1+). */
export type RunAsSpelling = 'runas' | 'run-with';

/** Pure: the confinement arguments (sandbox, then the privilege drop when configured). */
export function confinementArgs(c: QemuConfinement, spelling: RunAsSpelling = 'runas'): string[] {
  const args = ['-sandbox', qemuSandboxPolicy(c)];
  if (c.runAs !== undefined) {
    if (!VMM_USER_PATTERN.test(c.runAs)) {
      throw new BangerError('invalid_config', `vmm_user ${JSON.stringify(c.runAs)} is not a user name or uid:gid`, {
        fix: 'set vmm_user in config.toml to an existing user name (e.g. "banger-vmm") or "uid:gid", or remove it',
      });
    }
    args.push(...(spelling === 'run-with' ? ['-run-with', `user=${c.runAs}`] : ['-runas', c.runAs]));
  }
  return args;
}

/** Pure: which spelling a QEMU's `-help` text offers. */
export function runAsSpellingOf(helpText: string): RunAsSpelling {
  return /^-runas\b/m.test(helpText) ? 'runas' : /^-run-with\b.*\buser=/m.test(helpText) ? 'run-with' : 'runas';
}

/**
 * Checks once per QEMU binary and confinement that QEMU accepts it, without starting a machine:
 * `-sandbox <policy> [-runas USER] -version` makes QEMU parse (and reject) the sandbox options, and
 * look the user up, before it prints its version. A QEMU built without seccomp support, or a
 * `vmm_user` that does not exist, fails here with a BangerError naming the fix; banger never falls
 * back to an unsandboxed QEMU.
 */
export class QemuConfinementCheck {
  private readonly checked = new Map<string, Promise<RunAsSpelling>>();

  constructor(private readonly runner: CommandRunner = new ProcessRunner()) {}

  /** The spelling to use for the privilege drop; throws a BangerError when QEMU cannot be confined. */
  check(qemuBin: string, c: QemuConfinement = {}): Promise<RunAsSpelling> {
    const key = `${qemuBin}\0${c.runAs ?? ''}`;
    let p = this.checked.get(key);
    if (!p) {
      p = this.probe(qemuBin, c);
      // A failure is not cached: the user fixes QEMU or the config and the next launch re-checks.
      p.catch(() => this.checked.delete(key));
      this.checked.set(key, p);
    }
    return p;
  }

  private async probe(qemuBin: string, c: QemuConfinement): Promise<RunAsSpelling> {
    let spelling: RunAsSpelling = 'runas';
    if (c.runAs !== undefined) {
      const help = await this.runner.run(qemuBin, ['-help'], { allowFailure: true, timeoutMs: 10_000, maxOutputBytes: 1024 * 1024 });
      spelling = runAsSpellingOf(help.stdout);
    }
    const args = [...confinementArgs(c, spelling), '-version'];
    const r = await this.runner.run(qemuBin, args, { allowFailure: true, timeoutMs: 10_000, maxOutputBytes: 64 * 1024 });
    if (r.code === 0) return spelling;
    const said = (r.stderr || r.stdout).trim().split('\n').slice(-3).join(' ') || `exit status ${r.code}`;
    if (c.runAs !== undefined && /runas|run-with|user/i.test(said) && !/sandbox|seccomp/i.test(said)) {
      throw new BangerError('invalid_config', `QEMU cannot drop privileges to vmm_user ${JSON.stringify(c.runAs)}: ${said}`, {
        fix: `create the user (useradd --system --no-create-home --shell /usr/sbin/nologin ${c.runAs}) or change vmm_user in config.toml`,
      });
    }
    if (!/sandbox|seccomp/i.test(said)) {
      throw new BangerError('vmm_failed', `QEMU failed to start: ${qemuBin} ${args.join(' ')} failed: ${said}`, {
        fix: `check qemu_bin in config.toml (run \`banger doctor\`)`,
      });
    }
    throw new BangerError('missing_dependency', `${qemuBin} cannot run under banger's seccomp sandbox (-sandbox ${qemuSandboxPolicy(c)}): ${said}`, {
      fix: 'install a QEMU built with seccomp support (Debian/Ubuntu: apt-get install qemu-system-x86, which links libseccomp; from source: ./configure --enable-seccomp); banger does not run QEMU unsandboxed',
    });
  }
}
