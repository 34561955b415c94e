import { createReadStream, existsSync, statSync, watch } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { Operation } from '../../api/schemas.js';
import { BangerClient, serviceNotRunning } from '../../client/client.js';
import { ago, printJson, printTable } from '../render.js';
import { printStatus, showDaemonStatus } from './daemon-status.js';

async function stopDaemon(client: BangerClient, timeoutMs = 30_000): Promise<boolean> {
  if (!(await client.ping())) return false;
  const { pid } = await client.status();
  await client.shutdown();
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await sleep(50);
  }
  throw new BangerError('timeout', `bangerd (pid ${pid}) did not stop within ${timeoutMs / 1000}s`, { fix: `kill ${pid}` });
}

/** The service's daemon is managed by systemd or banger's supervisor, not by `banger daemon`. */
function refuseForService(client: BangerClient, verb: 'stop' | 'restart'): void {
  if (!client.layout.service) return;
  throw new BangerError(
    'precondition_failed',
    `bangerd runs as the banger system service (${client.layout.socketPath}): \`banger daemon ${verb}\` manages only a private daemon`,
    {
      fix: `as root: banger system ${verb}`,
    },
  );
}

function currentStage(op: Operation): string {
  return op.stages.at(-1)?.name ?? '-';
}

/** Pretty-prints pino JSON lines: time level msg [op] extra. */
function formatLogLine(line: string): string {
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    const { time, level, msg, op, pid: _pid, ...rest } = o;
    const levels: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
    const extra = Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '';
    return `${time} ${(levels[level as number] ?? String(level)).padEnd(5)} ${msg ?? ''}${op ? ` (${op})` : ''}${extra}`;
  } catch {
    return line;
  }
}

async function printLog(path: string, lines: number, raw: boolean, follow: boolean): Promise<void> {
  if (!existsSync(path)) {
    if (!follow) throw new BangerError('not_found', `no daemon log at ${path} yet`, { fix: 'start the daemon: `banger daemon start`' });
  }
  let offset = 0;
  if (existsSync(path)) {
    const text = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      createReadStream(path)
        .on('data', (c) => chunks.push(c as Buffer))
        .on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
        .on('error', reject);
    });
    offset = Buffer.byteLength(text);
    const all = text.split('\n').filter(Boolean);
    for (const l of all.slice(-lines)) process.stdout.write(`${raw ? l : formatLogLine(l)}\n`);
  }
  if (!follow) return;
  let partial = '';
  const readMore = () => {
    if (!existsSync(path)) return;
    const size = statSync(path).size;
    if (size < offset) offset = 0; // rotated
    if (size === offset) return;
    const stream = createReadStream(path, { start: offset, end: size - 1 });
    offset = size;
    stream.on('data', (c) => {
      partial += c.toString();
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      for (const l of parts) if (l) process.stdout.write(`${raw ? l : formatLogLine(l)}\n`);
    });
  };
  const w = existsSync(path) ? watch(path, readMore) : undefined;
  const poll = setInterval(readMore, 500);
  await new Promise<void>((resolve) =>
    process.once('SIGINT', () => {
      w?.close();
      clearInterval(poll);
      resolve();
    }),
  );
}

export function registerDaemonCommands(program: Command): void {
  const daemon = program.command('daemon').description('manage the bangerd daemon');

  daemon
    .command('start')
    .description('start bangerd if it is not running')
    .option('--json', 'print status as JSON')
    .action(async (opts: { json?: boolean }) => {
      const client = new BangerClient({ autostart: false });
      if (!(await client.ping())) {
        if (client.layout.service) throw serviceNotRunning(client.layout);
        await (await import('../../client/autostart.js')).startDaemon(client.layout, () => client.ping());
      }
      const s = await client.status();
      opts.json ? printJson(s) : printStatus(s);
    });

  daemon
    .command('stop')
    .description('stop bangerd gracefully (running VMs keep running)')
    .action(async () => {
      const client = new BangerClient({ autostart: false });
      refuseForService(client, 'stop');
      const stopped = await stopDaemon(client);
      process.stdout.write(stopped ? 'bangerd stopped\n' : 'bangerd is not running\n');
    });

  daemon
    .command('restart')
    .description('stop and start bangerd (running VMs keep running and are re-adopted)')
    .option('--json', 'print status as JSON')
    .action(async (opts: { json?: boolean }) => {
      const client = new BangerClient({ autostart: false });
      refuseForService(client, 'restart');
      await stopDaemon(client);
      await (await import('../../client/autostart.js')).startDaemon(client.layout, () => client.ping());
      const s = await client.status();
      opts.json ? printJson(s) : printStatus(s);
    });

  daemon.command('status').description('show daemon status (starts the daemon when needed)').option('--json', 'print as JSON').action(showDaemonStatus);

  daemon
    .command('logs')
    .description("show the daemon's log")
    .option('-f, --follow', 'keep printing new lines')
    .option('-n, --lines <n>', 'lines to show', '100')
    .option('--raw', 'print the JSON lines as written')
    .action(async (opts: { follow?: boolean; lines: string; raw?: boolean }) => {
      const n = Number(opts.lines);
      if (!Number.isInteger(n) || n < 0)
        throw new BangerError('bad_request', `--lines must be a non-negative integer, got "${opts.lines}"`, { details: 'usage' });
      const client = new BangerClient({ autostart: false });
      await printLog(client.layout.logPath, n, !!opts.raw, !!opts.follow);
    });

  daemon
    .command('ops')
    .description('list recent and running operations')
    .option('--json', 'print as JSON')
    .action(async (opts: { json?: boolean }) => {
      const ops = await new BangerClient().operations();
      if (opts.json) return printJson({ operations: ops });
      printTable(
        ['ID', 'KIND', 'TARGET', 'STATE', 'STAGE', 'STARTED'],
        ops.map((o) => [o.id, o.kind, o.target, o.state, currentStage(o), ago(o.createdAt)]),
      );
    });
}
