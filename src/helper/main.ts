// bangerd-root: the privileged helper (docs/privileges.md). Runs as root, serves one owner uid.
import { fileURLToPath } from 'node:url';
import { BangerError, toBangerError } from '../api/errors.js';
import { PrivilegedOps } from '../host/privileged.js';
import { assertRootCode } from '../host/root-code.js';
import { ProcessRunner } from '../host/runner.js';
import { versionText } from '../util/build-info.js';
import { parseArgs, resolveOwner, USAGE, USAGE_FIX } from './args.js';
import { assertPeercredBinary, peerCred } from './peercred.js';
import { clean, HelperServer } from './server.js';

function log(line: string): void {
  process.stderr.write(`bangerd-root: ${new Date().toISOString()} ${clean(line, 1000)}\n`);
}

async function main(argv: string[]): Promise<void> {
  const args = parseArgs(argv);
  if (args === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (args === 'version') {
    process.stdout.write(`${versionText('bangerd-root')}\n`);
    return;
  }
  if (process.getuid?.() !== 0) {
    throw new BangerError('precondition_failed', 'bangerd-root must run as root: it changes host networking for the owner user', {
      fix: 'start it as root (systemctl start bangerd-root, or sudo bangerd-root --owner USER)',
    });
  }
  const ownerUid = resolveOwner(args.owner);
  // This process's own code, node and banger-peercred (run per connection) must be root's alone.
  assertRootCode(fileURLToPath(new URL('../../..', import.meta.url)), process.execPath, 'bangerd-root');
  assertPeercredBinary();
  const ops = new PrivilegedOps({ runner: new ProcessRunner(), sudo: 'never', tapOwnerUid: ownerUid });
  const server = new HelperServer({
    socketPath: args.socket,
    ownerUid,
    ops,
    scope: args.bridges.length ? { bridges: new Set(args.bridges) } : {},
    peerCred: (sock) => peerCred(sock),
    log,
  });
  await server.listen();
  log(
    `listening on ${args.socket} for uid ${ownerUid}${args.bridges.length ? ` (bridges ${args.bridges.join(', ')})` : ''}; stopping it leaves bridges, TAPs and rules in place`,
  );
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping (bridges, TAPs and rules stay)`);
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const e = toBangerError(err);
  process.stderr.write(`bangerd-root: ${e.message}\n${e.fix ? `fix: ${e.fix}\n` : ''}`);
  process.exit(e.fix === USAGE_FIX ? 2 : 1);
});
