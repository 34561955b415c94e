import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { delimiter, isAbsolute, join } from 'node:path';

/** Absolute path of an executable `cmd` on PATH (plus /usr/sbin and /sbin), or `cmd` itself when it is an executable path. */
export async function which(cmd: string): Promise<string | undefined> {
  const candidates =
    isAbsolute(cmd) || cmd.includes('/')
      ? [cmd]
      : (process.env.PATH ?? '')
          .split(delimiter)
          .concat(['/usr/sbin', '/sbin'])
          .map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}
