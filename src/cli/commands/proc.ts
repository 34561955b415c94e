import type { Command } from 'commander';
import { BangerError } from '../../api/errors.js';
import type { Proc, ProcEvent, ProcStartRequest } from '../../api/proc-schemas.js';
import type { Vm } from '../../api/schemas.js';
import type { AttachHandle } from '../../client/attach.js';
import { BangerClient } from '../../client/client.js';
import { formatDuration } from '../../util/duration.js';
import { DEFAULT_DETACH_KEYS, DetachKeyScanner, parseDetachKeys } from '../detach-keys.js';
import { endNotice, exitStatusOf, signalName, signalNumber } from '../exit-status.js';
import { envArg, offsetArg, procNameArg, signalArg, timeoutArg } from '../proc-args.js';
import { ago, formatError, printJson, printKeyValues, printTable, sanitizeInline } from '../render.js';
import { driftWarning, workspaceOf } from '../workspace-drift.js';

/**
 * `vm exec`, the `vm proc` group (and its `vm ps` and `vm session` spellings): thin clients of the
 * process API (docs/processes.md, "Daemon API"). Program output is passed through as raw bytes,
 * stdout to stdout and stderr to stderr, as ssh does; everything the CLI itself prints about a
 * process (names, commands, states) is sanitised.
 */

const client = async (): Promise<BangerClient> => new BangerClient();

/** The VM, which must be running: the process API answers only for a running guest. */
export async function runningVm(c: BangerClient, ref: string): Promise<Vm> {
  const v = await c.vm(ref);
  if (v.state !== 'running') {
    throw new BangerError('precondition_failed', `VM ${v.name} is ${v.state}: processes run only in a running VM`, {
      fix: v.state === 'paused' || v.state === 'suspended' ? `resume it: banger vm resume ${v.name}` : `start it: banger vm start ${v.name}`,
    });
  }
  return v;
}

function usage(message: string, fix?: string): BangerError {
  return new BangerError('bad_request', message, { details: 'usage', ...(fix ? { fix } : {}) });
}

/** How the CLI names a process in its own messages. */
const label = (p: { id: string; name: string | null }) => sanitizeInline(p.name ?? p.id);
/** A process id for a command line the user may copy (the daemon's answer, printed sanitised like every field). */
const idOf = (p: { id: string }) => sanitizeInline(p.id);
const commandText = (p: Pick<Proc, 'argv' | 'shell'>) => p.shell ?? (p.argv ?? []).join(' ');

/** Raw program output to the matching local stream (blocking writes on Linux pipes, files and TTYs). */
function writeOutput(stream: 'stdout' | 'stderr', data: Buffer): void {
  (stream === 'stdout' ? process.stdout : process.stderr).write(data);
}

function onOutputEvent(e: ProcEvent): void {
  if (e.type === 'stdout' || e.type === 'stderr') writeOutput(e.type, Buffer.from(e.data, 'base64'));
}

/** Prints how the process ended (when the status alone does not say it) and sets the exit status. */
function finishWith(p: Proc, timeoutMs?: number): void {
  const notice = endNotice(p, sanitizeInline(commandText(p) || p.id), timeoutMs ? formatDuration(timeoutMs) : undefined);
  if (notice) process.stderr.write(`${notice}\n`);
  process.exitCode = exitStatusOf(p);
}

/**
 * Forwards SIGINT, SIGTERM and SIGHUP to the guest process while the CLI follows it (like a shell
 * passes Ctrl-C to its foreground job); the third one stops following instead (the process keeps
 * running). Returns the function that removes the handlers.
 */
function forwardSignals(target: () => { vm: string; proc: string } | undefined, c: BangerClient, stopFollowing: () => void): () => void {
  let count = 0;
  const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((sig) => {
    const h = () => {
      count++;
      const t = target();
      if (count >= 3 || !t) return stopFollowing();
      c.signalProcess(t.vm, t.proc, sig.slice(3)).catch(() => {});
    };
    process.on(sig, h);
    return [sig, h] as const;
  });
  return () => {
    for (const [sig, h] of handlers) process.off(sig, h);
  };
}

