import { chmod, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BangerError } from '../api/errors.js';
import type { CommandRunner } from './runner.js';

const BEGIN = '# >>> banger >>>';
const END = '# <<< banger <<<';

export interface SshHost {
  name: string;
  ip: string;
  hostKey?: string | undefined;
}

/** banger's own ssh_config: one block per VM (no DNS needed), host-key checking kept on. */
export function bangerSshConfig(o: { keyPath: string; knownHostsPath: string; hosts: readonly SshHost[] }): string {
  const common = [
    '  User root',
    `  IdentityFile "${o.keyPath}"`,
    '  IdentitiesOnly yes',
    `  UserKnownHostsFile "${o.knownHostsPath}"`,
    '  StrictHostKeyChecking yes',
    '  LogLevel ERROR',
  ];
  const blocks = o.hosts.map((h) => [`Host ${h.name}.vm`, `  HostName ${h.ip}`, `  HostKeyAlias ${h.name}.vm`, ...common].join('\n'));
  blocks.push(['Host *.vm', ...common].join('\n'));
  return `# Written by banger; regenerated as VMs change. Do not edit.\n\n${blocks.join('\n\n')}\n`;
}

/** known_hosts lines keyed by the HostKeyAlias `<name>.vm`. */
export function knownHostsLines(hosts: ReadonlyArray<{ name: string; hostKey: string }>): string[] {
  return hosts.map((h) => {
    const [type, key] = h.hostKey.trim().split(/\s+/);
    return `${h.name}.vm ${type} ${key}\n`;
  });
}

function block(includePath: string): string {
  return `${BEGIN}\nInclude "${includePath}"\n${END}\n`;
}

export function hasInclude(text: string, includePath: string): boolean {
  return text.includes(block(includePath));
}

/** Adds the marked Include at the top (Include must precede Host blocks to apply globally). Idempotent. */
export function installInclude(text: string, includePath: string): string {
  const without = uninstallInclude(text);
  return `${block(includePath)}${without.length && !without.startsWith('\n') ? '\n' : ''}${without}`;
}

export function uninstallInclude(text: string): string {
  const start = text.indexOf(BEGIN);
  if (start < 0) return text;
  const end = text.indexOf(END, start);
  if (end < 0) return text;
  let after = end + END.length;
  if (text[after] === '\n') after++;
  if (text[after] === '\n' && start === 0) after++;
  return text.slice(0, start) + text.slice(after);
}

export async function writeFileAtomic(path: string, text: string, mode: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode);
  await rename(tmp, path);
}

/** The managed key: generated when missing; a key readable by others is refused (ssh would too). */
export async function ensureSshKey(runner: CommandRunner, path: string): Promise<string> {
  const st = await stat(path).catch(() => undefined);
  if (st) {
    if ((st.mode & 0o077) !== 0) {
      throw new BangerError('precondition_failed', `SSH key ${path} is readable by other users (mode ${(st.mode & 0o777).toString(8)})`, { fix: `chmod 600 ${path}` });
    }
  } else {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await runner.run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'banger', '-f', path], { timeoutMs: 30_000 });
  }
  return (await readFile(`${path}.pub`, 'utf8')).trim();
}

/** One string for ssh's remote command that the remote shell splits back into exactly `argv`. */
export function shellQuote(argv: readonly string[]): string {
  return argv.map((a) => (a === '' ? "''" : /^[A-Za-z0-9_\-.,:/@%+=]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ');
}
