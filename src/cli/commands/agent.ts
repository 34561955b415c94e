import type { Command } from 'commander';
import type { AgentSession, AgentStartResult } from '../../api/agent-schemas.js';
import { BangerError } from '../../api/errors.js';
import type { Vm } from '../../api/schemas.js';
import { BangerClient } from '../../client/client.js';
import { agentNameProblem, redactAssignments, tmuxAttachArgv } from '../../util/coding-agents.js';
import { InvalidArgumentError } from '../commander.js';
import { ago, printJson, printTable, sanitizeInline } from '../render.js';
import { execInVm, runningVm } from './proc.js';

/**
 * `vm agent start|attach|list` and the attach `vm run --agent` ends with (docs/agents.md): coding
 * agents in named tmux sessions in a VM, started by the daemon (/v1/vms/:ref/agents), attached to
 * through the process API under a PTY. tmux's own detach (its prefix, then d) ends the attach and
 * leaves the agent running; banger's detach keys are off, so every key reaches tmux.
 */

function usage(message: string, fix?: string): BangerError {
  return new BangerError('bad_request', message, { details: 'usage', ...(fix ? { fix } : {}) });
}

/** An agent name from the command line: checked before any request (it names a tmux session). */
export function agentNameArg(name: string): string {
  const problem = agentNameProblem(name);
  if (problem)
    throw new InvalidArgumentError(
      `"${sanitizeInline(name)}" ${problem}: give an agent like claude, opencode, pi or codex, or an [agents.NAME] of config.toml`,
    );
  return name;
}

/** How to come back to an agent, for the messages after a detach or a start. */
export const attachHint = (vm: string, session: string, only: boolean): string =>
  `banger vm agent attach ${vm}${only ? '' : ` --agent ${sanitizeInline(session)}`}`;

/** What `vm run --agent` and `vm agent start` say about a started (or reused) session. */
export function startedText(vm: string, r: AgentStartResult): string {
  const what = r.created ? `started ${sanitizeInline(r.agent)}` : `${sanitizeInline(r.agent)} was already running`;
  return `${what} in ${vm} (tmux session ${sanitizeInline(r.session)}, in ${sanitizeInline(r.cwd)})`;
}

/** The session to attach to: the one named, else the only one banger started. */
export function pickSession(sessions: readonly AgentSession[], vm: string, wanted?: string): AgentSession {
  if (wanted !== undefined) {
    const s = sessions.find((x) => x.name === wanted);
    if (!s)
      throw new BangerError('not_found', `no agent session ${wanted} in ${vm}`, {
        fix: `start it: banger vm agent start ${vm} ${wanted} (sessions there: banger vm agent list ${vm})`,
      });
    return s;
  }
  const agents = sessions.filter((s) => s.command !== null);
  if (agents.length === 1) return agents[0] as AgentSession;
  if (agents.length === 0)
    throw new BangerError('not_found', `no agent session in ${vm}`, { fix: `start one: banger vm agent start ${vm} claude (or opencode, pi, codex)` });
  // Session names are guest data: only one that is an agent name goes into a command to copy.
  const named = agents.filter((s) => agentNameProblem(s.name) === undefined);
  const shown = agents.map((s) => (agentNameProblem(s.name) === undefined ? s.name : `${sanitizeInline(s.name)} (not an agent name)`));
  throw usage(
    `${vm} runs ${agents.length} agent sessions (${shown.join(', ')}): say which`,
    named.length ? `banger vm agent attach ${vm} --agent ${(named[0] as AgentSession).name}` : `see them: banger vm agent list ${vm}`,
  );
}

/**
 * Attaches this terminal to the session (tmux attach under a PTY in the guest) until tmux detaches
 * or the session ends, then says which and how to come back.
 */
export async function attachAgent(c: BangerClient, v: Vm, session: string, only: boolean): Promise<void> {
  if (!process.stdin.isTTY || !process.stdout.isTTY)
    throw new BangerError('bad_request', 'attaching to an agent needs a terminal (stdin and stdout are not both one)', {
      fix: `run it in a terminal, or look at the session later: ${attachHint(v.name, session, only)}`,
    });
  await execInVm(c, v, tmuxAttachArgv(session), { interactive: true, tty: true, cwd: '/', detachKeys: '' });
  const still = (await c.agentSessions(v.id).catch(() => undefined))?.sessions.some((s) => s.name === session);
  if (still === false) process.stderr.write(`\r\nthe ${sanitizeInline(session)} session in ${v.name} has ended\r\n`);
  else process.stderr.write(`\r\n${sanitizeInline(session)} keeps running in ${v.name}; back to it: ${attachHint(v.name, session, only)}\r\n`);
}

export function registerVmAgentCommands(vm: Command): void {
  const agent = vm
    .command('agent')
    .description('coding agents (claude, opencode, pi, codex, or [agents.NAME] of config.toml) in tmux sessions in a VM: start, attach, list')
    .addHelpText(
      'after',
      [
        '',
        'One command does it all: banger vm run --agent claude ./repo (docs/agents.md).',
        "Detach with tmux's own keys (Ctrl-B then d): the agent keeps running.",
        '',
      ].join('\n'),
    );

  agent
    .command('start')
    .description('start an agent in its tmux session (named after it) in a running VM; a session already there is reused')
    .argument('<vm>', 'VM name or id prefix')
    .argument('<agent>', 'claude, opencode, pi, codex, or an [agents.NAME] of config.toml', agentNameArg)
    .option('--cwd <dir>', 'guest working directory (default: the workspace, else /root)')
    .option('--json', 'print the result as JSON')
    .action(async (ref: string, name: string, o: { cwd?: string; json?: boolean }) => {
      const c = new BangerClient();
      const v = await runningVm(c, ref);
      const r = await c.startAgent(v.id, { agent: name, ...(o.cwd !== undefined ? { cwd: o.cwd } : {}) });
      if (o.json) return printJson({ ...r, command: redactAssignments(r.command) });
      process.stdout.write(`${startedText(v.name, r)}\nattach: ${attachHint(v.name, r.session, false)}\n`);
    });

  agent
    .command('attach')
    .description("attach this terminal to an agent's tmux session (detach with tmux's prefix, then d)")
    .argument('<vm>', 'VM name or id prefix')
    .option('--agent <name>', 'the agent session (default: the only one)', agentNameArg)
    .action(async (ref: string, o: { agent?: string }) => {
      const c = new BangerClient();
      const v = await runningVm(c, ref);
      const { sessions } = await c.agentSessions(v.id);
      const s = pickSession(sessions, v.name, o.agent);
      await attachAgent(c, v, s.name, o.agent === undefined);
    });

  agent
    .command('list')
    .alias('ls')
    .description("the VM's tmux sessions; COMMAND is what banger started in it (none: a session of someone else's)")
    .argument('<vm>', 'VM name or id prefix')
    .option('--json', 'print as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const c = new BangerClient();
      const v = await runningVm(c, ref);
      // The daemon hides environment values already; an older one did not.
      const sessions = (await c.agentSessions(v.id)).sessions.map((s) => ({ ...s, command: s.command === null ? null : redactAssignments(s.command) }));
      if (o.json) return printJson({ sessions });
      printTable(
        ['SESSION', 'ATTACHED', 'WINDOWS', 'CREATED', 'COMMAND'],
        sessions.map((s) => [s.name, s.attached, s.windows, ago(s.createdAt), s.command]),
      );
    });
}