interface AttachOptions {
  /** Forward local stdin to the process. */
  stdin: boolean;
  /** EOF on local stdin closes the process's stdin (`exec -i`); `proc attach` never closes it. */
  eofOnEnd: boolean;
  /** The process has a PTY: raw mode on a local terminal, window size followed. */
  pty: boolean;
  stdoutFrom: number;
  stderrFrom: number;
  detachKeys: Buffer;
  /**
   * What SIGINT, SIGTERM and SIGHUP to the CLI do: `forward` them to the process (a command we
   * run), or `detach` (watching someone's process). On a terminal in raw mode Ctrl-C is a byte
   * for the process; a signal then only comes from outside and detaches.
   */
  signals: 'forward' | 'detach';
}

/**
 * Attaches the local terminal (or pipes) to a process until it exits or the user types the detach
 * keys. Resolves with the process when it exited, undefined when detached. The local terminal is
 * restored on every way out (exit, detach, error, signal).
 */
async function attachTerminal(c: BangerClient, vm: string, procId: string, o: AttachOptions): Promise<Proc | undefined> {
  const stdin = process.stdin;
  const rawMode = o.pty && o.stdin && stdin.isTTY;
  const restore = () => {
    if (rawMode && stdin.isTTY) stdin.setRawMode(false);
  };
  // A terminal left in raw mode is unusable: restore it even on a crash or process.exit.
  process.once('exit', restore);
  const cleanups: Array<() => void> = [() => process.off('exit', restore), restore];
  let detached = false;
  try {
    // Signals first: a default SIGTERM would end the CLI on the spot, with the terminal raw.
    let handle: AttachHandle | undefined;
    let stopRequested = false;
    const stop = () => {
      stopRequested = true;
      handle?.close();
    };
    if (!rawMode && o.signals === 'forward') {
      // Without a local PTY in raw mode, Ctrl-C reaches us as a signal: pass it on.
      cleanups.push(forwardSignals(() => ({ vm, proc: procId }), c, stop));
    } else {
      // Detach (the process keeps running); the terminal is restored by the cleanups below.
      const onSignal = (sig: NodeJS.Signals) => {
        process.exitCode = 128 + (signalNumber(sig.slice(3)) ?? 15);
        stop();
      };
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
      cleanups.push(() => {
        for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
      });
    }
    // Raw mode before the first byte of output: whatever the process shows (a prompt) may be
    // answered at once, and keys typed in cooked mode would wait for a newline (Ctrl-Q even be
    // eaten by flow control).
    if (rawMode) stdin.setRawMode(true);
    const attached = await c.attachProcess(vm, procId, { stdoutFrom: o.stdoutFrom, stderrFrom: o.stderrFrom });
    handle = attached;
    if (stopRequested) attached.close();
    attached.onOutput((out) => writeOutput(out.stream, out.data));
    if (o.pty && process.stdout.isTTY) {
      const resize = () => {
        c.resizeProcess(vm, procId, process.stdout.rows || 24, process.stdout.columns || 80).catch(() => {});
      };
      resize();
      process.stdout.on('resize', resize);
      cleanups.push(() => process.stdout.off('resize', resize));
    }
    if (o.stdin) {
      // Detach keys only from a terminal: piped bytes are data, never a command to the CLI.
      const scanner = new DetachKeyScanner(stdin.isTTY ? o.detachKeys : Buffer.alloc(0));
      const onData = (chunk: Buffer) => {
        const forward = scanner.push(chunk);
        if (forward.length && !attached.write(forward)) {
          stdin.pause();
          attached.drain().then(() => stdin.resume());
        }
        if (scanner.detached) {
          detached = true;
          stdin.pause();
          attached.close();
        }
      };
      const onEnd = () => {
        const rest = scanner.flush();
        if (rest.length) attached.write(rest);
        if (o.eofOnEnd) attached.end();
      };
      stdin.on('data', onData);
      stdin.once('end', onEnd);
      cleanups.push(() => {
        stdin.off('data', onData);
        stdin.off('end', onEnd);
        stdin.pause();
        // Stop holding the event loop open for input we no longer read.
        stdin.destroy();
      });
    }
    const final = await attached.done;
    return detached ? undefined : final;
  } finally {
    for (const f of cleanups.reverse()) f();
  }
}

interface ExecOptions {
  cwd?: string;
  env?: string[];
  interactive?: boolean;
  tty?: boolean;
  user?: string;
  timeout?: number;
  detach?: boolean;
  name?: string;
  detachKeys: string;
}

