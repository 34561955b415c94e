/**
 * Coding agents in tmux sessions inside a VM (docs/agents.md): `start` runs an agent (a preset
 * of util/coding-agents.ts with the config's `[agents.<name>]` overrides) in a tmux session named
 * after it, idempotently; `list` reads the guest's tmux sessions. Everything runs through the
 * guest process API (ProcessService.exec, argv only: no shell sees config or API values except the
 * agent's command line, which is quoted word by word).
 */

import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentDefinitionView, AgentSession, AgentStartRequest, AgentStartResult } from '../../api/agent-schemas.js';
import { BangerError } from '../../api/errors.js';
import type { ProcResult } from '../../api/proc-schemas.js';
import type { GuestChannel } from '../../guest/guest-channel.js';
import {
  AGENTS_IMAGE_NAME,
  type AgentDefinition,
  agentCommandLine,
  guestCwdProblem,
  parseTmuxSessions,
  redactAssignments,
  tmuxHasSessionArgv,
  tmuxListSessionsArgv,
  tmuxNewSessionArgv,
} from '../../util/coding-agents.js';
import type { ExecOptions, ExecSpec } from './processes.js';

/** Where an agent starts without a workspace or an explicit cwd: root's home. */
export const DEFAULT_AGENT_CWD = '/root';
/** Output kept from a tmux call (the session list is bounded again when parsed). */
const TMUX_MAX_OUTPUT = 256 * 1024;
/** One tmux call may take this long (a stuck guest must not hold the request forever). */
const TMUX_CALL_MS = 30_000;
/**
 * The host's own deadline for one tmux call: the guest enforces TMUX_CALL_MS, a hostile or stuck
 * one may not, so the daemon stops waiting a little later whatever the guest does.
 */
export const TMUX_HOST_BOUND_MS = TMUX_CALL_MS + 5_000;

/**
 * Runs its arguments outside the process's cgroup: the guest agent ends everything left in a
 * process's cgroup when the process exits, and the tmux server that `new-session` may fork must
 * outlive it. The shell moves itself to the root of the cgroup v2 hierarchy (found in
 * /proc/mounts), then becomes tmux. Not a systemd scope: at shutdown, processes in the root cgroup
 * are ended after every unit has stopped, so the image's save of the sessions (an ExecStop) still
 * finds the server. Without cgroup v2 the agent kills by process group, which the server leaves.
 * Fixed text: every value reaches it as a positional argument ("$@"), never as shell code.
 */
export const OUTSIDE_PROC_CGROUP = [
  'while read -r _ mnt fstype _; do',
  '  if [ "$fstype" = cgroup2 ]; then echo 0 > "$mnt/cgroup.procs" 2>/dev/null; break; fi',
  'done < /proc/mounts',
  'exec "$@"',
].join('\n');

/** Waits for the agents image's tmux restore (docs/tmux.md) when the image has it; never fails. */
export const WAIT_FOR_TMUX_RESTORE =
  'if [ -e /etc/systemd/system/banger-tmux.service ] && command -v systemctl >/dev/null 2>&1; then systemctl start banger-tmux.service; fi; exit 0';

export interface AgentSessionDeps {
  agents: readonly AgentDefinition[];
  exec(ref: string, spec: ExecSpec, opts?: ExecOptions): Promise<{ proc: { id: string }; result: ProcResult }>;
  guest(ref: string): Promise<GuestChannel>;
  /** The VM's name and its workspace's guest path (when one was prepared). */
  vmInfo(ref: string): { name: string; workspace?: string };
  /** The `sh -c` script new-session runs through (default OUTSIDE_PROC_CGROUP; tests whose "guest" is this host leave its cgroups alone). */
  leaveCgroupScript?: string;
  /** The host's deadline for one tmux call (default TMUX_HOST_BOUND_MS; tests shorten it). */
  hostBoundMs?: number;
}

export class AgentSessionService {
  constructor(private readonly d: AgentSessionDeps) {}

  /** The agents this daemon knows (env values may be secrets: only their names). */
  definitions(): AgentDefinitionView[] {
    return this.d.agents.map((a) => ({
      name: a.name,
      command: a.command,
      envKeys: Object.keys(a.env),
      image: a.image,
      session: a.session,
      builtin: a.builtin,
    }));
  }

  private definition(name: string): AgentDefinition {
    const def = this.d.agents.find((a) => a.name === name);
    if (!def)
      throw new BangerError('not_found', `no coding agent named "${name}"`, {
        fix: `use one of ${this.d.agents.map((a) => a.name).join(', ')}, or define it in config.toml: [agents.${name}] command = ["…"] (docs/agents.md)`,
      });
    return def;
  }

  /**
   * Runs argv in the guest, waiting at most the host's bound (and while `signal` lets it); the
   * process is forgotten afterwards, also when the wait failed (the guest keeps a bounded number).
   */
  private async run(ref: string, vm: string, argv: string[], env?: Record<string, string>, signal?: AbortSignal): Promise<ProcResult> {
    const boundMs = this.d.hostBoundMs ?? TMUX_HOST_BOUND_MS;
    const hostBound = AbortSignal.timeout(boundMs);
    let started: string | undefined;
    let ended = false;
    try {
      const { proc, result } = await this.d.exec(
        ref,
        { argv, cwd: '/', timeoutMs: TMUX_CALL_MS, ...(env && Object.keys(env).length ? { env: Object.entries(env).map(([k, v]) => `${k}=${v}`) } : {}) },
        {
          maxBuffer: TMUX_MAX_OUTPUT,
          signal: signal ? AbortSignal.any([signal, hostBound]) : hostBound,
          onStarted: (p) => {
            started = p.id;
          },
        },
      );
      started = proc.id;
      ended = true;
      return result;
    } catch (e) {
      if (signal?.aborted) throw new BangerError('cancelled', `the request left before a tmux call in VM ${vm} ended`);
      if (hostBound.aborted)
        throw new BangerError('timeout', `a tmux call in VM ${vm} did not end within ${boundMs / 1000} s`, {
          fix: `the guest may be stuck: try again, or restart the VM (banger vm restart ${vm})`,
        });
      throw e;
    } finally {
      // After a failed wait the process may still run: it is killed, then forgotten, in the background.
      if (started !== undefined) {
        const cleanup = this.forget(ref, started, !ended);
        if (ended) await cleanup;
      }
    }
  }

