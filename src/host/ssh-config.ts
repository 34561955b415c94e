import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from './runner.js';

const BEGIN = '# >>> banger >>>';
const END = '# <<< banger <<<';

export interface SshHost {
  name: string;
  ip: string;
  hostKey?: string | undefined;
}

/**
 * banger's own ssh_config. A per-VM block pins the address (no DNS needed) and the host-key alias;
 * the trailing `Host *.vm` block carries the same options for names that only DNS knows.
 * Host-key checking stays strict: each VM's key is written to banger's known_hosts at create.
 */
export function bangerSshConfig(o: { keyPath: string; knownHostsPath: string; hosts: readonly SshHost[] }): string {
  const common = [
    'User root',
    `IdentityFile ${configPath(o.keyPath)}`,
    'IdentitiesOnly yes',
    `UserKnownHostsFile ${configPath(o.knownHostsPath)}`,
    'StrictHostKeyChecking yes',
    'LogLevel ERROR',
  ];
  const blocks = o.hosts.map((h) => {
    const alias = `${hostName(h.name)}.vm`;
    if (isIP(h.ip) === 0) throw new BangerError('internal', `ssh_config: "${h.ip}" is not an IP address (VM ${h.name})`);
    return [`Host ${alias}`, `HostName ${h.ip}`, `HostKeyAlias ${alias}`, ...common].join('\n  ');
  });
  blocks.push(['Host *.vm', ...common].join('\n  '));
  return `# Written by banger; regenerated as VMs change. Do not edit.\n\n${blocks.join('\n\n')}\n`;
}

/** known_hosts lines keyed by `<name>.vm`, which HostKeyAlias makes ssh look up. Malformed keys are skipped. */
export function knownHostsLines(hosts: ReadonlyArray<{ name: string; hostKey: string }>): string[] {
  const lines: string[] = [];
  for (const h of hosts) {
    const [type, key] = h.hostKey.trim().split(/\s+/);
    if (!type || !key || !/^[a-z0-9@.-]+$/i.test(type) || !/^[A-Za-z0-9+/=]+$/.test(key)) continue;
    lines.push(`${hostName(h.name)}.vm ${type} ${key}\n`);
  }
  return lines;
}

function includeBlock(includePath: string): string {
  // Include takes no % tokens (only ~ and globs), so the path is quoted but not %-escaped.
  return `${BEGIN}\nInclude ${configPath(includePath, false)}\n${END}\n`;
}

export function hasInclude(text: string, includePath: string): boolean {
  return text.includes(includeBlock(includePath));
}

/**
 * Puts the marked Include block at the very top (an Include after a Host line would only apply
 * to that Host), followed by one blank line. Idempotent; an older banger block is replaced.
 */
export function installInclude(text: string, includePath: string): string {
  const rest = uninstallInclude(text);
  return `${includeBlock(includePath)}${rest.length ? '\n' : ''}${rest}`;
}

/** Removes banger's marked block(s) and the one blank line installInclude put after it. */
export function uninstallInclude(text: string): string {
  let out = text;
  let from = 0;
  for (;;) {
    const start = out.indexOf(`${BEGIN}\n`, from);
    if (start < 0) return out;
    const end = out.indexOf(`\n${END}`, start);
    if (end < 0) return out;
    from = start + 1;
    // Only whole lines that are exactly banger's markers count.
    if (start > 0 && out[start - 1] !== '\n') continue;
    let after = end + 1 + END.length;
    if (after < out.length && out[after] !== '\n') continue;
    if (out[after] === '\n') after++;
    if (out[after] === '\n') after++;
    out = out.slice(0, start) + out.slice(after);
    from = start;
  }
}

/**
 * Readers see the old file or the new one, never a torn write (temp file in the same dir + rename).
 * A symlink (e.g. a dotfile manager's ~/.ssh/config) is followed so its target is updated, not replaced.
 */
export async function writeFileAtomic(path: string, text: string, mode: number): Promise<void> {
  const target = await realpath(path).catch(() => path);
  const dir = dirname(target);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(text);
      await fh.chmod(mode); // the umask may have narrowed (or the caller widened) the create mode
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * The managed key: generated when missing (ed25519, no passphrase, 0600, `.pub` beside it) and its
 * public half returned. A key others can read is refused rather than fixed behind the user's back;
 * ssh would refuse it too.
 */
export async function ensureSshKey(runner: CommandRunner, path: string): Promise<string> {
  const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new BangerError('precondition_failed', `cannot read SSH key ${path}: ${e.code ?? e.message}`, { cause: e });
  });
  if (st) {
    if (!st.isFile())
      throw new BangerError('precondition_failed', `SSH key ${path} is not a regular file`, { fix: `remove it or set ssh_key_path in config.toml` });
    if ((st.mode & 0o177) !== 0) {
      throw new BangerError('precondition_failed', `SSH key ${path} has mode ${(st.mode & 0o777).toString(8)}; it must be 600 (owner read/write only)`, {
        fix: `chmod 600 ${path}`,
      });
    }
    const pub = await readFile(`${path}.pub`, 'utf8').catch(() => undefined);
    if (pub?.trim()) return pub.trim();
    // The private half is enough: derive the public one (e.g. a user-supplied ssh_key_path without .pub).
    const derived = (await sshKeygen(runner, ['-y', '-f', path])).stdout.trim();
    await writeFile(`${path}.pub`, `${derived}\n`, { mode: 0o644 });
    return derived;
  }
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await sshKeygen(runner, ['-q', '-t', 'ed25519', '-N', '', '-C', 'banger', '-f', path]);
  await chmod(path, 0o600);
  return (await readFile(`${path}.pub`, 'utf8')).trim();
}

async function sshKeygen(runner: CommandRunner, args: string[]) {
  try {
    // stdin is closed: a prompt (e.g. "overwrite?") reads EOF and answers no.
    return await runner.run('ssh-keygen', args, { timeoutMs: 30_000 });
  } catch (e) {
    throw new BangerError('host_command_failed', `ssh-keygen failed: ${(e as Error).message}`, {
      fix: 'install OpenSSH: apt-get install -y openssh-client',
      cause: e,
    });
  }
}

/**
 * One string for ssh's remote command that a POSIX shell splits back into exactly `argv` (ssh
 * joins its arguments with spaces and hands the result to the remote user's shell). `=` is quoted
 * so a first word like `A=b` stays a command instead of becoming an assignment.
 */
export function shellQuote(argv: readonly string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_\-.,:/@%+]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ');
}

/** VM names are DNS labels; anything else would break the ssh_config syntax. */
function hostName(name: string): string {
  if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) throw new BangerError('internal', `"${name}" is not a valid VM host name`);
  return name.toLowerCase();
}

/**
 * A path as an ssh_config argument: quoted (spaces), with `%` doubled where ssh expands `%` tokens
 * (IdentityFile, UserKnownHostsFile). ssh_config has no escape for `"` or newlines, so those are refused.
 */
function configPath(path: string, tokens = true): string {
  if (/["\n\r]/.test(path)) {
    throw new BangerError('invalid_config', `path ${JSON.stringify(path)} cannot be written to ssh_config`, { fix: 'use a path without quotes or newlines' });
  }
  return `"${tokens ? path.replace(/%/g, '%%') : path}"`;
}
