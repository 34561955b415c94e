import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { Vm } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { checkVmName } from '../../client/trust.js';
import type { Layout } from '../../config/layout.js';
import { hasInclude, installInclude, shellQuote, uninstallInclude, writeFileAtomic } from '../../host/ssh-config.js';

export const bangerSshConfigPath = (layout: Layout) => join(layout.stateDir, 'ssh', 'config');
const userSshConfigPath = () => join(process.env.HOME || homedir(), '.ssh', 'config');

function runSsh(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', args, { stdio: 'inherit' });
    child.on('error', (e) =>
      reject(
        (e as NodeJS.ErrnoException).code === 'ENOENT'
          ? new BangerError('precondition_failed', 'ssh is not installed', { fix: 'apt-get install -y openssh-client' })
          : e,
      ),
    );
    // ssh exits 255 for its own errors; anything else is the remote command's status.
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + 15 : 255)));
  });
}

/**
 * ssh's argv: options, then `--`, then the host, then the remote command (one shell-quoted
 * word). Nothing after `--` is parsed as an option, so a host name can never become one
 * (`-oProxyCommand=…` would run a command on the host).
 */
export function sshArgv(o: { config: string; attempts: number; tty: boolean; host: string; command: string[]; cwd?: string }): string[] {
  const args = ['-F', o.config, '-o', 'ConnectTimeout=5', '-o', `ConnectionAttempts=${o.attempts}`];
  if (o.tty) args.push('-t');
  args.push('--', o.host);
  if (o.command.length) args.push(shellQuote(o.command));
  // A login shell in the workspace: the directory quoted as one word for the guest's shell.
  else if (o.cwd !== undefined) args.push(`cd ${shellQuote([o.cwd])} && exec "\${SHELL:-/bin/sh}" -l`);
  return args;
}

/**
 * Opens a shell in a running VM, or runs a command there; resolves to ssh's exit status (the
 * remote command's, or 255 for ssh's own failures).
 */
export async function sshIntoVm(client: BangerClient, v: Vm, command: string[], opts: { cwd?: string } = {}): Promise<number> {
  // The name comes from the daemon's answer: it must be a DNS label before it goes near argv.
  const name = checkVmName(v.name);
  if (v.state !== 'running') {
    throw new BangerError('precondition_failed', `VM ${v.name} is ${v.state}`, { fix: `start it: banger vm start ${v.name}` });
  }
  const image = await client.image(v.imageName).catch(() => undefined);
  // One connection attempt a second: sshd answers 4–7 s after the agent under TCG, and far later on
  // a busy 2-core host (20 attempts were seen to run out there).
  let attempts = 60;
  if (image && !image.hasSshd) {
    if (!v.nat) {
      throw new BangerError('precondition_failed', `image ${image.name} has no sshd, and ${v.name} has no NAT to install one at first boot`, {
        fix: `recreate the VM with --nat (banger then installs openssh-server through the guest's package manager on first boot), or use an image with sshd`,
      });
    }
    process.stderr.write(`image ${image.name} has no sshd: waiting for the first-boot install (follow it with: banger vm logs -f ${v.name})\n`);
    attempts = 120;
  }
  const config = bangerSshConfigPath(client.layout);
  // sshd starts a moment after the agent reports ready: retry the connection briefly.
  return runSsh(
    sshArgv({
      config,
      attempts,
      tty: command.length === 0 && !!process.stdin.isTTY,
      host: `${name}.vm`,
      command,
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    }),
  );
}

/** `vm ssh`. */
export function registerVmSshCommand(vm: Command): void {
  vm.command('ssh')
    .description('open a shell in a VM, or run a command there (its exit status is passed through)')
    .argument('<vm>', 'VM name or id prefix')
    .argument('[command...]', 'command to run (put it after --)')
    .addHelpText('after', "\nExamples:\n  banger vm ssh dev\n  banger vm ssh dev -- make test\n  banger vm ssh dev -- sh -c 'exit 42'   # exits 42")
    .action(async (ref: string, command: string[]) => {
      const client = new BangerClient();
      const v = await client.vm(ref);
      process.exitCode = await sshIntoVm(client, v, command);
      if (command.length === 0) {
        const after = await client.vm(v.id).catch(() => undefined);
        if (after?.state === 'running') process.stderr.write(`${v.name} is still running; stop it with: banger vm stop ${v.name}\n`);
      }
    });
}

/** `ssh-config` (a top-level command; local-only for --install/--uninstall). */
export function registerSshConfigCommand(program: Command): void {
  program
    .command('ssh-config')
    .description("print banger's ssh_config path; --install adds an Include to ~/.ssh/config so `ssh <name>.vm` works")
    .option('--install', 'add the marked Include block to ~/.ssh/config (idempotent)')
    .option('--uninstall', 'remove the Include block from ~/.ssh/config')
    .action(async (o: { install?: boolean; uninstall?: boolean }) => {
      if (o.install && o.uninstall) throw new BangerError('bad_request', 'give --install or --uninstall, not both', { details: 'usage' });
      const client = new BangerClient();
      // Ask the daemon once so it (re)writes the file before we point ssh at it.
      await client.status();
      const path = bangerSshConfigPath(client.layout);
      const user = userSshConfigPath();
      const current = existsSync(user) ? readFileSync(user, 'utf8') : '';
      if (o.install) {
        const next = installInclude(current, path);
        if (next !== current) await writeFileAtomic(user, next, 0o600);
        process.stdout.write(`${next === current ? 'already included' : 'added Include'} in ${user}\n`);
      } else if (o.uninstall) {
        const next = uninstallInclude(current);
        if (next !== current) await writeFileAtomic(user, next, 0o600);
        process.stdout.write(`${next === current ? 'no banger Include' : 'removed the Include'} in ${user}\n`);
      } else {
        process.stdout.write(`${path}\n`);
        if (!hasInclude(current, path)) process.stderr.write(`not included from ${user}; run \`banger ssh-config --install\`\n`);
      }
    });
}
