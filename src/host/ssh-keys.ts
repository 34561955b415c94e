import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CommandRunner } from './runner.js';

/**
 * Every VM gets its own SSH host key: VMs cloned from one image would otherwise share the
 * image's keys (and an image may ship none at all, so sshd would not start).
 */
export async function generateHostKey(runner: CommandRunner, dir: string, comment: string): Promise<{ privateKey: Buffer; publicKey: string }> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, 'ssh_host_ed25519_key');
  await runner.run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path], { timeoutMs: 30_000, input: 'n\n' });
  return { privateKey: await readFile(path), publicKey: (await readFile(`${path}.pub`, 'utf8')).trim() };
}

export interface GuestFile {
  path: string;
  mode: number;
  content: Buffer | string;
}

/** The VM's host key pair as files for the boot payload (sshd refuses keys readable by others). */
export async function hostKeyFiles(dir: string): Promise<GuestFile[]> {
  const path = join(dir, 'ssh_host_ed25519_key');
  return [
    { path: '/etc/ssh/ssh_host_ed25519_key', mode: 0o600, content: await readFile(path) },
    { path: '/etc/ssh/ssh_host_ed25519_key.pub', mode: 0o644, content: await readFile(`${path}.pub`) },
  ];
}