function detachKeysArg(spec: string): Buffer {
  const keys = parseDetachKeys(spec);
  if (!keys) throw usage(`--detach-keys takes keys like "ctrl-p,ctrl-q" (ctrl-<letter> or one character, comma-separated), got "${spec}"`);
  return keys;
}

/** The start request for `vm exec`-style flags. */
export function startRequest(command: string[], o: Omit<ExecOptions, 'detachKeys'>, defaultCwd: string | undefined): Omit<ProcStartRequest, 'mode'> {
  const cwd = o.cwd ?? defaultCwd;
  const interactive = !!o.interactive || !!o.tty;
  return {
    argv: command,
    ...(cwd !== undefined ? { cwd } : {}),
    ...(o.env?.length ? { env: o.env } : {}),
    ...(o.user !== undefined ? { user: o.user } : {}),
    ...(o.timeout !== undefined ? { timeoutMs: o.timeout } : {}),
    ...(o.name !== undefined ? { name: o.name } : {}),
    // A PTY's input is always writable (keys, and a later attach); a pipe only with -i.
    stdin: interactive ? 'pipe' : 'null',
    ...(o.tty ? { pty: { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 } } : {}),
  };
}

/**
 * Runs a command in a running VM through the agent and resolves with nothing; sets the exit status.
 * Shared by `vm exec` and `vm run -- CMD`.
 */
export async function execInVm(c: BangerClient, v: Vm, command: string[], o: ExecOptions): Promise<void> {
  const body = startRequest(command, o, workspaceOf(v)?.guestPath);
  if (o.detach) {
    const p = await c.startProcess(v.id, body);
    process.stdout.write(`${label(p)}\n`);
    process.stderr.write(`started ${label(p)} in ${v.name}; follow it: banger vm proc logs -f ${v.name} ${label(p)}\n`);
    return;
  }
  if (o.interactive || o.tty) {
    const keys = detachKeysArg(o.detachKeys);
    const p = await c.startProcess(v.id, body);
    const final = await attachTerminal(c, v.id, p.id, {
      stdin: !!o.interactive,
      eofOnEnd: true,
      pty: !!o.tty,
      stdoutFrom: 0,
      stderrFrom: 0,
      detachKeys: keys,
      signals: 'forward',
    });
    if (!final) {
      process.stderr.write(`\r\ndetached from ${label(p)} (still running); again: banger vm proc attach ${v.name} ${idOf(p)}\r\n`);
      return;
    }
    return finishWith(final, o.timeout);
  }
  let procId: string | undefined;
  const ac = new AbortController();
  const removeHandlers = forwardSignals(
    () => (procId ? { vm: v.id, proc: procId } : undefined),
    c,
    () => ac.abort(),
  );
  let final: Proc | undefined;
  try {
    final = await c.streamProcess(
      v.id,
      body,
      (e) => {
        if (e.type === 'start') procId = e.proc.id;
        else onOutputEvent(e);
      },
      ac.signal,
    );
  } finally {
    removeHandlers();
  }
  if (!final) {
    process.stderr.write(
      `stopped following${procId ? ` ${idOf({ id: procId })}; it may still run: banger vm proc show ${v.name} ${idOf({ id: procId })}` : ''}\n`,
    );
    process.exitCode = 130;
    return;
  }
  finishWith(final, o.timeout);
}

function addExecOptions(cmd: Command): Command {
  return cmd
    .option('--cwd <dir>', 'working directory in the guest (default: the workspace, else /root)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', envArg)
    .option('-i, --interactive', 'attach stdin (EOF on it closes the process stdin)')
    .option('-t, --tty', 'allocate a pseudo-terminal (raw mode locally, window size followed)')
    .option('-u, --user <user>', 'run as this guest user (name or uid; default root)')
    .option('--timeout <duration>', 'kill the whole process group after this long (e.g. 30s, 15m); exit 124', timeoutArg)
    .option('--detach-keys <keys>', 'keys that detach from -i/-t and leave the process running', DEFAULT_DETACH_KEYS);
}

