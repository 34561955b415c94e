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
