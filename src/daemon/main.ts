import { rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { BangerError, toBangerError } from '../api/errors.js';
import { loadConfig } from '../config/config.js';
import { ensureLayout, resolveLayout } from '../config/layout.js';
import { ProcessRunner } from '../host/runner.js';
import { checkMigrations, migrate, openDb } from '../store/db.js';
import { versionText } from '../util/build-info.js';
import { systemClock } from '../util/op-context.js';
import { composeDaemon } from './compose.js';
import { DaemonLock } from './lock.js';
import { createLogger } from './logger.js';

const USAGE = `usage: bangerd [--version] [--check-migrations]

The banger daemon. It is normally started by the banger CLI on first use;
manage it with \`banger daemon start|stop|restart|status|logs\`.`;

function fail(err: unknown, code = 1): never {
  const e = toBangerError(err);
  process.stderr.write(`bangerd: ${e.message}\n${e.fix ? `fix: ${e.fix}\n` : ''}`);
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  const args = new Set(argv);
  if (args.has('--version') || args.has('-V')) {
    process.stdout.write(`${versionText('bangerd')}\n`);
    return;
  }
  if (args.has('--help') || args.has('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const unknown = argv.filter((a) => !['--check-migrations', '--foreground'].includes(a));
  if (unknown.length) {
    process.stderr.write(`bangerd: unknown argument ${unknown[0]}\n${USAGE}\n`);
    process.exit(2);
  }
  const layout = resolveLayout();
  if (args.has('--check-migrations')) {
    const s = checkMigrations(layout.dbPath);
    process.stdout.write(`store ${layout.dbPath}: schema ${s.current}, binary ${s.latest}: ${s.status}\n`);
    process.exit(s.status === 'current' ? 0 : s.status === 'needed' ? 1 : 2);
  }

  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(layout);
    ensureLayout(layout);
  } catch (e) {
    fail(e);
  }
  let lock: DaemonLock;
  try {
    lock = DaemonLock.acquire(layout.lockPath);
  } catch (e) {
    fail(e);
  }
  const log = createLogger(layout.logPath, config.log_level);
  const db = openDb(layout.dbPath);
  try {
    const m = migrate(db);
    if (m.from !== m.to) log.info(m, 'store migrated');
  } catch (e) {
    lock.release();
    fail(e);
  }

  // The process's own teardown, after every service closed (see App.shutdown).
  const onStopped = async () => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    rmSync(layout.socketPath, { force: true });
    rmSync(layout.pidPath, { force: true });
    db.close();
    lock.release();
    log.info('bangerd stopped');
    process.exit(0);
  };
  const { app, router } = await composeDaemon({ layout, config, db, log, runner: new ProcessRunner(), clock: systemClock }, { onStopped });

  // We hold the lock, so any socket left here belongs to a dead daemon: replace it.
  rmSync(layout.socketPath, { force: true });
  const server = createServer((req, res) => void router.handle(req, res));
  server.on('upgrade', (req, socket, head) => void router.handleUpgrade(req, socket, head));
  server.keepAliveTimeout = 5000;
  const oldUmask = process.umask(0o177);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(layout.socketPath, () => resolve());
  });
  process.umask(oldUmask);
  writeFileSync(layout.pidPath, `${process.pid}\n`, { mode: 0o600 });
  log.info({ socket: layout.socketPath, pid: process.pid }, 'bangerd listening');

  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void app.shutdown(sig));
  process.on('uncaughtException', (e) => {
    log.fatal({ err: e }, 'uncaught exception');
    process.stderr.write(`bangerd: fatal: ${e.stack ?? e}\n`);
    process.exit(70);
  });
}

main(process.argv.slice(2)).catch((e) => fail(e instanceof BangerError ? e : toBangerError(e)));
