import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Command } from 'commander';
import { BangerClient } from '../../client/client.js';

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {}
  }
  return undefined;
}

/**
 * The one-use link goes to the browser through a private file (a 0700 directory, a 0600 page that
 * redirects), never on a command line: another local user can read any process's argv in /proc.
 */
function openInBrowser(xdgOpen: string, url: string): void {
  const dir = mkdtempSync(join(tmpdir(), 'banger-ui-'));
  const page = join(dir, 'open.html');
  const attr = url.replace(/&/g, '&amp;').replace(/"/g, '&quot;');
  writeFileSync(page, `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${attr}"><title>banger</title>\n`, {
    mode: 0o600,
    flag: 'wx',
  });
  spawn(xdgOpen, [page], { detached: true, stdio: 'ignore' })
    .on('error', () => {})
    .unref();
}

export function registerUiCommands(program: Command): void {
  program
    .command('ui')
    .description('open the web UI in a browser with a one-time login link (or print the link)')
    .option('--url', 'print the one-time link instead of opening a browser')
    .addHelpText('after', '\nThe link works once, for two minutes; the session lasts until the daemon restarts. See docs/web.md.')
    .action(async (opts: { url?: boolean }) => {
      const { url } = await new BangerClient().webToken();
      const xdgOpen = opts.url ? undefined : onPath('xdg-open');
      const display = !!(process.env.DISPLAY || process.env.WAYLAND_DISPLAY);
      if (xdgOpen && display) {
        openInBrowser(xdgOpen, url);
        process.stdout.write('opening the banger web UI in your browser\n');
        return;
      }
      if (!opts.url) process.stderr.write('no browser to open here (no xdg-open or no display): open this link (valid once, for 2 minutes):\n');
      process.stdout.write(`${url}\n`);
    });
}