/** `vm exec`. */
export function registerExecCommand(vm: Command): void {
  addExecOptions(
    vm
      .command('exec')
      .description('run a command in a running VM through its agent (in the workspace when one is prepared); its exit status is passed through')
      .argument('<vm>', 'VM name or id prefix')
      .argument('<command...>', 'command and arguments (put them after --)'),
  )
    .option('-d, --detach', 'start it and print its id; follow it with vm proc logs -f')
    .option('--name <name>', 'name the process (find it by name in vm proc …)', procNameArg)
    .addHelpText(
      'after',
      [
        '',
        'stdout and stderr stay apart; a command killed by signal N exits 128+N, a missing one 127,',
        'a --timeout 124. Ctrl-C is passed on to the process (a third one stops following).',
        'With -i/-t on a terminal, Ctrl-P Ctrl-Q detaches and leaves it running.',
        '',
        'Examples:',
        '  banger vm exec dev -- make test',
        "  banger vm exec dev -- sh -c 'ls | wc -l'",
        '  banger vm exec -it dev -- bash',
        '  banger vm exec dev -d --name server -- python3 -m http.server',
        '',
      ].join('\n'),
    )
    .action(async (ref: string, command: string[], o: ExecOptions) => {
      detachKeysArg(o.detachKeys); // a usage error before any request
      const c = await client();
      const v = await runningVm(c, ref);
      const ws = workspaceOf(v);
      if (ws && o.cwd === undefined) {
        const warning = await driftWarning(ws, v.name);
        if (warning) process.stderr.write(`${sanitizeInline(warning)}\n`);
      }
      await execInVm(c, v, command, o);
    });
}

function stateText(p: Proc): string {
  if (p.state === 'running') return 'running';
  if (p.state === 'lost') return 'lost';
  return `exited (${exitStatusOf(p)})`;
}

const isoOf = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function printProc(p: Proc): void {
  printKeyValues([
    ['id', p.id],
    ['name', p.name],
    ['command', p.shell !== null ? `sh -c ${p.shell}` : (p.argv ?? []).join(' ')],
    ['state', stateText(p)],
    ['pid', p.pid],
    ['pty', p.pty ? 'yes' : 'no'],
    ['exit code', p.exitCode],
    ['signal', p.signal === null ? null : /^\d+$/.test(p.signal) ? `signal ${p.signal}` : `SIG${p.signal}`],
    ['timed out', p.timedOut ? 'yes' : null],
    ['error', p.code],
    ['started', isoOf(p.startedMs)],
    ['ended', isoOf(p.endedMs)],
    ['stdout', `${p.stdoutBytes} bytes`],
    ['stderr', `${p.stderrBytes} bytes`],
    ['truncated', p.truncated ? 'yes (the guest log cap was reached)' : null],
    ['stdin', `${p.stdin}${p.stdinBytes ? ` (${p.stdinBytes} bytes)` : ''}`],
  ]);
}

/** `list`; sessions are the named processes. */
function listCommand(cmd: Command, onlyNamed = false): Command {
  return cmd
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const c = await client();
      const v = await runningVm(c, ref);
      const procs = (await c.processes(v.id)).filter((p) => !onlyNamed || p.name !== null);
      if (o.json) return printJson({ procs });
      printTable(
        ['ID', 'NAME', 'STATE', 'PID', 'TTY', 'STARTED', 'COMMAND'],
        procs.map((p) => [p.id, p.name, stateText(p), p.pid, p.pty ? 'pty' : null, ago(isoOf(p.startedMs)), commandText(p)]),
      );
    });
}

/** send: DATA bytes (`--line` adds a newline) at the process's current stdin offset, `--eof` closes it. */
async function send(ref: string, procRef: string, data: string | undefined, o: { eof?: boolean; line?: boolean }): Promise<void> {
  if (data === undefined && !o.eof) throw usage('nothing to send', 'give DATA, --eof, or both');
  const c = await client();
  const v = await runningVm(c, ref);
  const p = await c.process(v.id, procRef);
  if (p.stdin !== 'open') {
    throw new BangerError('conflict', `the stdin of ${label(p)} is ${p.stdin === 'null' ? 'not a pipe (started without -i)' : 'closed'}`, {
      fix: 'start the process with banger vm exec -i (or vm session start)',
    });
  }
  const bytes = Buffer.from(`${data ?? ''}${o.line ? '\n' : ''}`, 'utf8');
  const CHUNK = 384 * 1024; // under the API's 512 KiB a write
  let offset = p.stdinBytes;
  let at = 0;
  do {
    const chunk = bytes.subarray(at, at + CHUNK);
    const last = at + chunk.length >= bytes.length;
    offset = (await c.writeProcessStdin(v.id, p.id, offset, chunk, last && !!o.eof)).offset;
    at += chunk.length;
  } while (at < bytes.length);
  process.stderr.write(`sent ${bytes.length} bytes to ${label(p)}${o.eof ? ' and closed its stdin' : ''}\n`);
}