  /** Forgets a guest process, killing it first when it may still run; best effort (each guest call is bounded). */
  private async forget(ref: string, id: string, kill: boolean): Promise<void> {
    try {
      const channel = await this.d.guest(ref);
      if (kill) {
        await channel.signalProcess(id, 9);
        // A killed process ends at once; its record can be forgotten only then.
        for (let i = 0; i < 20 && (await channel.showProcess(id)).state === 'running'; i++) await sleep(100);
      }
      await channel.forgetProcess(id);
    } catch {
      // Gone already, or the VM stopped: nothing left to clean.
    }
  }

  private static missingTmux(vm: string): BangerError {
    return new BangerError('precondition_failed', `tmux is not installed in VM ${vm}: agents run in tmux sessions`, {
      fix: `create the VM from an image with tmux and the agents, e.g. ${AGENTS_IMAGE_NAME} (banger vm run --agent NAME does), or install tmux in it`,
    });
  }

  async start(ref: string, req: AgentStartRequest, signal?: AbortSignal): Promise<AgentStartResult> {
    const def = this.definition(req.agent);
    const vm = this.d.vmInfo(ref);
    const cwd = req.cwd ?? vm.workspace ?? DEFAULT_AGENT_CWD;
    const cwdProblem = guestCwdProblem(cwd);
    if (cwdProblem) throw new BangerError('bad_request', `working directory ${JSON.stringify(cwd.slice(0, 200))} ${cwdProblem}`);
    const command = agentCommandLine(def.command, def.env);
    // The line goes to the guest as it is; the answer shows it without env values (API keys).
    const answer = (created: boolean): AgentStartResult => ({ agent: def.name, session: def.session, created, cwd, command: redactAssignments(command) });

    // The agents image restores saved sessions at boot (banger-tmux.service), and "ready" comes
    // before that unit has run: wait for it, so the restore and this start never race for the
    // session's name (a restored agent session is then reused). Images without it skip this.
    await this.run(ref, vm.name, ['sh', '-c', WAIT_FOR_TMUX_RESTORE], undefined, signal);
    const has = await this.run(ref, vm.name, tmuxHasSessionArgv(def.session), undefined, signal);
    if (has.exitCode === 127) throw AgentSessionService.missingTmux(vm.name);
    if (has.exitCode === 0) return answer(false);

    // tmux falls back to its own directory when -c names a missing one, and a missing program would
    // end the session at once, leaving nothing to attach to: both are checked first (the program
    // with the agent's environment, which may set PATH).
    const program = def.command[0] as string;
    const pre = await this.run(ref, vm.name, ['sh', '-c', '[ -d "$2" ] || exit 3; command -v "$1" >/dev/null || exit 4', 'sh', program, cwd], def.env, signal);
    if (pre.exitCode === 3)
      throw new BangerError('not_found', `${cwd} is not a directory in VM ${vm.name}`, {
        fix: 'give an existing guest directory (--cwd), or prepare the workspace first',
      });
    if (pre.exitCode !== 0)
      throw new BangerError('precondition_failed', `${program} (agent ${def.name}) is not installed in VM ${vm.name}`, {
        fix: `use an image that has it (${def.image}: banger vm run --agent ${def.name}), install it in the VM, or set [agents.${def.name}] command in config.toml`,
      });

    const created = await this.run(
      ref,
      vm.name,
      ['sh', '-c', this.d.leaveCgroupScript ?? OUTSIDE_PROC_CGROUP, 'sh', ...tmuxNewSessionArgv(def.session, cwd, command)],
      undefined,
      signal,
    );
    if (created.exitCode === 0) return answer(true);
    // Another start won the race: its session is the one to reuse.
    if (/duplicate session/.test(created.stderr)) return answer(false);
    if (created.exitCode === 127) throw AgentSessionService.missingTmux(vm.name);
    throw new BangerError(
      'guest_command_failed',
      `tmux could not start session ${def.session} in VM ${vm.name} (exit ${created.exitCode}): ${created.stderr.trim().slice(-800)}`,
    );
  }

  /** The guest's tmux sessions (none when no tmux server runs). */
  async list(ref: string, signal?: AbortSignal): Promise<AgentSession[]> {
    const vm = this.d.vmInfo(ref);
    const r = await this.run(ref, vm.name, tmuxListSessionsArgv(), undefined, signal);
    if (r.exitCode === 127) throw AgentSessionService.missingTmux(vm.name);
    // No server (nothing started yet, or every session ended) is an empty list, not an error.
    if (r.exitCode !== 0) {
      if (/no server running|error connecting to|no sessions/i.test(r.stderr)) return [];
      throw new BangerError('guest_command_failed', `tmux list-sessions failed in VM ${vm.name} (exit ${r.exitCode}): ${r.stderr.trim().slice(-400)}`);
    }
    return parseTmuxSessions(r.stdout);
  }
}
