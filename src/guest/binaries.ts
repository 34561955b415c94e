import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BangerError } from '../api/errors.js';

/** The static guest binaries built by `npm run build` (make -C agent), from dist/src/guest → package root. */
const root = new URL('../../../', import.meta.url);

export const guestBinary = (name: 'banger-agent' | 'banger-init'): string => {
  const path = fileURLToPath(new URL(`agent/build/${name}`, root));
  if (!existsSync(path)) {
    throw new BangerError('precondition_failed', `guest binary ${path} is missing`, {
      fix: 'build it with `npm run build` (needs gcc and the static C library: apt-get install -y gcc libc6-dev make)',
    });
  }
  return path;
};