async function signal(ref: string, procRef: string, signo: number): Promise<void> {
  const c = await client();
  const v = await runningVm(c, ref);
  const p = await c.signalProcess(v.id, procRef, signo);
  process.stdout.write(`sent ${signalName(signo)} to ${label(p)}\n`);
}

/** The `vm proc` verbs on `group`; for `noun` "session", the `vm session` spellings (start, stop and kill differ). */
function registerProcVerbs(group: Command, noun: 'process' | 'session'): void {
  const procArg = `${noun} id or name`;
  const session = noun === 'session';

  if (session) {
    addExecOptions(
      group
        .command('start')
        .description('start a named process with its stdin open, detached (vm exec --detach --name)')
        .argument('<vm>', 'VM name or id prefix')
        .argument('<command...>', 'command and arguments (put them after --)'),
    )
      .requiredOption('--name <name>', 'the session name', procNameArg)
      .action(async (ref: string, command: string[], o: ExecOptions) => {
        detachKeysArg(o.detachKeys);
        const c = await client();
        const v = await runningVm(c, ref);
        await execInVm(c, v, command, { ...o, interactive: true, detach: true });
      });
  }

  listCommand(
    group
      .command('list')
      .alias('ls')
      .description(session ? 'list the sessions (named processes) of a VM' : 'list the processes of a VM (running and finished ones the guest still keeps)'),
    session,
  );

  group
    .command('show')
    .description(`show one ${noun}`)
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .option('--json', 'print as JSON')
    .action(async (ref: string, procRef: string, o: { json?: boolean }) => {
      const c = await client();
      const v = await runningVm(c, ref);
      const p = await c.process(v.id, procRef);
      o.json ? printJson(p) : printProc(p);
    });

  group
    .command('logs')
    .description(`print a ${noun}'s output (stdout to stdout, stderr to stderr), from byte offsets`)
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .option('-f, --follow', 'keep printing until the process exits (Ctrl-C stops following; it keeps running)')
    .option('--from <offset>', 'stdout byte offset to start at', offsetArg('--from'), 0)
    .option('--stderr-from <offset>', 'stderr byte offset to start at', offsetArg('--stderr-from'), 0)
    .action(async (ref: string, procRef: string, o: { follow?: boolean; from: number; stderrFrom: number }) => {
      const c = await client();
      const v = await runningVm(c, ref);
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      try {
        await c.processOutput(v.id, procRef, { stdoutFrom: o.from, stderrFrom: o.stderrFrom, follow: !!o.follow, signal: ac.signal }, onOutputEvent);
      } finally {
        process.off('SIGINT', stop);
      }
    });

  group
    .command('attach')
    .description(`attach this terminal to a ${noun}: its new output, your input (Ctrl-P Ctrl-Q detaches; it keeps running)`)
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .option('--no-stdin', 'only watch: do not forward input')
    .option('--from <offset>', 'replay stdout from this byte offset (default: only new output)', offsetArg('--from'))
    .option('--stderr-from <offset>', 'replay stderr from this byte offset (default: only new output)', offsetArg('--stderr-from'))
    .option('--detach-keys <keys>', 'keys that detach (comma-separated, ctrl-<letter> or one character; "" disables)', DEFAULT_DETACH_KEYS)
    .addHelpText(
      'after',
      [
        '',
        'The process keeps running when you detach (Ctrl-P Ctrl-Q, as in docker) or the connection drops.',
        'Ctrl-C goes to the process while you type into it; when only watching (--no-stdin, or a process',
        'without input) it detaches. Attach never closes its stdin: banger vm proc send VM PROC --eof does.',
        'One attach at a time may type; others only watch.',
        '',
      ].join('\n'),
    )
    .action(async (ref: string, procRef: string, o: { stdin: boolean; from?: number; stderrFrom?: number; detachKeys: string }) => {
      const keys = detachKeysArg(o.detachKeys);
      const c = await client();
      const v = await runningVm(c, ref);
      const p = await c.process(v.id, procRef);
      if (p.state !== 'running') {
        process.stderr.write(`${label(p)} is not running (${stateText(p)}); its output: banger vm proc logs ${v.name} ${idOf(p)}\n`);
        process.exitCode = 1;
        return;
      }
      const forwardStdin = o.stdin && p.stdin === 'open';
      if (o.stdin && p.stdin !== 'open') process.stderr.write(`${label(p)} takes no input (stdin ${sanitizeInline(p.stdin)}): watching only\n`);
      const final = await attachTerminal(c, v.id, p.id, {
        stdin: forwardStdin,
        eofOnEnd: false,
        pty: p.pty,
        stdoutFrom: o.from ?? p.stdoutBytes,
        stderrFrom: o.stderrFrom ?? p.stderrBytes,
        detachKeys: keys,
        // Typing into it: Ctrl-C is for it (docker's sig-proxy); only watching: Ctrl-C detaches.
        signals: forwardStdin ? 'forward' : 'detach',
      });
      if (!final) process.stderr.write(`\r\ndetached from ${label(p)} (still running)\r\n`);
      else finishWith(final);
    });

  group
    .command('send')
    .description(`append DATA to a ${noun}'s stdin (at its current offset)`)
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .argument('[data]', 'bytes to send (UTF-8)')
    .option('-l, --line', 'append a newline to DATA')
    .option('--eof', 'then close its stdin')
    .action(send);

  if (session) {
    group
      .command('stop')
      .description('ask a session to end (SIGTERM)')
      .argument('<vm>', 'VM name or id prefix')
      .argument('<proc>', procArg)
      .action((ref: string, procRef: string) => signal(ref, procRef, 15));
    group
      .command('kill')
      .description('kill a session (SIGKILL, its whole process group)')
      .argument('<vm>', 'VM name or id prefix')
      .argument('<proc>', procArg)
      .action((ref: string, procRef: string) => signal(ref, procRef, 9));
    return;
  }

  group
    .command('kill')
    .description('send a signal to a process (its whole process group)')
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .option('-s, --signal <signal>', 'signal name or number (TERM, KILL, INT, HUP, 9…)', signalArg, 15)
    .action((ref: string, procRef: string, o: { signal: number }) => signal(ref, procRef, o.signal));

  group
    .command('wait')
    .description('wait for a process to end; its exit status is passed through')
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc>', procArg)
    .option('--timeout <duration>', 'give up after this long (the process keeps running; exit 1)', timeoutArg)
    .option('--json', 'print the process as JSON')
    .action(async (ref: string, procRef: string, o: { timeout?: number; json?: boolean }) => {
      const c = await client();
      const v = await runningVm(c, ref);
      // maxBuffer 0: the output is not wanted here (vm proc logs prints it).
      const { proc: p, result } = await c.waitProcess(v.id, procRef, o.timeout, 0);
      if (o.json) printJson(p);
      if (!result || p.state === 'running') {
        throw new BangerError('timeout', `${label(p)} is still running after ${formatDuration(o.timeout ?? 0)}`, {
          fix: `wait longer, or stop it: banger vm proc kill ${v.name} ${idOf(p)}`,
        });
      }
      if (o.json) process.exitCode = exitStatusOf(p);
      else finishWith(p);
    });

  group
    .command('rm')
    .description('forget finished processes: their output goes from the guest')
    .argument('<vm>', 'VM name or id prefix')
    .argument('<proc...>', 'process ids or names')
    .option('-f, --force', 'kill running ones first')
    .action(async (ref: string, procRefs: string[], o: { force?: boolean }) => {
      const c = await client();
      const v = await runningVm(c, ref);
      let failed = false;
      for (const procRef of procRefs) {
        try {
          await c.forgetProcess(v.id, procRef, { kill: !!o.force });
          process.stdout.write(`removed ${sanitizeInline(procRef)}\n`);
        } catch (e) {
          failed = true;
          const err =
            e instanceof BangerError && e.code === 'conflict' && !o.force ? new BangerError('conflict', e.message, { fix: `stop it first, or rm --force` }) : e;
          process.stderr.write(formatError(err));
        }
      }
      if (failed) process.exitCode = 1;
    });
}

/** `vm proc …`, `vm ps`, `vm session …`. */
export function registerProcCommands(vm: Command): void {
  const proc = vm.command('proc').description('processes in a running VM: list, logs, attach, send input, signal, wait, forget');
  registerProcVerbs(proc, 'process');

  listCommand(vm.command('ps').description('list the processes of a VM (vm proc list)'));

  const session = vm.command('session').description('named long-running processes (the vm proc verbs under their session names)');
  registerProcVerbs(session, 'session');
}
