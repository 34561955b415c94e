import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileAtomic } from './owner.js';
import { SUPERVISOR } from './paths.js';
import { Supervisor, type SupervisorSpec } from './supervisor.js';

/**
 * The supervisor process `banger system start` spawns detached: `node supervisor-main.js <state
 * file>`. Its stdout/stderr (and its children's) are the log file; its pid file is
 * /run/banger-root/supervisor.pid, created exclusively so two supervisors never run.
 */

const log = (line: string) => process.stdout.write(`${new Date().toISOString()} supervisor: ${line}\n`);

async function main(statePath: string): Promise<void> {
  const spec = JSON.parse(readFileSync(statePath, 'utf8')) as SupervisorSpec;
  writeFileSync(SUPERVISOR.pidFile, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
  // Replaced atomically: `banger system status` (any user) reads it at any time.
  const save = () => writeFileAtomic(statePath, `${JSON.stringify(spec, null, 2)}\n`, 0o644);
  spec.pid = process.pid;
  spec.pids = {};
  save();
  const sup = new Supervisor(
    spec.children,
    log,
    (pids) => {
      spec.pids = pids;
      save();
    },
    // The daemon starts once the helper listens (or after 10 s: it retries the helper per request).
    async (name) => {
      if (name !== 'bangerd-root') return;
      for (let i = 0; i < 400 && !existsSync(spec.helperSocket); i++) await sleep(25);
    },
  );
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: stopping bangerd and bangerd-root (VMs keep running)`);
    await sup.stop();
    rmSync(SUPERVISOR.pidFile, { force: true });
    rmSync(statePath, { force: true });
    log('stopped');
    process.exit(0);
  };
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => void stop(sig));
  log(`starting for owner ${spec.owner.name} (uid ${spec.owner.uid})`);
  await sup.start();
}

main(process.argv[2] ?? SUPERVISOR.stateFile).catch((e) => {
  log(`fatal: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
