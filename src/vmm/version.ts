import type { CommandRunner } from '../host/runner.js';

/**
 * The first line of `<vmm> --version` (e.g. "QEMU emulator version 7.2.22 (Debian …)"): what a
 * snapshot's manifest records, since saved device state loads only into the same VMM build.
 */
export async function vmmVersion(runner: CommandRunner, binary: string): Promise<string> {
  const r = await runner.run(binary, ['--version'], { timeoutMs: 15_000 });
  return (r.stdout.split('\n')[0] ?? '').trim().slice(0, 200) || 'unknown';
}
