import { spawn } from 'node:child_process';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './home.js';

/** Where scripts/guest-assets.sh keeps the assets (and its assets.json) — the tests read the same cache. */
export const assetCache = (env: NodeJS.ProcessEnv = process.env): string => env.BANGER_ASSET_CACHE ?? join(homedir(), '.cache', 'banger-test-assets');

/**
 * Builds the guest assets the VM benchmarks boot (a Debian kernel and rootfs), or finds them cached,
 * exactly as `npm test` does (scripts/test.sh): scripts/guest-assets.sh as root, or through sudo with
 * the cache named explicitly so sudo's HOME does not move it. Its output goes to stderr (stdout is
 * the results). Rejects with the script's exit status.
 */
export function ensureGuestAssets(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const script = join(ROOT, 'scripts', 'guest-assets.sh');
  const [cmd, args] = process.getuid?.() === 0 ? ['bash', [script]] : ['sudo', ['env', `BANGER_ASSET_CACHE=${assetCache(env)}`, 'bash', script]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd as string, args as string[], { env, stdio: ['inherit', process.stderr, process.stderr] });
    child.on('error', reject);
    child.on('close', (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`scripts/guest-assets.sh exited ${code ?? signal}: the guest assets the VM benchmarks boot could not be built`)),
    );
  });
}
